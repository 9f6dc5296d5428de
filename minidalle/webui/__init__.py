"""The web page (`minidalle serve`): Generate, Score and Complete tabs over pipelines loaded once at start-up.

Imports the pipeline and the layers below it only (tests/test_architecture.py). Gradio comes with the `ui`
extra and is imported only when the page is built, so the handlers and their tests need none.
"""

from .handlers import Handlers, Limits
from .models import PAGE_TEXT, LoadedModel, load_models, resolve_models
from .sampling import SamplingSettings, WarmSampler, warm_up_all
from .server import check_address, import_gradio, launch

__all__ = [
    "PAGE_TEXT",
    "Handlers",
    "Limits",
    "LoadedModel",
    "SamplingSettings",
    "WarmSampler",
    "check_address",
    "import_gradio",
    "launch",
    "load_models",
    "resolve_models",
    "warm_up_all",
]
