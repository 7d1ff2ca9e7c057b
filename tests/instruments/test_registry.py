"""The instrument registry (entry points, names, typing) and the estimator parameter API."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint, entry_points

import numpy as np
import pytest

from aivc.instruments import (
    ENTRY_POINT_GROUP,
    ConformalModel,
    ControlModel,
    Instrument,
    LinearModel,
    NotFittedError,
    _registry,
    get_instrument_class,
    list_instruments,
    make_instrument,
    register_instrument,
)

CELLS_MODULES = {"aivc.cells._celltype", "aivc.cells._protein", "aivc.cells._encoder"}


# ----------------------------------------------------------------------------- entry points
def test_aivc_declares_its_instrument_modules_as_entry_points():
    ours = {ep.value for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.dist.name == "aivc"}
    assert CELLS_MODULES <= ours
    assert {
        "aivc.instruments._baselines",
        "aivc.instruments._conformal",
        "aivc.instruments._gears",
        "aivc.instruments._manipulator",
    } <= ours


def test_registry_lists_the_cells_instruments_through_entry_points():
    """In a fresh interpreter aivc.instruments imports no aivc.cells until the registry loads it."""
    code = textwrap.dedent(
        """
        import json, sys
        import aivc.instruments as inst
        before = sorted(m for m in sys.modules if m.startswith("aivc.cells"))
        infos = {i.name: [i.kind, i.cls.__module__] for i in inst.list_instruments()}
        print(json.dumps({"before": before, "infos": infos}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["before"] == []
    infos = result["infos"]
    assert infos["cell-type"] == ["decoder", "aivc.cells._celltype"]
    assert infos["rna-to-protein"] == ["decoder", "aivc.cells._protein"]
    assert infos["cell-encoder"] == ["encoder", "aivc.cells._encoder"]
    assert infos["aivc-perturb"] == ["manipulator", "aivc.instruments._manipulator"]


@pytest.fixture
def fresh_registry(monkeypatch):
    """The registry as if nothing had been loaded yet; restores the registered names after."""
    list_instruments()  # load everything first, so only the test's own additions are undone
    saved = dict(_registry._INSTRUMENTS)
    monkeypatch.setattr(_registry, "_loaded", False)
    yield monkeypatch
    _registry._INSTRUMENTS.clear()
    _registry._INSTRUMENTS.update(saved)


def _entry_point(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


def test_third_party_entry_point_registers_its_instruments(fresh_registry, tmp_path):
    (tmp_path / "aivc_test_plugin_ok.py").write_text(
        textwrap.dedent(
            """
            from aivc.instruments import Instrument, register_instrument

            @register_instrument("test-plugin-decoder", kind="decoder", description="test only")
            class PluginDecoder(Instrument):
                def __init__(self, *, alpha: float = 1.0) -> None:
                    self.alpha = alpha
            """
        )
    )
    fresh_registry.syspath_prepend(str(tmp_path))
    fresh_registry.delitem(sys.modules, "aivc_test_plugin_ok", raising=False)
    fresh_registry.setattr(
        _registry, "_entry_points", lambda: [_entry_point("plugin", "aivc_test_plugin_ok")]
    )
    infos = {i.name: i for i in list_instruments()}
    assert infos["test-plugin-decoder"].kind == "decoder"
    model = make_instrument("test-plugin-decoder", alpha=2.0)
    assert model.get_params() == {"alpha": 2.0}
    assert type(model).name == "test-plugin-decoder"
    sys.modules.pop("aivc_test_plugin_ok", None)


def test_broken_third_party_entry_point_is_logged_and_skipped(fresh_registry, caplog):
    fresh_registry.setattr(
        _registry,
        "_entry_points",
        lambda: [_entry_point("broken-plugin", "aivc_test_plugin_that_is_not_installed")],
    )
    with caplog.at_level(logging.WARNING, logger="aivc.instruments._registry"):
        names = {i.name for i in list_instruments()}
    assert {"linear", "aivc-perturb"} <= names
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1
    assert "'broken-plugin'" in warned[0]
    assert "aivc_test_plugin_that_is_not_installed" in warned[0]
    assert "ModuleNotFoundError" in warned[0]


def test_broken_own_entry_point_raises(fresh_registry):
    fresh_registry.setattr(
        _registry, "_entry_points", lambda: [_entry_point("own", "aivc.no_such_module_xyz")]
    )
    with pytest.raises(ModuleNotFoundError) as info:
        next(list_instruments())
    assert any("'own'" in note for note in getattr(info.value, "__notes__", []))
    # a later call tries again rather than serving a half-loaded registry
    assert _registry._loaded is False


# ----------------------------------------------------------------------------- names and types
def test_duplicate_names_raise():
    list_instruments()

    class _Other(ControlModel):
        pass

    with pytest.raises(ValueError, match=r"'linear' is already registered \(LinearModel\)"):
        register_instrument("linear", description="another")(_Other)
    assert get_instrument_class("linear") is LinearModel


def test_only_instruments_can_register():
    with pytest.raises(TypeError, match=r"derived from aivc\.instruments\.Instrument"):
        register_instrument("test-not-an-instrument", description="x")(dict)
    assert "test-not-an-instrument" not in {i.name for i in list_instruments()}


def test_lookup_by_name_or_class_name():
    assert get_instrument_class("linear") is LinearModel
    assert get_instrument_class("LinearModel") is LinearModel
    model = make_instrument("linear", n_components=3)
    assert isinstance(model, LinearModel)
    assert model.get_params()["n_components"] == 3
    with pytest.raises(KeyError, match="Unknown instrument 'no-such-model'"):
        make_instrument("no-such-model")


# ----------------------------------------------------------------------------- parameters
def test_set_params_sets_and_returns_self():
    model = LinearModel(n_components=4)
    assert model.set_params(n_components=7, ridge=0.5) is model
    assert model.get_params()["n_components"] == 7
    assert model.ridge == 0.5
    assert model.set_params() is model


def test_set_params_rejects_unknown_names_in_sklearns_words():
    model = LinearModel(n_components=4)
    valid = sorted(model.get_params())
    expected = f"Invalid parameter 'n_component' for estimator LinearModel. Valid parameters are: {valid!r}."
    with pytest.raises(ValueError) as info:
        model.set_params(ridge=1.0, n_component=5)
    assert str(info.value) == expected
    # nothing was changed, not even the valid name passed alongside
    assert model.get_params()["ridge"] is None
    with pytest.raises(
        ValueError, match=r"for estimator ControlModel\. Valid parameters are: \[\]"
    ):
        ControlModel().set_params(anything=1)


def test_clone_copies_parameters_deeply():
    model = ConformalModel(base="linear", base_params={"n_components": 3}, n_folds=4)
    clone = model.clone()
    assert type(clone) is ConformalModel
    assert clone is not model
    assert clone.get_params() == model.get_params()
    assert clone.base_params is not model.base_params
    clone.base_params["n_components"] = 9
    assert model.base_params == {"n_components": 3}


def test_clone_is_unfitted(prepared):
    adata, schema = prepared
    model = LinearModel(n_components=3).fit(adata, schema)
    labels = sorted(set(adata.obs[schema.perturbation_key].astype(str)) - {schema.control_label})
    before = model.predict_delta(labels[:2])
    clone = model.clone()
    assert model.is_fitted
    assert not clone.is_fitted
    assert not [k for k in vars(clone) if k.endswith("_")]
    with pytest.raises(NotFittedError):
        clone.predict_delta(labels[:2])
    # the clone fits to the same model, and cloning left the original as it was
    np.testing.assert_allclose(clone.fit(adata, schema).predict_delta(labels[:2]), before)
    np.testing.assert_allclose(model.predict_delta(labels[:2]), before)


def test_clone_and_set_params_on_every_registered_instrument():
    for info in list_instruments():
        if info.name.startswith("test-"):
            continue
        model = info.cls()
        assert isinstance(model, Instrument)
        clone = model.clone()
        assert type(clone) is info.cls
        assert clone.get_params() == model.get_params()
        assert clone.set_params(**model.get_params()) is clone
