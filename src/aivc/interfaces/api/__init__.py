"""REST API over the Python API: datasets, models, predictions, uploads and background jobs.

>>> from aivc.interfaces.api import Workspace, create_app
>>> app = create_app(Workspace("aivc-workspace"))  # serve with uvicorn, or `aivc serve`
"""

from __future__ import annotations

from aivc.interfaces.api._app import create_app
from aivc.interfaces.api._errors import (
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    QuotaExceededError,
    UnavailableError,
    WorkspaceValidationError,
)
from aivc.interfaces.api._jobs import Job, JobManager, JobQueueFullError
from aivc.interfaces.api._workspace import Workspace

__all__ = [
    "ConflictError",
    "Job",
    "JobManager",
    "JobQueueFullError",
    "NotFoundError",
    "PayloadTooLargeError",
    "QuotaExceededError",
    "UnavailableError",
    "Workspace",
    "WorkspaceValidationError",
    "create_app",
]
