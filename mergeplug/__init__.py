"""mergeplug: local token merging (and more) for Chronos and Hugging Face Transformers."""

from .config import MergeConfig, ratio_for_reduction, schedule_for_reduction
from .core import apply, remove, settings, token_counts
from .cost import CostReport, profile
from .hub import from_pretrained, push_to_hub, save_pretrained
from .patches.chronos_sampling import fast_sampling
from .patches.generic import register_patch
from .patches.t5 import decoder_token_counts, merge_decoder
from .precheck import precheck

__version__ = "0.1.0"

__all__ = [
    "MergeConfig",
    "apply",
    "remove",
    "settings",
    "token_counts",
    "profile",
    "save_pretrained",
    "from_pretrained",
    "push_to_hub",
    "precheck",
    "fast_sampling",
    "register_patch",
    "merge_decoder",
    "decoder_token_counts",
    "CostReport",
    "ratio_for_reduction",
    "schedule_for_reduction",
    "__version__",
]
