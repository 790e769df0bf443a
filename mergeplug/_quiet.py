"""Quiet command lines: third-party progress bars and notices the user did not ask for are switched off.

The command-line entry points call :func:`quiet_third_party` first. It turns off the weight-loading and
shard-writing bars of ``transformers``, the download bars of ``huggingface_hub`` and ``datasets`` and their
informational logging (errors still show); mergeplug's own progress bars (``--no-progress`` to hide) are untouched.
A library user's own process is left alone: only the entry points call this.
"""

from __future__ import annotations

import os

__all__ = ["quiet_third_party"]


def quiet_third_party() -> None:
    """Switch off third-party progress bars and info/warning logging for the rest of this process."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when these libraries are first imported
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import transformers.utils.logging as hf_logging
    from huggingface_hub.utils import disable_progress_bars

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    disable_progress_bars()
