"""Import modules and write the interpreter's and the installed distributions' versions.

Standalone (standard library only): run by aivc with a peer environment's
python to check that the peer's module imports once it is installed.

Usage: ``python probe.py --import MODULE [--import MODULE ...] --out versions.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
from importlib import metadata
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    """Import every ``--import`` module and write the versions to ``--out`` as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--import", dest="modules", action="append", default=[])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    modules = {}
    for name in args.modules:
        module = importlib.import_module(name)
        modules[name] = str(getattr(module, "__version__", ""))
    distributions = {
        d.metadata["Name"]: d.version for d in metadata.distributions() if d.metadata["Name"]
    }
    result = {
        "python": platform.python_version(),
        "modules": modules,
        "distributions": dict(sorted(distributions.items(), key=lambda kv: kv[0].lower())),
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
