"""What every command line shares: quiet output, options checked as they are parsed, a checked ``--device``, and
the entry point that checks its optional dependencies (the ``eval`` extra) first (``mergeplug-eval``; the lab's
commands, ``mergeplug-train`` / ``mergeplug-sbt`` / ``mergeplug-bench``, use the rest of this module too).

Quiet: the command-line entry points call :func:`quiet_third_party` first. It turns off the weight-loading and
shard-writing bars of ``transformers``, the download bars of ``huggingface_hub`` and ``datasets`` and their
informational logging (errors still show); mergeplug's own progress bars (``--no-progress`` to hide) are untouched.
A library user's own process is left alone: only the entry points call this.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import os
import re
import sys
from collections.abc import Callable
from typing import TypeVar

__all__ = [
    "quiet_third_party", "check_device", "checked", "number", "EXTRAS", "missing", "require_extra", "eval_main",
]  # fmt: skip

T = TypeVar("T")


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


def checked(parse: Callable[[str], T], test: Callable[[T], bool], allowed: str) -> Callable[[str], T]:
    """An argparse ``type``: ``parse`` the text and keep the value only if ``test`` holds.

    Anything else is an :class:`argparse.ArgumentTypeError` saying what is ``allowed``, which argparse prints as
    one line naming the option (``error: argument --k: '0' is not an integer >= 1``), exit status 2, before any
    work.
    """

    def convert(text: str) -> T:
        try:
            value = parse(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}")
        return value

    return convert


def number(
    kind: type[int] | type[float],
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> Callable[[str], float]:
    """An argparse ``type`` for an int or float in a range (None: unbounded); NaN and infinities are refused."""
    bounds = [f"{'>=' if low_inclusive else '>'} {low}"] if low is not None else []
    bounds += [f"{'<=' if high_inclusive else '<'} {high}"] if high is not None else []
    allowed = " ".join(["an integer" if kind is int else "a number", " and ".join(bounds)]).strip()

    def ok(value: float) -> bool:
        return (
            math.isfinite(value)
            and (low is None or (value >= low if low_inclusive else value > low))
            and (high is None or (value <= high if high_inclusive else value < high))
        )

    return checked(kind, ok, allowed)


def _extras() -> dict[str, tuple[str, ...]]:
    """Extra -> the distributions it brings, read from the installed package's metadata (``pyproject.toml``'s
    ``optional-dependencies``); their import names are the distribution names."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        lines = requires("mergeplug") or []
    except PackageNotFoundError:  # run from a source tree that was never installed: nothing to check against
        return {}
    out: dict[str, list[str]] = {}
    for line in lines:
        found = re.search(r"""extra\s*==\s*["']([\w-]+)["']""", line)
        if found:
            name = re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0]
            out.setdefault(found.group(1), []).append(name)
    return {extra: tuple(names) for extra, names in out.items()}


#: the modules each optional extra of ``pyproject.toml`` brings (import names), from the installed metadata
EXTRAS: dict[str, tuple[str, ...]] = _extras()


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` (see :data:`EXTRAS`) that are not installed."""
    return [m for m in EXTRAS.get(extra, ()) if importlib.util.find_spec(m) is None]


def require_extra(extra: str, what: str) -> None:
    """ImportError in one line naming the extra to install, if any module of ``extra`` is missing."""
    gone = missing(extra)
    if gone:
        raise ImportError(
            f"{what} needs the '{extra}' extra (missing: {', '.join(gone)}): pip install 'mergeplug[{extra}]'"
        )


def _launch(extra: str, prog: str, module: str, argv: list[str] | None) -> int:
    try:
        require_extra(extra, prog)
    except ImportError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return importlib.import_module(module).main(argv)


def eval_main(argv: list[str] | None = None) -> int:
    """``mergeplug-eval``: the evaluation harness (needs the ``eval`` extra)."""
    return _launch("eval", "mergeplug-eval", "mergeplug.eval.cli", argv)
