"""minidalle: a small two-stage text-to-image model.

Stage 1 is a discrete VAE *image* tokenizer (`minidalle.dvae`); stage 2 is a
GPT-style prior over BPE *text* tokens and image codes.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # the pipeline pulls in torch and transformers: import it only when asked for
    if name == "MiniDallePipeline":
        from .pipeline import MiniDallePipeline

        return MiniDallePipeline
    raise AttributeError(f"module 'minidalle' has no attribute {name!r}")
