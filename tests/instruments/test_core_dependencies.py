"""aivc-perturb's default fit and prediction need nothing beyond the core dependencies.

The check runs in a fresh interpreter in which every module that only the
optional extras bring in (directly or through their own requirements) cannot
be imported, as in an environment where ``pip install aivc`` installed the
core dependencies alone.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"

#: Import names that the optional extras provide and the core does not (when installed).
EXPECTED_BLOCKED = {
    "cell_eval",
    "scvi",
    "lightning",
    "harmonypy",
    "sentence_transformers",
    "gears",
    "torch_geometric",
    "sqlalchemy",
    "dask",
    "distributed",
    "psycopg",
    "fastapi",
    "uvicorn",
    "plotly",
    "httpx",
    "mcp",
    "selenium",
    "schemathesis",
}

#: Import names the default path of aivc-perturb uses; they must come with the core.
CORE_IMPORTS = {"numpy", "scipy", "pandas", "anndata", "sklearn", "torch", "pdex", "pyarrow"}

_SCRIPT = r"""
import importlib
import importlib.abc
import json
import sys

blocked = frozenset(json.loads(sys.argv[1]))


class ExtrasBlocker(importlib.abc.MetaPathFinder):
    # Refuses every module whose top-level package is installed only for an optional extra.
    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in blocked:
            msg = f"No module named {fullname!r} (only an optional extra provides it)"
            raise ModuleNotFoundError(msg, name=fullname)
        return None


sys.meta_path.insert(0, ExtrasBlocker())
# Libraries probe optional packages with importlib.util.find_spec, which would see the
# finder's error rather than "not installed"; a None entry in sys.modules makes the probe
# answer None and an import raise ModuleNotFoundError, as for a package that is absent.
for name in blocked:
    sys.modules[name] = None

refused = []
for name in sorted(blocked):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        refused.append(name)

from aivc.data import prepare
from aivc.data._synthetic import synthetic_perturbation_data
from aivc.instruments import make_instrument

raw, schema = synthetic_perturbation_data(
    n_genes=60, n_singles=8, n_doubles=3, cells_per_condition=20, n_control_cells=40
)
adata, schema = prepare(raw, schema)
labels = sorted(set(adata.obs[schema.perturbation_key].astype(str)) - {schema.control_label})
train = adata[(adata.obs[schema.perturbation_key].astype(str) != labels[0]).to_numpy()].copy()
model = make_instrument("aivc-perturb").fit(train, schema)
control = adata[(adata.obs[schema.perturbation_key].astype(str) == schema.control_label).to_numpy()]
cells = model.predict([labels[0]], control=control.copy(), n_cells=10)
leaked = sorted(
    {m.partition(".")[0] for m, mod in sys.modules.items() if mod is not None} & blocked
)
print(json.dumps({
    "refused": refused,
    "leaked": leaked,
    "n_obs": int(cells.n_obs),
    "n_vars": int(cells.n_vars),
    "detection": model.selection_.get("detection", {}).get("chosen"),
}))
"""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed_closure(requirements: list[Requirement]) -> set[str]:
    """Canonical names of the installed distributions that ``requirements`` pull in, recursively."""
    seen: set[str] = set()
    todo = [(r, frozenset(r.extras)) for r in requirements]
    while todo:
        req, extras = todo.pop()
        name = _canonical(req.name)
        if name == "aivc":
            continue  # the ``all`` extra names aivc's own extras
        key = f"{name}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue  # not installed here: nothing of it can be imported anyway
        for spec in requires:
            sub = Requirement(spec)
            if sub.marker is None or any(
                sub.marker.evaluate({"extra": e}) for e in ("", *sorted(extras))
            ):
                todo.append((sub, frozenset(sub.extras)))
    return {k.partition("[")[0] for k in seen}


def extras_only_modules() -> set[str]:
    """Top-level import names provided only by distributions that the optional extras bring in."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    core = _installed_closure([Requirement(r) for r in project["dependencies"]])
    optional = [Requirement(r) for reqs in project["optional-dependencies"].values() for r in reqs]
    extras_only = _installed_closure(optional) - core
    out = set()
    for module, dists in packages_distributions().items():
        if module.isidentifier() and all(_canonical(d) in extras_only for d in dists):
            out.add(module)
    return out


def test_the_blocked_modules_are_those_of_the_extras():
    blocked = extras_only_modules()
    installed = set(packages_distributions())
    assert EXPECTED_BLOCKED & installed <= blocked
    assert not CORE_IMPORTS & blocked


@pytest.mark.slow
def test_aivc_perturb_fits_and_predicts_with_core_dependencies_only():
    blocked = sorted(extras_only_modules())
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(blocked)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["refused"] == blocked  # the blocker works
    assert result["leaked"] == []
    assert (result["n_obs"], result["n_vars"]) == (20, 60)  # 10 predicted and 10 control cells
    assert result["detection"] is not None  # the default fit chose the detection threshold
