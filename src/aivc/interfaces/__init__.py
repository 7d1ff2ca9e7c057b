"""Interfaces over the Python API: the command line (and, later, REST, web page and MCP server)."""

from __future__ import annotations

__all__: list[str] = []
