"""sdedit: guided image synthesis and editing with stochastic differential equations (Meng et al., ICLR 2022)."""

from .api import edit, outpaint
from .engine.editing import edit_tensors
from .engine.samplers import SAMPLERS
from .errors import InputError, ModelUnavailableError, SamplingError, SdeditError
from .families.base import Model
from .images import read_settings, save_png
from .loader import load_model
from .loading.presets import PRESETS
from .settings import RunSettings
from .version import __version__

__all__ = ["__version__", "edit", "outpaint", "edit_tensors", "load_model", "save_png", "read_settings", "Model", "RunSettings",
           "PRESETS", "SAMPLERS", "SdeditError", "InputError", "ModelUnavailableError", "SamplingError"]
