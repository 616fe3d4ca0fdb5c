"""Progress bars: tqdm's, a widget in a notebook that has ipywidgets and text everywhere else.

tqdm.auto picks the bar; in a notebook without ipywidgets it falls back to text bars, which work,
after a TqdmWarning that names the machine's site-packages path and a package the user never asked
for. The fallback is kept and that warning, which no one needs to act on, is not shown.
"""

from __future__ import annotations

import warnings

from tqdm import TqdmWarning

with warnings.catch_warnings():
    warnings.simplefilter("ignore", TqdmWarning)
    from tqdm.auto import tqdm

__all__ = ["tqdm"]
