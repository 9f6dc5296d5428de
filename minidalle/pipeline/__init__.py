"""Generation: `MiniDallePipeline` (prompts -> images, likelihood, caption ranking) and the pipeline folder.

Imports the models, the text tokenizer and the data transforms only: neither
accelerate nor `minidalle.training`.
"""

from .io import (
    check_compatible,
    export_pipeline,
    load_pipeline_parts,
    read_attribution,
    read_sampling_defaults,
    save_pipeline,
)
from .pipeline import (
    BUNDLED_MODELS,
    DEFAULT_MODEL,
    EMOJI_MODEL,
    SAMPLING_DEFAULTS,
    MiniDallePipeline,
    PipelineOutput,
    check_prompts,
    resolve_model,
)

__all__ = [
    "BUNDLED_MODELS",
    "DEFAULT_MODEL",
    "EMOJI_MODEL",
    "SAMPLING_DEFAULTS",
    "MiniDallePipeline",
    "PipelineOutput",
    "check_compatible",
    "check_prompts",
    "export_pipeline",
    "load_pipeline_parts",
    "read_attribution",
    "read_sampling_defaults",
    "resolve_model",
    "save_pipeline",
]
