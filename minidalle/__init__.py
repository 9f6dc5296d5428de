"""minidalle: a small two-stage text-to-image model.

Stage 1 is a discrete VAE *image* tokenizer (`minidalle.image_tokenizers`); stage 2
is a GPT-style prior over BPE *text* tokens and image codes (`minidalle.prior`);
`MiniDallePipeline` (`minidalle.pipeline`) turns prompts into images.
"""

__version__ = "0.1.0"

# public name -> the module that defines it; imported on first use (torch and transformers are slow to import)
_EXPORTS = {
    "MiniDallePipeline": "minidalle.pipeline",
    "PipelineOutput": "minidalle.pipeline",
    "DiscreteVAE": "minidalle.image_tokenizers",
    "DVAEConfig": "minidalle.image_tokenizers",
    "ImageTokenizer": "minidalle.image_tokenizers",
    "load_image_tokenizer": "minidalle.image_tokenizers",
    "Prior": "minidalle.prior",
    "PriorConfig": "minidalle.prior",
    "UserError": "minidalle.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'minidalle' has no attribute {name!r}")
