"""Wall time and peak memory of a block of work."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from types import TracebackType

__all__ = ["ResourceMeter", "peak_rss_mb"]


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (``VmHWM``; ``ru_maxrss`` elsewhere), in MB."""
    from pathlib import Path

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    import psutil

    proc = psutil.Process()
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


@dataclass
class ResourceMeter:
    """Measures wall time and peak resident memory (this process and its children).

    ``peak_mb`` is the highest RSS seen while the block ran (sampled every
    ``interval`` seconds); ``peak_increase_mb`` is that peak minus the RSS
    when the block started, i.e. what the block itself needed on top of what
    was already loaded.
    """

    interval: float = 0.05
    wall_seconds: float = 0.0
    start_mb: float = 0.0
    peak_mb: float = 0.0

    def __enter__(self) -> ResourceMeter:
        self.start_mb = self.peak_mb = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, _rss_mb())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.wall_seconds = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _rss_mb())

    @property
    def peak_increase_mb(self) -> float:
        return max(0.0, self.peak_mb - self.start_mb)
