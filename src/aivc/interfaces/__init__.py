"""Interfaces over the Python API: command line, REST API with the web page, MCP server, reports.

Each is a thin layer over the same functions; names are imported on first use
so ``aivc --help`` stays instant.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Workspace": "aivc.interfaces.api",
    "create_app": "aivc.interfaces.api",
    "create_server": "aivc.interfaces.mcp_server",
    "write_report": "aivc.interfaces.report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        msg = f"module 'aivc.interfaces' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
