"""Evaluation harness: GluonTS metrics, offline datasets, merged vs unmerged side by side."""

from .data import EvalDataset, list_datasets, load_dataset
from .report import write_report
from .run import evaluate, parse_merge, run

__all__ = ["EvalDataset", "list_datasets", "load_dataset", "evaluate", "parse_merge", "run", "write_report"]
