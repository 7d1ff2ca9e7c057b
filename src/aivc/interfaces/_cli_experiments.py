"""Commands for in silico experiments and the lab in the loop (screen, design, loop, explain).

Imported by :mod:`aivc.interfaces.cli`; heavy libraries are imported inside each command.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to the ``aivc`` app."""
