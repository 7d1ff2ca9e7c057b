"""Interfaces over the Python API: command line, REST API with the web page, MCP server, reports.

Each is a thin layer over the same functions; names are imported on first use
so ``aivc --help`` stays instant.
"""

from __future__ import annotations

from aivc._lazy import lazy_exports

_EXPORTS = {
    "Workspace": "aivc.interfaces.api",
    "create_app": "aivc.interfaces.api",
    "create_server": "aivc.interfaces.mcp_server",
    "write_report": "aivc.interfaces.report",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
