"""sdedit: guided image synthesis and editing with stochastic differential equations (Meng et al., ICLR 2022)."""

__version__ = "0.1.0"

from .api import edit  # noqa: E402
from .checkpoints import load_model  # noqa: E402
from .editing import sdedit  # noqa: E402
from .errors import InputError, ModelUnavailableError, SamplingError, SdeditError  # noqa: E402
from .images import read_settings, save_png  # noqa: E402
from .model import SDEModel  # noqa: E402
from .presets import PRESETS  # noqa: E402
from .samplers import SAMPLERS  # noqa: E402

__all__ = ["__version__", "edit", "load_model", "sdedit", "save_png", "read_settings", "SDEModel", "PRESETS",
           "SAMPLERS", "SdeditError", "InputError", "ModelUnavailableError", "SamplingError"]
