"""The one progress-bar helper used by all long-running work."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from aivc._settings import settings

T = TypeVar("T")

__all__ = ["progress"]


def progress(
    iterable: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it"
) -> Iterator[T]:
    """Wrap ``iterable`` in a progress bar when :attr:`aivc.settings.progress` is on.

    The bar goes to stderr and disappears when stderr is not a terminal and
    progress is disabled, so logs stay clean in batch jobs.
    """
    if not settings.progress:
        yield from iterable
        return
    from tqdm.auto import tqdm

    yield from tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True)
