"""Result files that survive kills, edits and a second process: JSON-lines rows with their setup beside them.

Long evaluations (``mergeplug.tune``, ``mergeplug-eval run``) append each finished row to a ``*.jsonl`` file at
once and resume from it. :class:`RowFile` makes that safe:

* one writer per directory: an exclusive ``flock`` on ``<dir>/.lock`` held while the writer lives; a second
  writer is refused with :class:`DirectoryInUse` (the lock dies with its process, also on SIGKILL);
* each row is written with a single ``write`` on an ``O_APPEND`` descriptor and flushed to disk, so a reader
  never sees half of it unless the process died mid-write;
* a row cut short by such a death (the file's last line, unparsable) is dropped, said so on the ``mergeplug``
  logger, and recomputed by the caller;
* :func:`check_setup` refuses to resume a directory whose recorded setup differs, naming the differing keys.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["DirectoryInUse", "RowFile", "TuneFiles", "read_rows", "check_setup"]

logger = logging.getLogger("mergeplug")


class DirectoryInUse(OSError):
    """Another process is writing results into the same directory."""


def read_rows(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """The rows of a JSON-lines file and how many lines were unreadable (rows cut short by a kill).

    Blank lines are skipped silently; unreadable lines are skipped and counted (and logged)."""
    path = Path(path)
    if not path.exists():
        return [], 0
    rows, torn = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            torn += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            torn += 1
    if torn:
        logger.warning("%s: skipped %d incomplete row(s) (a run killed while writing); they are recomputed", path, torn)
    return rows, torn


def check_setup(old: dict[str, Any], new: dict[str, Any], keys: Iterable[str], where: str | Path) -> None:
    """Refuse to resume ``where`` when any of ``keys`` differs between the recorded and the new setup.

    Values are compared as they read back from JSON (tuples as lists)."""
    new = json.loads(json.dumps(new))
    differ = [k for k in keys if old.get(k) != new.get(k)]
    if differ:
        shown = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in differ)
        raise ValueError(
            f"{where} holds results computed with other settings ({shown}); rerun with the same settings to resume, "
            "or use another output directory"
        )


class RowFile:
    """An append-only JSON-lines file of rows in ``directory``, owned by this process while it is open.

    ``RowFile(dir, "results.jsonl", what="mergeplug-eval run")`` takes the directory's lock (or raises
    :class:`DirectoryInUse`), reads the rows already there (dropping a trailing row cut short by a kill, so that
    the file ends with a complete line again) and appends new ones with :meth:`add`. ``write=False`` opens it
    read-only (no lock, no writes: the other processes of a multi-process run). Use it as a context manager or
    call :meth:`close` to release the lock.
    """

    def __init__(self, directory: str | Path, name: str, *, what: str = "run", write: bool = True) -> None:
        self.dir = Path(directory)
        self.path = self.dir / name
        self.write = write
        self._lock: int | None = None
        if write:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock = _lock(self.dir, what)
            self._trim_torn_tail()
        self.rows, self.torn = read_rows(self.path)

    def _trim_torn_tail(self) -> None:
        """Cut an incomplete last line (no newline at the end: the write was interrupted)."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.path.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
            logger.warning(
                "%s: dropped an incomplete last row (a run killed while writing); it is recomputed", self.path
            )

    def add(self, row: dict[str, Any]) -> None:
        """Keep ``row`` and append it to the file as one line, in one write, flushed to disk."""
        self.rows.append(row)
        if not self.write:
            return
        data = (json.dumps(row) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, data)
            if written != len(data):  # pragma: no cover - a full disk
                raise OSError(f"{self.path}: only {written} of {len(data)} bytes written (disk full?)")
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Release the directory's lock."""
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the flock
            self._lock = None

    def __enter__(self) -> RowFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class TuneFiles:
    """``tune.jsonl`` rows (appended as they finish) and ``tune.json`` (the setup, then the result) in ``out``;
    one process at a time (see :class:`mergeplug.store.RowFile`)."""

    def __init__(self, out: str | Path | None, meta: dict[str, Any]) -> None:
        self.dir = None if out is None else Path(out)
        self.rows: dict[str, dict[str, Any]] = {}
        self.file: RowFile | None = None
        if self.dir is None:
            return
        self.file = RowFile(self.dir, "tune.jsonl", what="a mergeplug tune run")
        try:
            meta_path = self.dir / "tune.json"
            if meta_path.exists():
                old = json.loads(meta_path.read_text()).get("setup", {})
                check_setup(old, meta, sorted(set(old) | set(meta)), self.dir)
            meta_path.write_text(json.dumps({"setup": meta}, indent=1))
        except BaseException:
            self.close()
            raise
        self.rows = {row["label"]: row for row in self.file.rows if "label" in row}

    def get(self, label: str) -> dict[str, Any] | None:
        return self.rows.get(label)

    def add(self, row: dict[str, Any]) -> None:
        self.rows[row["label"]] = row
        if self.file is not None:
            self.file.add(row)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def finish(self, result: Any) -> None:
        """Write ``result`` (a :class:`mergeplug.tune.TuneResult`) into ``tune.json`` and ``tune.md``."""
        if self.dir is None:
            return
        meta_path = self.dir / "tune.json"
        meta = json.loads(meta_path.read_text())
        meta["result"] = {"best": result.best, "best_label": result.best_label, "rows": result.rows,
                          "tolerance": result.tolerance, "windows": result.windows, "margin": result.margin,
                          "reason": result.reason}  # fmt: skip
        meta_path.write_text(json.dumps(meta, indent=1))
        (self.dir / "tune.md").write_text(result.to_markdown() + "\n")


def _lock(directory: Path, what: str) -> int | None:
    """An exclusive lock on ``directory/.lock`` (its descriptor), or :class:`DirectoryInUse` naming the holder."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        return None
    path = directory / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise DirectoryInUse(
            f"{directory} is in use by {holder}: wait for it to finish (then rerun to resume) or use another "
            "output directory"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{what} (pid {os.getpid()})\n".encode(), 0)
    return fd


def load_torch_state(path: str | Path) -> Any:
    """A training state written with ``torch.save`` (optimizer, scheduler, counters, tensors), loaded with
    ``weights_only=True``: a file holding other objects (which unpickling would run) is refused, naming it."""
    import pickle

    import torch

    try:
        return torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ValueError(
            f"{path}: not a training state mergeplug wrote (it holds objects other than tensors, numbers and "
            f"containers, or it is cut short: {str(exc).splitlines()[0][:160]}); it is not loaded. Delete the run's "
            "checkpoint folder to start the run over"
        ) from None
