"""The README's Python snippets read as one session: every name they use is defined."""

from __future__ import annotations

import ast
import builtins
import re
from pathlib import Path

import pytest

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


def _write_my_screen(path: Path) -> None:
    """A small screen with the columns the README's own-data snippet declares."""
    from aivc.data._synthetic import synthetic_perturbation_data

    adata, schema = synthetic_perturbation_data(
        n_genes=40, n_singles=4, n_doubles=0, cells_per_condition=15, n_control_cells=30
    )
    labels = adata.obs[schema.perturbation_key].astype(str)
    adata.obs = adata.obs.assign(
        guide_target=labels.replace({schema.control_label: "non-targeting"}).to_numpy(),
        cell_line="K562",
    )[["guide_target", "cell_line"]]
    adata.layers["counts"] = adata.X.copy()
    adata.uns.clear()
    adata.write_h5ad(path)


#: Cells kept of each Baron pancreas dataset: the whole human reference takes minutes to
#: annotate (the annotator refits each of its candidate classifiers on every held-out donor).
_BARON_CELLS = {"baron_human": 400, "baron_mouse": 200}


@pytest.mark.slow
def test_readme_python_snippets_run_in_order_in_one_session(data_dir, tmp_path, monkeypatch):
    """Every Python block of the README, run as written, one after the other, in one namespace.

    The data are the README's: the embedded papalexi2021, and the Baron pancreas datasets
    with fewer cells (a seeded sample of each). The own-data block reads
    ``my_screen.h5ad``, which the test writes from synthetic data.
    """
    import numpy as np
    from threadpoolctl import threadpool_limits

    import aivc.data

    real_load = aivc.data.load

    def load(name, *args, **kwargs):
        adata = real_load(name, *args, **kwargs)
        n = _BARON_CELLS.get(name)
        if n is not None and adata.n_obs > n:
            keep = np.sort(np.random.default_rng(0).choice(adata.n_obs, n, replace=False))
            adata = adata[keep].copy()
        return adata

    monkeypatch.setattr(aivc.data, "load", load)
    monkeypatch.chdir(tmp_path)
    _write_my_screen(tmp_path / "my_screen.h5ad")
    namespace: dict = {"__name__": "readme"}
    # one thread per library: on a busy machine threads waiting for each other make it minutes
    with threadpool_limits(limits=1):
        for k, code in enumerate(_snippets(), start=1):
            exec(compile(code, f"README.md, Python block {k}", "exec"), namespace)

    delta, lower, upper = (namespace[k] for k in ("delta", "lower", "upper"))
    assert list(delta.index) == ["IRF9", "STAT1+JAK2"]
    assert (lower.to_numpy() <= upper.to_numpy()).all()
    assert (tmp_path / "models" / "papalexi" / "config.json").exists()
    assert len(namespace["labels"]) == namespace["mouse"].n_obs == _BARON_CELLS["baron_mouse"]
    assert len(namespace["table"]) == namespace["mouse"].n_obs
    assert len(namespace["ranked"].table) > 0 and namespace["design"].best
    assert namespace["schema"].perturbation_key == "perturbation"  # the own-data block kept it
