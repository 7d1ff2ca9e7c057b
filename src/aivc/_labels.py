"""Checks of names against the known ones, with suggestions for near misses.

Every "unknown name" error in aivc (genes, datasets, tasks, cell types, obs
columns ...) is worded here, with one notion of a close name: similarity of
the case-folded names, so that a case mistake (``"stat1"`` for ``"STAT1"``)
is always the first suggestion.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable

__all__ = ["SUGGESTION_CUTOFF", "check_known", "did_you_mean", "suggest"]

#: Least similarity (:class:`difflib.SequenceMatcher` ratio of the case-folded names,
#: from 0 to 1) for a known name to be suggested; difflib's own default.
SUGGESTION_CUTOFF = 0.6

#: Known names listed in full in a message up to this many; beyond, a few examples.
_LIST_ALL = 10


def suggest(name: str, known: Iterable[str], *, n: int = 3) -> list[str]:
    """Known names close to ``name``, best first, ignoring case.

    Names that differ from ``name`` only in case come first, then those whose
    case-folded similarity to it is at least :data:`SUGGESTION_CUTOFF`, most
    similar first (ties in alphabetical order).

    Parameters
    ----------
    name
        The name that was not found.
    known
        The valid names.
    n
        Most suggestions returned.

    Returns
    -------
    Up to ``n`` known names (an empty list when none is close).
    """
    if n < 1:
        return []
    by_folded: dict[str, list[str]] = {}
    for k in dict.fromkeys(str(k) for k in known):
        by_folded.setdefault(k.casefold(), []).append(k)
    name = str(name)
    folded = name.casefold()
    out = [k for k in by_folded.get(folded, []) if k != name]
    # as difflib.get_close_matches, with ties in alphabetical order
    matcher = difflib.SequenceMatcher()
    matcher.set_seq2(folded)
    scored = []
    for f in by_folded:
        if f == folded:
            continue
        matcher.set_seq1(f)
        if (
            matcher.real_quick_ratio() >= SUGGESTION_CUTOFF
            and matcher.quick_ratio() >= SUGGESTION_CUTOFF
            and (ratio := matcher.ratio()) >= SUGGESTION_CUTOFF
        ):
            scored.append((-ratio, f))
    for _, f in sorted(scored):
        out.extend(by_folded[f])
    return out[:n]


def _either(names: list[str]) -> str:
    quoted = [repr(s) for s in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def did_you_mean(name: str, known: Iterable[str], *, n: int = 3) -> str:
    """``"Did you mean 'A' or 'B'?"`` with the :func:`suggest` names, or ``""`` when none is close."""
    close = suggest(name, known, n=n)
    return f"Did you mean {_either(close)}?" if close else ""


def check_known(
    names: Iterable[object],
    known: Collection[str],
    *,
    what: str = "gene",
    known_as: str | None = None,
    where: str = "",
    advice: str = "",
    error: type[Exception] = ValueError,
) -> None:
    """Raise ``error`` when a name is not among the known ones, saying which and suggesting close ones.

    The message reads ``Unknown <what> 'x'<where>; expected one of the <n>
    <known_as> (...). Did you mean 'X'? <advice>``.

    Parameters
    ----------
    names
        The names to check (each once; order kept in the message).
    known
        The valid names.
    what
        What a name is, singular (``"gene"``, ``"dataset"``, ``"cell type"``).
    known_as
        How to call the known names, plural (default ``what`` + ``"s"``), e.g.
        ``"genes the model was fitted with"``.
    where
        Where the names came from, appended to the first sentence (e.g. ``" in 'A+B'"``).
    advice
        The next step, appended as the last sentence.
    error
        Exception class to raise (each caller keeps its own, e.g. a ``KeyError``
        subclass that an API maps to 404, or a ``ValueError`` subclass).

    Raises
    ------
    error
        At least one name is unknown.
    """
    known_set = known if isinstance(known, set | frozenset | dict) else set(known)
    unknown = [x for x in dict.fromkeys(names) if x not in known_set]
    if not unknown:
        return
    plural = known_as or f"{what}s"
    if len(unknown) == 1:
        lead = f"Unknown {what} {unknown[0]!r}"
    else:
        shown = [str(x) for x in unknown[:_LIST_ALL]]
        more = f" ({len(unknown)} in all)" if len(unknown) > _LIST_ALL else ""
        lead = f"Unknown {what}s {shown}{more}"
    ordered = sorted(str(k) for k in known_set)
    if not ordered:
        expected = f"there are no {plural}"
    elif len(ordered) <= _LIST_ALL:
        expected = f"expected one of the {len(ordered)} {plural}: {ordered}"
    else:
        examples = ", ".join(repr(k) for k in ordered[:3])
        expected = f"expected one of the {len(ordered)} {plural} (e.g. {examples}, ...)"
    hints = []
    for x in unknown[:3]:
        close = suggest(str(x), ordered)
        if close:
            hints.append(_either(close) if len(unknown) == 1 else f"{close[0]!r} for {str(x)!r}")
    msg = f"{lead}{where}; {expected}."
    if hints:
        msg += f" Did you mean {', '.join(hints)}?"
    if advice:
        msg += f" {advice}"
    raise error(msg)
