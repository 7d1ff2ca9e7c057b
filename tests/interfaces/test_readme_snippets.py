"""The README's Python snippets read as one session: every name they use is defined."""

from __future__ import annotations

import ast
import builtins
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _undefined_names(snippets: list[str]) -> list[tuple[int, int, str]]:
    """(snippet, line, name) of every name read before any snippet so far defines it."""
    defined = set(dir(builtins))
    missing = []
    for k, code in enumerate(snippets, start=1):
        for statement in ast.parse(code).body:
            nodes = list(ast.walk(statement))
            loop_vars = {
                n.id
                for c in nodes
                if isinstance(c, ast.comprehension)
                for n in ast.walk(c.target)
                if isinstance(n, ast.Name)
            }
            for n in nodes:
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load):
                    if n.id not in defined | loop_vars:
                        missing.append((k, n.lineno, n.id))
            for n in nodes:
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                    defined.add(n.id)
                elif isinstance(n, ast.Import | ast.ImportFrom):
                    defined |= {(a.asname or a.name).split(".")[0] for a in n.names}
    return missing


def test_readme_experiments_snippet_defines_every_name() -> None:
    snippets = _snippets()
    assert len(snippets) >= 4
    assert any("screen(" in s and "pairs_of=" in s for s in snippets)
    assert _undefined_names(snippets) == []


def test_undefined_name_check_finds_an_undefined_name() -> None:
    assert _undefined_names(["a = 1\nb = a + c\n", "d = [x for x in b]\n"]) == [(1, 2, "c")]
