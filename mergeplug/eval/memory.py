"""Peak resident memory of a call (the harness' ``peak_mem_mb`` / ``process_peak_rss_mb`` columns)."""

from __future__ import annotations

import resource

__all__ = ["PeakMemory"]


def _rss_mb() -> float:
    """Current resident set size (Linux /proc; elsewhere the process peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * (resource.getpagesize() / 2**20)
    except OSError:  # pragma: no cover - non-Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _release_free_memory() -> None:
    """Hand memory freed earlier back to the OS (glibc ``malloc_trim``; elsewhere nothing).

    Without it the allocator keeps the blocks an earlier, larger call freed, a later call reuses them without
    raising the resident size, and its "peak above entry" reads as ~0.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


class PeakMemory:
    """Peak resident memory above the level at entry, sampled every ``interval`` seconds in a thread.

    ``with PeakMemory() as m: ...`` then ``m.extra_mb`` (peak minus entry level, MB) and ``m.peak_mb``. Entry
    first returns freed heap memory to the OS, so that memory an earlier call freed does not hide this one's.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak_mb = self.start_mb = 0.0

    def __enter__(self) -> PeakMemory:
        import threading

        _release_free_memory()
        self.start_mb = self.peak_mb = _rss_mb()
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self.peak_mb = max(self.peak_mb, _rss_mb())
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _rss_mb())

    @property
    def extra_mb(self) -> float:
        return self.peak_mb - self.start_mb
