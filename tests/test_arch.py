"""The package's layers hold: no upward import, no cycle between packages."""

from __future__ import annotations

from pathlib import Path

from aivc._arch import LAYERS, check_layers, package_imports


def test_layers_are_respected_by_every_import() -> None:
    violations = check_layers()
    assert violations == [], "\n".join(v.message for v in violations)


def test_every_package_has_a_layer() -> None:
    placed = {pkg for layer in LAYERS for pkg in layer}
    root = Path(__import__("aivc").__file__).parent
    packages = {p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages <= placed, sorted(packages - placed)


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_an_upward_import_inside_a_function_is_caught(tmp_path: Path) -> None:
    root = tmp_path / "aivc"
    _write(root, "__init__.py", "")
    _write(root, "data/__init__.py", "def f():\n    from aivc.evaluate import x\n")
    _write(root, "evaluate/__init__.py", "x = 1\n")
    violations = check_layers(root)
    assert [v.kind for v in violations] == ["upward"]
    assert "data (layer 1) imports evaluate (layer 5)" in violations[0].message


def test_a_cycle_within_one_layer_is_caught(tmp_path: Path) -> None:
    root = tmp_path / "aivc"
    _write(root, "__init__.py", "")
    _write(root, "cells/__init__.py", "from aivc.experiments import a\n")
    _write(root, "experiments/__init__.py", "from ..cells import b\n")
    kinds = sorted(v.kind for v in check_layers(root))
    assert kinds == ["cycle"]
    assert package_imports(root)["experiments"] == {"cells": ["aivc/experiments/__init__.py"]}
