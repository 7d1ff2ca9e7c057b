"""Tissue representations (the multicellular scale): niches on spatial graphs."""

from __future__ import annotations

__all__: list[str] = []
