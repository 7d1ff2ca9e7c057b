"""Background jobs with progress and cancellation, kept in memory."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aivc.interfaces.api._errors import public_message

__all__ = [
    "DEFAULT_MAX_QUEUED",
    "Job",
    "JobCancelledError",
    "JobConflictError",
    "JobManager",
    "JobQueueFullError",
    "JobReporter",
]

logger = logging.getLogger(__name__)

#: States a job moves through; the last three are final.
STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL = frozenset({"succeeded", "failed", "cancelled"})
#: Jobs that may wait for a worker by default.
DEFAULT_MAX_QUEUED = 10


class JobCancelledError(RuntimeError):
    """Raised inside a job's function when its cancellation was requested."""


class JobConflictError(RuntimeError):
    """The job cannot be cancelled because it has already finished."""


class JobQueueFullError(RuntimeError):
    """As many jobs as allowed are already waiting for a worker (HTTP 429)."""


@dataclass
class Job:
    """One background job.

    Attributes
    ----------
    id
        Job identifier.
    kind
        What the job does (``"fit"``...).
    state
        One of ``queued``, ``running``, ``succeeded``, ``failed``, ``cancelled``.
    progress
        Fraction done, 0 to 1.
    message
        The current step, in words.
    result
        What the job produced (JSON-serialisable), once it succeeded.
    error
        Why it failed: the message of an error in the request, or a generic
        message with an error id when the cause is in the server's log.
    error_id
        The id the failure was logged under, when it was logged.
    """

    id: str
    kind: str
    params: dict[str, Any]
    state: str = "queued"
    progress: float = 0.0
    message: str = "queued"
    result: dict[str, Any] | None = None
    error: str | None = None
    error_id: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "params": self.params,
            "state": self.state,
            "progress": round(self.progress, 4),
            "message": self.message,
            "result": self.result,
            "error": self.error,
            "error_id": self.error_id,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
        }


class JobReporter:
    """Handed to a job's function: report progress, check for cancellation."""

    def __init__(self, job: Job) -> None:
        self._job = job

    def update(self, progress: float, message: str) -> None:
        """Set the fraction done and the current step; raises if the job was cancelled."""
        self.check()
        self._job.progress = float(min(max(progress, 0.0), 1.0))
        self._job.message = message

    def check(self) -> None:
        """Raise :class:`JobCancelledError` when cancellation was requested."""
        if self._job._cancel.is_set():
            msg = "cancelled on request"
            raise JobCancelledError(msg)


class JobManager:
    """Run functions in worker threads and keep their state in memory.

    Parameters
    ----------
    max_workers
        Jobs that may run at the same time; further jobs wait in a queue.
    max_queued
        Jobs that may wait in that queue; :meth:`submit` raises
        :class:`JobQueueFullError` beyond it.
    """

    def __init__(self, *, max_workers: int = 1, max_queued: int = DEFAULT_MAX_QUEUED) -> None:
        if max_workers < 1 or max_queued < 0:
            msg = (
                "A job manager needs max_workers >= 1 and max_queued >= 0. "
                f"Got max_workers={max_workers}, max_queued={max_queued} instead."
            )
            raise ValueError(msg)
        self.max_workers = max_workers
        self.max_queued = max_queued
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="aivc-job")
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def submit(
        self,
        kind: str,
        params: dict[str, Any],
        fn: Callable[[JobReporter], dict[str, Any]],
        *,
        cleanup: Callable[[], None] | None = None,
    ) -> Job:
        """Queue ``fn(reporter)``; its returned dict becomes the job's result.

        ``cleanup`` runs once the job is final, whether it ran, failed or was
        cancelled before it started. Raises :class:`JobQueueFullError` (and
        queues nothing) when ``max_queued`` jobs already wait for a worker.
        """
        job = Job(id=uuid.uuid4().hex[:12], kind=kind, params=params)
        with self._lock:
            running = sum(j.state == "running" for j in self._jobs.values())
            waiting = sum(
                j.state == "queued" and not j._cancel.is_set() for j in self._jobs.values()
            )
            if running + waiting >= self.max_workers + self.max_queued:
                msg = (
                    f"{running} jobs are running and {waiting} waiting for a worker; this server "
                    f"queues at most {self.max_queued}. Wait for one to finish (GET /api/jobs) "
                    "or cancel one, then retry."
                )
                raise JobQueueFullError(msg)
            self._jobs[job.id] = job
        self._pool.submit(self._run_and_clean, job, fn, cleanup)
        return job

    def _run_and_clean(
        self,
        job: Job,
        fn: Callable[[JobReporter], dict[str, Any]],
        cleanup: Callable[[], None] | None,
    ) -> None:
        try:
            self._run(job, fn)
        finally:
            if cleanup is not None:
                cleanup()

    def _run(self, job: Job, fn: Callable[[JobReporter], dict[str, Any]]) -> None:
        if job._cancel.is_set():
            job.state, job.message, job.finished = (
                "cancelled",
                "cancelled before it started",
                time.time(),
            )
            return
        job.state, job.started, job.message = "running", time.time(), "started"
        try:
            result = fn(JobReporter(job))
        except JobCancelledError:
            job.state, job.message = "cancelled", "cancelled on request"
        except Exception as e:  # a failed job reports why; the server keeps running
            job.error, job.error_id = public_message(e, logger=logger, what=f"job {job.id}")
            if job.error_id is None:
                logger.warning("job %s failed: %s", job.id, job.error)
            job.state, job.message = "failed", "failed"
        else:
            job.result, job.progress, job.state, job.message = result, 1.0, "succeeded", "done"
        job.finished = time.time()

    def get(self, job_id: str) -> Job:
        """The job ``job_id``; ``KeyError`` when unknown."""
        with self._lock:
            if job_id not in self._jobs:
                msg = f"Unknown job {job_id!r}; list jobs with GET /api/jobs."
                raise KeyError(msg)
            return self._jobs[job_id]

    def list(self) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)

    def cancel(self, job_id: str) -> Job:
        """Request cancellation; a queued job never starts, a running one stops at its next step."""
        job = self.get(job_id)
        if job.state in FINAL:
            msg = f"Job {job_id!r} has already finished ({job.state}); nothing to cancel."
            raise JobConflictError(msg)
        job._cancel.set()
        if job.state == "queued":
            job.message = "cancellation requested"
        return job

    def wait(self, job_id: str, *, timeout: float = 60.0) -> Job:
        """Block until the job is final (for scripts and tests)."""
        end = time.monotonic() + timeout
        job = self.get(job_id)
        while job.state not in FINAL:
            if time.monotonic() > end:
                msg = f"Job {job_id!r} still {job.state} after {timeout} s."
                raise TimeoutError(msg)
            time.sleep(0.02)
        return job

    def shutdown(self) -> None:
        for job in self.list():
            if job.state not in FINAL:
                job._cancel.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
