"""The decoder conformance check, on the protein decoder and on broken decoders."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from aivc.instruments import Instrument, NotFittedError, register_instrument
from aivc.instruments._conformance import ConformanceError, check_decoder

ALL_CHECKS = [
    "explicit-params",
    "not-fitted",
    "fit",
    "predict-shape",
    "determinism",
    "save-load",
    "wrong-class",
    "get-params",
]


@register_instrument("test-noisy-mean-decoder", kind="decoder", description="test only")
class _NoisyMeanDecoder(Instrument):
    """Predicts the column means plus noise: deterministic only if ``noisy`` is False."""

    def __init__(self, *, noisy: bool = False, random_state: int = 0) -> None:
        self.noisy = noisy
        self.random_state = random_state

    def fit(self, x: np.ndarray, y: np.ndarray) -> _NoisyMeanDecoder:
        self.mean_ = np.asarray(y, dtype=float).mean(axis=0)
        self.fitted_ = True
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        self._check_fitted()
        out = np.tile(self.mean_, (len(x), 1))
        if self.noisy:
            out += np.random.default_rng().normal(size=out.shape)
        return out

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"mean": self.mean_}, {}

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.mean_ = arrays["mean"]


class _NoFitCheck(_NoisyMeanDecoder):
    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.zeros((len(x), 2))


_X = np.arange(20.0).reshape(10, 2)
_Y = np.arange(30.0).reshape(10, 3)


def test_check_decoder_passes_a_correct_decoder():
    assert (
        check_decoder(_NoisyMeanDecoder, fit_args=(_X, _Y), predict_args=(_X[:4],), n_outputs=3)
        == ALL_CHECKS
    )


def test_check_decoder_catches_broken_decoders():
    with pytest.raises(ConformanceError, match="determinism"):
        check_decoder(
            _NoisyMeanDecoder, params={"noisy": True}, fit_args=(_X, _Y), predict_args=(_X,)
        )
    with pytest.raises(ConformanceError, match="not-fitted"):
        check_decoder(_NoFitCheck, fit_args=(_X, _Y), predict_args=(_X,))
    with pytest.raises(ConformanceError, match="predict-shape"):
        check_decoder(_NoisyMeanDecoder, fit_args=(_X, _Y), predict_args=(_X,), n_outputs=5)
    with pytest.raises(NotFittedError):
        _NoisyMeanDecoder().predict(_X)


@pytest.mark.slow
def test_check_decoder_on_protein_decoder(data_dir):
    from aivc.cells._protein import ProteinDecoder
    from aivc.data import load

    ref, query = load("pbmc10k_cite_small"), load("pbmc5k_cite_small")
    passed = check_decoder(
        ProteinDecoder,
        params={"n_genes": 300, "n_components": 10},
        fit_args=(ref,),
        predict_args=(query[:50].copy(),),
        n_outputs=14,
    )
    assert passed == ALL_CHECKS
