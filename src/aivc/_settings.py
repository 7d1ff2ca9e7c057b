"""One settings object for the whole package: seed, verbosity, workers and directories."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Settings", "settings"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _default_cache_dir() -> Path:
    env = os.environ.get("AIVC_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "aivc"


def _default_data_dir() -> Path:
    env = os.environ.get("AIVC_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return _default_cache_dir() / "data"


@dataclass
class Settings:
    """Package-wide settings.

    Read once from the environment (``AIVC_DATA_DIR``, ``AIVC_CACHE_DIR``,
    ``AIVC_SEED``, ``AIVC_N_JOBS``, ``AIVC_VERBOSITY``) and changed by
    assignment, e.g. ``aivc.settings.seed = 1``. Nothing global (numpy or torch
    random state, warning filters) is touched when the package is imported.

    Attributes
    ----------
    seed
        Default random seed for functions that take ``seed=None``.
    verbosity
        ``"debug"``, ``"info"``, ``"warning"`` or ``"error"``; applied to the
        ``aivc`` logger by :meth:`configure_logging`.
    n_jobs
        Number of worker threads/processes for parallel work.
    data_dir
        Where local copies of datasets live (one folder per dataset).
    cache_dir
        Where downloads and derived caches (gene embeddings) are written.
    progress
        Whether long work shows a progress bar.
    """

    seed: int = field(default_factory=lambda: int(os.environ.get("AIVC_SEED", "0")))
    verbosity: str = field(default_factory=lambda: os.environ.get("AIVC_VERBOSITY", "info"))
    n_jobs: int = field(
        default_factory=lambda: int(os.environ.get("AIVC_N_JOBS", str(os.cpu_count() or 1)))
    )
    data_dir: Path = field(default_factory=_default_data_dir)
    cache_dir: Path = field(default_factory=_default_cache_dir)
    progress: bool = True

    def __setattr__(self, name: str, value: object) -> None:
        if name == "verbosity" and value not in _LEVELS:
            msg = (
                f"The 'verbosity' setting must be one of {sorted(_LEVELS)}. Got {value!r} instead."
            )
            raise ValueError(msg)
        if name in {"data_dir", "cache_dir"}:
            value = Path(value).expanduser()  # type: ignore[arg-type]
        if name == "n_jobs" and (not isinstance(value, int) or value < 1):
            msg = f"The 'n_jobs' setting must be a positive integer. Got {value!r} instead."
            raise ValueError(msg)
        super().__setattr__(name, value)

    def configure_logging(self) -> None:
        """Attach a handler to the ``aivc`` logger at the configured verbosity.

        Called by the command line; library users keep full control of logging.
        """
        logger = logging.getLogger("aivc")
        logger.setLevel(_LEVELS[self.verbosity])
        if not any(getattr(h, "_aivc", False) for h in logger.handlers):
            try:
                from rich.logging import RichHandler

                handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False)
            except ImportError:  # pragma: no cover
                handler = logging.StreamHandler()
            handler._aivc = True  # type: ignore[attr-defined]
            logger.addHandler(handler)


settings = Settings()
