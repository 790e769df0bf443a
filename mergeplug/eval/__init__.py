"""Evaluation harness: GluonTS metrics, offline datasets, merged vs unmerged side by side.

Needs the ``eval`` extra (``pip install 'mergeplug[eval]'``); the library never imports this package.
"""

from .._cli import require_extra

require_extra("eval", "mergeplug.eval")

# ruff: noqa: E402

from .data import EvalDataset, list_datasets, load_dataset
from .report import write_report
from .run import evaluate, parse_merge, run

__all__ = ["EvalDataset", "list_datasets", "load_dataset", "evaluate", "parse_merge", "run", "write_report"]
