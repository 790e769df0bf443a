"""The result files of a ``mergeplug-eval run`` directory: ``results.jsonl`` (a row per dataset and setting, written
as it arrives) and ``run.json`` (the setup a resumed run must share), on :class:`mergeplug.store.RowFile`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..store import RowFile, check_setup

logger = logging.getLogger("mergeplug")

__all__ = ["SETUP_KEYS", "ResultStore"]

SETUP_KEYS = (
    "model", "quantiles", "seed", "prediction_length", "windows", "freq", "max_series", "batch_size", "reps",
    "timing_windows", "cost_windows", "device", "dtype", "context",
)  # fmt: skip


class ResultStore:
    """``results.jsonl`` + ``run.json`` in a directory, one writing process at a time (a second one is refused);
    rows are appended as they arrive, each in one write (see :class:`mergeplug.store.RowFile`).

    ``run.json`` records the options in :data:`SETUP_KEYS`; resuming with other values is refused, naming them.
    ``write=False``: the other processes of a multi-process run (rows kept in memory only, no lock).
    """

    def __init__(self, directory: str | Path, meta: dict[str, Any], write: bool = True):
        self.dir = Path(directory)
        self.meta_path = self.dir / "run.json"
        self.file = RowFile(self.dir, "results.jsonl", what="a mergeplug-eval run", write=write)
        self.meta: dict[str, Any] | None = meta if write else None  # written with the first row
        try:
            if self.meta_path.exists():
                old = json.loads(self.meta_path.read_text())
                unknown = [k for k in SETUP_KEYS if k not in old]
                if unknown:  # written before these were recorded: what is recorded is checked
                    logger.warning(
                        "%s does not record %s; resuming without checking them", self.meta_path, ", ".join(unknown)
                    )
                check_setup(old, meta, [k for k in SETUP_KEYS if k in old], self.dir)
                merges = list(dict.fromkeys(old.get("merges", []) + list(meta.get("merges", []))))
                self.meta = {**meta, "merges": merges} if write else None
        except BaseException:
            self.close()
            raise

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.file.rows

    def get(self, dataset: str, setting: str) -> dict[str, Any] | None:
        return next((r for r in self.rows if r.get("dataset") == dataset and r.get("setting") == setting), None)

    def done(self, dataset: str, setting: str) -> bool:
        return self.get(dataset, setting) is not None

    def add(self, row: dict[str, Any]) -> None:
        if self.meta is not None:  # the setup goes with the first row (a run refused before any row leaves none)
            tmp = self.meta_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(self.meta, indent=1))
            tmp.replace(self.meta_path)
            self.meta = None
        self.file.add(row)

    def close(self) -> None:
        self.file.close()
