"""mergeplug: local token merging (and more) for Chronos and Hugging Face Transformers."""

from . import models
from .binary import (
    SparseBinaryLinear,
    binarization,
    binarize,
    binary_parameters,
    load_packed,
    packed_size_report,
    save_packed,
    trainable_binary,
    unbinarize,
)
from .config import MergeConfig, ratio_for_reduction, schedule_for_reduction
from .core import apply, long_context_default, merge_decoder, remove, settings, token_counts
from .cost import CostReport, profile
from .hub import from_pretrained, push_to_hub, save_pretrained
from .patches.generic import register_patch
from .patches.t5 import decoder_token_counts
from .precheck import precheck
from .sampling import fast_sampling
from .tune import TuneResult, tune
from .version import __version__

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
    "tune",
    "TuneResult",
    "fast_sampling",
    "register_patch",
    "merge_decoder",
    "decoder_token_counts",
    "CostReport",
    "ratio_for_reduction",
    "schedule_for_reduction",
    "long_context_default",
    "binarize",
    "unbinarize",
    "binarization",
    "binary_parameters",
    "trainable_binary",
    "save_packed",
    "load_packed",
    "packed_size_report",
    "SparseBinaryLinear",
    "models",
    "__version__",
]
