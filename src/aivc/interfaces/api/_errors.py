"""Error messages fit to send to a client: no server paths, no Python internals.

What a client sees is a short message and, where the cause is worth a look,
an error id; the server log holds the details under the same id. Errors a
user can act on (a ``ValueError`` or ``KeyError`` saying what is wrong with a
request) keep their message, with absolute file paths cut to their last part;
anything else (a ``TypeError`` inside a library, a failed disk write) becomes a
generic message.
"""

from __future__ import annotations

import logging
import re
import uuid

__all__ = [
    "ConflictError",
    "NotFoundError",
    "PayloadTooLargeError",
    "QuotaExceededError",
    "UnavailableError",
    "WorkspaceValidationError",
    "new_error_id",
    "public_message",
    "scrub_paths",
    "with_error_id",
]

#: An absolute POSIX path of at least two parts; the API's own routes are left alone.
_PATH = re.compile(r"(?<![\w.:/~-])/(?!api/|static/)(?:[^\s'\"/<>(),;:=|]+/)+[^\s'\"/<>(),;:=|]*")
#: Exceptions whose message is written for the user of the request.
_USER_ERRORS = (ValueError, LookupError)


class NotFoundError(KeyError):
    """An unknown dataset, model, gene, context, job or upload (HTTP 404)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class WorkspaceValidationError(ValueError):
    """A request that is well-formed JSON but cannot be carried out as asked (HTTP 422)."""


class ConflictError(RuntimeError):
    """The request clashes with the current state, e.g. a name in use (HTTP 409)."""


class PayloadTooLargeError(ValueError):
    """An upload larger than the workspace accepts, as sent or once read (HTTP 413)."""


class QuotaExceededError(RuntimeError):
    """The workspace would grow past its disk quota (HTTP 507)."""


class UnavailableError(RuntimeError):
    """A service the request needs (the ledger's database) cannot be reached (HTTP 503)."""


def new_error_id() -> str:
    """A short random id that ties a client's error to the server log."""
    return uuid.uuid4().hex[:12]


def scrub_paths(message: str) -> str:
    """``message`` with every absolute file path cut to its last part.

    >>> scrub_paths("No such file: '/srv/aivc/ws/uploads/x.h5ad'; see GET /api/uploads/list.")
    "No such file: 'x.h5ad'; see GET /api/uploads/list."
    """
    return _PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1] or "<path>", message)


def _is_user_error(exc: BaseException) -> bool:
    """A ``ValueError``/``LookupError`` that was not raised because of some other kind of error."""
    while exc is not None:
        if not isinstance(exc, _USER_ERRORS):
            return False
        exc = exc.__cause__  # type: ignore[assignment]
    return True


def _text(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        return str(exc.args[0])  # KeyError's str() quotes its argument
    return str(exc)


def with_error_id(exc: BaseException, error_id: str) -> BaseException:
    """Attach ``error_id`` to ``exc`` (the API adds it to the error body); returns ``exc``."""
    exc.error_id = error_id  # type: ignore[attr-defined]
    return exc


def public_message(
    exc: BaseException, *, logger: logging.Logger, what: str
) -> tuple[str, str | None]:
    """What to tell a client about ``exc``, and the error id it was logged under.

    Parameters
    ----------
    exc
        The exception.
    logger
        Where the details go (with the traceback when the error is not a user error).
    what
        What failed, for the log line (e.g. ``"job 1a2b3c"``).

    Returns
    -------
    The message (scrubbed of paths) and the error id; the id is ``None`` for a
    user error, whose message says all there is to say.
    """
    if _is_user_error(exc):
        return scrub_paths(_text(exc)), None
    error_id = new_error_id()
    logger.error("%s failed (error id %s)", what, error_id, exc_info=exc)
    return f"Internal error; the server log has the details (error id {error_id}).", error_id
