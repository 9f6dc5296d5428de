"""Stage 2, the prior: one causal transformer over text tokens ++ image codes, and sampling from it."""

from .model import PRESETS, Prior, PriorConfig, PriorOutput
from .sampling import filter_logits, sample_codes

__all__ = ["PRESETS", "Prior", "PriorConfig", "PriorOutput", "filter_logits", "sample_codes"]
