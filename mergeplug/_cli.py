"""What every command line shares: quiet output and a checked ``--device``.

Quiet: the command-line entry points call :func:`quiet_third_party` first. It turns off the weight-loading and
shard-writing bars of ``transformers``, the download bars of ``huggingface_hub`` and ``datasets`` and their
informational logging (errors still show); mergeplug's own progress bars (``--no-progress`` to hide) are untouched.
A library user's own process is left alone: only the entry points call this.
"""

from __future__ import annotations

import os

__all__ = ["quiet_third_party", "check_device"]


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


def check_device(device: str, option: str = "--device") -> str:
    """``device`` if this torch can run on it, else a ValueError in one line that says why and what to use."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{option} {device!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{option} {device}: this torch build has no usable CUDA (torch.cuda.is_available() is False); "
                f"use {option} cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{option} {device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{option} {device}: MPS is not available in this torch build; use {option} cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{option} {device}: mergeplug runs on cpu, cuda or mps")
    return device
