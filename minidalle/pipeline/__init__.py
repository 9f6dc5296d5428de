"""Generation: `MiniDallePipeline` (prompts -> images, likelihood, caption ranking) and the pipeline folder.

Imports the models, the text tokenizer and the data transforms only: neither
accelerate nor `minidalle.training`.
"""

from .io import check_compatible, export_pipeline, load_pipeline_parts, save_pipeline
from .pipeline import DEFAULT_MODEL, MiniDallePipeline, PipelineOutput, check_prompts

__all__ = [
    "DEFAULT_MODEL",
    "MiniDallePipeline",
    "PipelineOutput",
    "check_compatible",
    "check_prompts",
    "export_pipeline",
    "load_pipeline_parts",
    "save_pipeline",
]
