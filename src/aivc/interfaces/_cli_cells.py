"""Commands for cell representations and decoders (embed, annotate).

Imported by :mod:`aivc.interfaces.cli`; heavy libraries are imported inside each command.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to the ``aivc`` app."""
