"""The chemical manipulator: a compound's profile change at any dose, from structure and dose.

Every model here learns from a :class:`~aivc.data._profiles.ResponseTable`
(the mean change from vehicle of each measured (compound, dose)) and predicts
the change of any compound, named or given as SMILES, at any positive dose:

- ``vehicle``: no change.
- ``train-mean``: the mean change of all training conditions.
- ``nearest-compound``: the training compound most similar by Tanimoto
  similarity of Morgan fingerprints (radius 2, 2,048 bits), at the query
  dose (linear interpolation in log dose between its measured doses, the
  nearest measured dose beyond them); a measured compound is its own nearest.
- ``ridge-fingerprint``: ridge regression of the change on the fingerprint
  bits and log10 dose, penalty by generalised cross-validation.
- ``dose-interpolation``: the same compound's change, interpolated linearly
  in log dose between its measured doses (nearest measured dose beyond
  them); it predicts measured compounds only.
- ``aivc-chem`` (:class:`ChemicalManipulator`): contains all of the above and
  more structured candidates, and picks among them on the training data
  only, separately for compounds it has measured (at a new dose) and for
  compounds it has not:

  * measured compound, new dose: every compound's changes are modelled as
    the dose-matched mean change of all compounds (``dose-mean``) plus the
    compound's own deviation from it, either interpolated (``interp``),
    smoothed over log dose (``smooth``), or as one profile scaled by a
    Hill curve in log dose (``hill``: ``h(d) = 1 / (1 + (EC50 / d)^n)``,
    EC50 and n by least squares on a grid, the profile in closed form),
    optionally shrunk towards ``dose-mean``. Chosen by leave-one-dose-out
    on the training compounds.
  * new compound: ``dose-mean`` plus a similarity-weighted mean of the
    deviations of the most similar training compounds (``kernel``, Tanimoto
    on Morgan or MACCS keys, shrunk by a factor), a ridge regression of the
    deviations on the fingerprint (``ridge-residual``), or the baselines.
    Chosen by leave-compounds-out cross-validation on the training compounds.

  The candidate of each family is the one with the best mean rank over two
  scores of its held-out training conditions: Pearson correlation and mean
  squared error of the 20 most changed features; a tie goes to the earlier
  (simpler) candidate. ``selection_`` records the choice and every score.

  Intervals are split-conformal: the held-out residuals of the chosen
  candidate, scaled per feature and per dose third, give the quantile of
  the normalised absolute residual at the requested level.

Doses are micromolar inside the model; ``dose_unit`` converts at the
boundary. A dose of zero or below is refused (the vehicle is ``vehicle``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np
import pandas as pd

from aivc.chem import CompoundLibrary, featurize, tanimoto
from aivc.data._profiles import ProfileSchema, ResponseTable, response_table, to_micromolar
from aivc.data._validate import DataValidationError
from aivc.instruments._base import Instrument, PredictionInterval
from aivc.instruments._conformal import check_level, conformal_quantile
from aivc.instruments._registry import register_instrument
from aivc.instruments._scores import condition_scores

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "CHEMICAL_BASELINES",
    "CHEMICAL_MODELS",
    "ChemicalManipulator",
    "ChemicalModel",
    "dose_response",
]

logger = logging.getLogger(__name__)

#: Baseline model names of the chemical benchmark.
CHEMICAL_BASELINES = (
    "vehicle",
    "train-mean",
    "nearest-compound",
    "ridge-fingerprint",
    "dose-interpolation",
)

_DOSE_BANDWIDTH = 0.25  # log10 units: doses three-fold apart are 0.48 apart
_ALPHAS = np.logspace(-2, 4, 13)


# ----------------------------------------------------------------------------- training data
class _Train:
    """A response table arranged for prediction: per-compound dose curves and fingerprints."""

    def __init__(
        self, table: ResponseTable, fingerprints: dict[str, dict[str, np.ndarray]]
    ) -> None:
        self.table = table
        self.ld = np.log10(table.doses)
        self.Y = table.delta
        self.names = list(dict.fromkeys(table.compounds.tolist()))
        self.curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for c in self.names:
            rows = np.flatnonzero(table.compounds == c)
            order = rows[np.argsort(self.ld[rows])]
            self.curves[c] = (self.ld[order], self.Y[order])
        self.fps = fingerprints  # kind -> {compound: vector}
        self.mean = self.Y.mean(0) if len(self.Y) else np.zeros(len(table.features))
        self._ratios: tuple[float, float] | None = None

    @property
    def edge_ratios(self) -> tuple[float, float]:
        """How a compound's change grows one dose step beyond its measured range, below and above.

        Least-squares factors ``g`` with ``Y[first] ~ g_low * Y[second]`` and
        ``Y[last] ~ g_high * Y[second to last]`` over the training compounds
        measured at 3 or more doses (1 when there are none).
        """
        if self._ratios is None:
            num_lo = den_lo = num_hi = den_hi = 0.0
            for x, Y in self.curves.values():
                if len(x) >= 3:
                    num_lo += float(Y[0] @ Y[1])
                    den_lo += float(Y[1] @ Y[1])
                    num_hi += float(Y[-1] @ Y[-2])
                    den_hi += float(Y[-2] @ Y[-2])
            self._ratios = (
                num_lo / den_lo if den_lo > 0 else 1.0,
                num_hi / den_hi if den_hi > 0 else 1.0,
            )
        return self._ratios

    def extrapolate(self, compound: str, ld: np.ndarray) -> np.ndarray:
        """:meth:`interp` inside the measured doses; beyond them the edge change times :attr:`edge_ratios`."""
        out = self.interp(compound, ld)
        x, _ = self.curves[compound]
        if len(x) >= 2:
            lo, hi = self.edge_ratios
            out[ld < x[0] - 1e-9] *= lo
            out[ld > x[-1] + 1e-9] *= hi
        return out

    def dose_mean(self, ld: np.ndarray) -> np.ndarray:
        """Kernel-weighted mean change of all training conditions at each log dose."""
        w = np.exp(-0.5 * ((ld[:, None] - self.ld[None, :]) / _DOSE_BANDWIDTH) ** 2)
        w_sum = w.sum(1, keepdims=True)
        out = np.where(w_sum > 1e-12, (w @ self.Y) / np.maximum(w_sum, 1e-12), self.mean)
        return out

    def interp(self, compound: str, ld: np.ndarray) -> np.ndarray:
        """The compound's measured changes interpolated linearly in log dose (flat beyond)."""
        x, Y = self.curves[compound]
        if len(x) == 1:
            return np.repeat(Y, len(ld), axis=0)
        q = np.clip(ld, x[0], x[-1])
        j = np.clip(np.searchsorted(x, q, side="right") - 1, 0, len(x) - 2)
        t = ((q - x[j]) / np.where(x[j + 1] > x[j], x[j + 1] - x[j], 1.0))[:, None]
        return (1 - t) * Y[j] + t * Y[j + 1]

    def with_structure(self, kind: str) -> list[str]:
        return [c for c in self.names if c in self.fps.get(kind, {})]


# ----------------------------------------------------------------------------- candidates
def _hill_fit(x: np.ndarray, R: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Hill curve (log10 EC50, slope) and profile u minimising ||R - h(x) u||² (grid + closed form).

    The EC50 grid stays within the measured doses and the slopes are gentle,
    so that a curve fitted to small changes cannot explode beyond them.
    """
    best = (np.inf, 0.0, 1.0, np.zeros(R.shape[1]))
    centres = np.linspace(x.min(), x.max(), 9)
    for e in centres:
        for n in (1.0, 2.0):
            h = 1.0 / (1.0 + 10 ** (-n * (x - e)))
            hh = float(h @ h)
            if hh < 1e-12:
                continue
            u = (h @ R) / hh
            sse = float(((R - np.outer(h, u)) ** 2).sum())
            if sse < best[0]:
                best = (sse, float(e), n, u)
    return best[1], best[2], best[3]


def _compound_free(train: _Train, ld: np.ndarray) -> dict[str, np.ndarray]:
    """The candidates that ignore which compound is asked for: vehicle, train-mean, dose-mean."""
    n, F = len(ld), train.Y.shape[1]
    return {
        "vehicle": np.zeros((n, F)),
        "train-mean": np.repeat(train.mean[None, :], n, 0),
        "dose-mean": train.dose_mean(ld),
    }


def _seen_candidates(
    train: _Train, compounds: Sequence[str], ld: np.ndarray
) -> dict[str, np.ndarray]:
    """Predictions for measured compounds at (possibly new) doses, by every candidate."""
    n, F = len(compounds), train.Y.shape[1]
    out = _compound_free(train, ld)
    base = out["dose-mean"]
    out |= {
        "interp": np.zeros((n, F)),
        "smooth-0.3": np.zeros((n, F)),
        "smooth-0.6": np.zeros((n, F)),
        "hill": np.zeros((n, F)),
    }
    cache: dict[str, tuple[float, float, np.ndarray, np.ndarray, np.ndarray]] = {}
    for i, (c, d) in enumerate(zip(compounds, ld, strict=True)):
        x, Y = train.curves[c]
        resid = Y - train.dose_mean(x)
        q = np.array([d])
        out["interp"][i] = train.interp(c, q)[0]
        for b in (0.3, 0.6):
            w = np.exp(-0.5 * ((d - x) / b) ** 2)
            out[f"smooth-{b}"][i] = base[i] + (w @ resid) / max(w.sum(), 1e-12)
        if c not in cache:
            if len(x) >= 2:
                e, slope, u = _hill_fit(x, resid)
            else:
                e, slope, u = float(x[0]) - 10.0, 1.0, resid[0]  # one dose: a constant deviation
            cache[c] = (e, slope, u, x, resid)
        e, slope, u, x_c, _ = cache[c]
        h = 1.0 / (1.0 + 10 ** (-slope * (d - e)))
        h_max = float((1.0 / (1.0 + 10 ** (-slope * (x_c - e)))).max())
        out["hill"][i] = base[i] + min(h, 1.5 * h_max) * u  # at most 1.5x the largest fitted change
    out["extrap"] = np.vstack(
        [train.extrapolate(c, np.array([d])) for c, d in zip(compounds, ld, strict=True)]
    )
    for name in ("interp", "smooth-0.3", "smooth-0.6", "hill"):
        for lam in (0.5,):
            out[f"{name}*{lam}"] = base + lam * (out[name] - base)
    out["mean-interp-smooth-hill"] = (out["interp"] + out["smooth-0.6"] + out["hill"]) / 3
    out["mean-interp-hill"] = (out["interp"] + out["hill"]) / 2
    return out


def _ridge_design(fp: np.ndarray, ld: np.ndarray) -> np.ndarray:
    return np.hstack([fp, ld[:, None]])


def _ridge_fit(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Ridge with the penalty chosen by generalised cross-validation (SVD, all targets together)."""
    mu_x, mu_y = X.mean(0), Y.mean(0)
    Xc, Yc = X - mu_x, Y - mu_y
    U, s, Vt = np.linalg.svd(Xc, full_matrices=False)
    UtY = U.T @ Yc
    n = X.shape[0]
    best = (np.inf, _ALPHAS[0])
    for a in _ALPHAS:
        f = s**2 / (s**2 + a)
        fit = U @ (f[:, None] * UtY)
        df = f.sum()
        gcv = ((Yc - fit) ** 2).sum() / max((n - df) ** 2, 1e-12)
        if gcv < best[0]:
            best = (gcv, a)
    a = best[1]
    coef = Vt.T @ ((s / (s**2 + a))[:, None] * UtY)
    return coef, mu_x, mu_y, float(a)


def _unseen_candidates(
    train: _Train, smiles: Sequence[str | None], ld: np.ndarray, only: str | None = None
) -> dict[str, np.ndarray]:
    """Predictions for compounds the training data lacks, by every candidate (NaN rows: no structure).

    ``only`` names the one candidate needed (the others that need work are skipped).
    """
    n = len(smiles)
    out = _compound_free(train, ld)
    base = out["dose-mean"]
    has = np.array([s is not None for s in smiles])
    # the one fingerprint ``only`` needs (MACCS only for its own kernels), or both
    kinds = (
        ("morgan2", "maccs") if only is None else ("maccs",) if "maccs" in only else ("morgan2",)
    )
    for kind in kinds:
        names = train.with_structure(kind)
        if not names or not has.any() or only in out:
            continue
        ref = np.stack([train.fps[kind][c] for c in names])
        q = np.full((n, ref.shape[1]), np.nan)
        q[has] = featurize([s for s in smiles if s is not None], kind)
        sim = np.zeros((n, len(names)))
        sim[has] = tanimoto(q[has], ref)
        # residual curves of every reference compound at every query dose
        dev = np.stack([train.interp(c, ld) for c in names], 1) - base[:, None, :]  # n x m x F
        top = np.argsort(-sim, axis=1)[:, :5]
        w = np.take_along_axis(sim, top, 1) ** 3
        w = w / np.maximum(w.sum(1, keepdims=True), 1e-12)
        kern = np.einsum("nk,nkf->nf", w, np.take_along_axis(dev, top[:, :, None], 1))
        if kind == "morgan2":
            nearest = np.argmax(sim, 1)
            out["nearest-compound"] = np.where(
                has[:, None], base + dev[np.arange(n), nearest], np.nan
            )
        for lam in (0.25, 0.5, 1.0):
            out[f"kernel-{kind}*{lam}"] = np.where(has[:, None], base + lam * kern, np.nan)
        if kind == "morgan2" and (only is None or only.startswith("ridge")):
            # ridge on the fingerprint and log dose: the change itself, and the deviation from dose-mean
            rows = np.isin(train.table.compounds, names)
            fp_rows = np.stack([train.fps[kind][c] for c in train.table.compounds[rows]])
            X = _ridge_design(fp_rows, train.ld[rows])
            Xq = _ridge_design(np.nan_to_num(q), ld)
            coef, mx, my, _ = _ridge_fit(X, train.Y[rows])
            out["ridge-fingerprint"] = np.where(has[:, None], (Xq - mx) @ coef + my, np.nan)
            coef, mx, my, _ = _ridge_fit(X, train.Y[rows] - train.dose_mean(train.ld[rows]))
            out["ridge-residual"] = np.where(has[:, None], base + (Xq - mx) @ coef + my, np.nan)
    return out


# ----------------------------------------------------------------------------- models
class ChemicalModel(Instrument):
    """Base of models that predict a compound's profile change at a dose (see the module docstring)."""

    kind: ClassVar[str] = "chemical"

    def fit(self, adata: AnnData | ResponseTable, schema: ProfileSchema | None = None) -> Self:
        """Learn from a profile AnnData (with its :class:`ProfileSchema`) or a :class:`ResponseTable`."""
        if isinstance(adata, ResponseTable):
            table = adata
        else:
            if schema is None:
                msg = "Fitting on an AnnData needs its ProfileSchema (compound, dose, vehicle, plate columns)."
                raise ValueError(msg)
            table = response_table(adata, schema)
        if len(table.compounds) == 0:
            msg = "The profile data hold no treated conditions to learn from."
            raise DataValidationError(msg)
        self.table_ = table
        self.library_ = CompoundLibrary(table.smiles)
        self.features_ = list(table.features)
        fps: dict[str, dict[str, np.ndarray]] = {}
        for kind in ("morgan2", "maccs"):
            named = self.library_.with_structure
            if named:
                vecs = featurize([self.library_.structures[c] for c in named], kind)
                fps[kind] = dict(zip(named, vecs, strict=True))
        self.train_ = _Train(table, fps)
        self._fit_model()
        self.fitted_ = True
        return self

    def _fit_model(self) -> None:
        """Model-specific fitting after the table is in place."""

    # requests ------------------------------------------------------------------
    def _request(
        self, compounds: Sequence[str] | str, doses: Sequence[float] | float, dose_unit: str
    ) -> tuple[list[str], np.ndarray, list[bool], list[str | None]]:
        self._check_fitted()
        compounds = [compounds] if isinstance(compounds, str) else list(compounds)
        doses_arr = np.atleast_1d(np.asarray(doses, dtype=np.float64))
        if doses_arr.size == 1 and len(compounds) > 1:
            doses_arr = np.repeat(doses_arr, len(compounds))
        if doses_arr.size != len(compounds):
            msg = f"Give one dose per compound (or one for all); got {len(compounds)} compounds and {doses_arr.size} doses."
            raise ValueError(msg)
        if not np.isfinite(doses_arr).all() or (doses_arr <= 0).any():
            msg = (
                f"Doses must be positive and finite; got {doses_arr.tolist()}. A dose of zero is the "
                "vehicle (no change); leave it out or use the 'vehicle' model."
            )
            raise ValueError(msg)
        um = to_micromolar(doses_arr, dose_unit)
        seen, smiles = [], []
        for c in compounds:
            if c in self.train_.curves:
                seen.append(True)
                smiles.append(self.library_.structures.get(c))
            else:
                seen.append(False)
                smiles.append(
                    self.library_.smiles_of(c)
                )  # a known name without structure raises here
        return compounds, um, seen, smiles

    def _labels(self, compounds: list[str], um: np.ndarray) -> list[str]:
        return [f"{c}@{d:g}uM" for c, d in zip(compounds, um, strict=True)]

    def predict_delta(
        self,
        compounds: Sequence[str] | str,
        doses: Sequence[float] | float,
        *,
        dose_unit: str = "uM",
    ) -> pd.DataFrame:
        """Predicted change (conditions x features) of each compound (name or SMILES) at its dose."""
        compounds, um, seen, smiles = self._request(compounds, doses, dose_unit)
        values = self._predict(compounds, np.log10(um), seen, smiles)
        return pd.DataFrame(
            values,
            index=pd.Index(self._labels(compounds, um), name="condition"),
            columns=self.features_,
        )

    predict = predict_delta

    def _predict(
        self, compounds: list[str], ld: np.ndarray, seen: list[bool], smiles: list[str | None]
    ) -> np.ndarray:
        raise NotImplementedError

    def _unseen_by(self, name: str, ld: np.ndarray, smiles: list[str | None]) -> np.ndarray:
        pred = _unseen_candidates(self.train_, smiles, ld, only=name)
        if name not in pred:
            msg = f"{self.name} needs compound structures; none of the training compounds has one."
            raise DataValidationError(msg)
        return pred[name]

    # persistence -----------------------------------------------------------------
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        t = self.table_
        arrays = {
            "delta": t.delta,
            "doses": t.doses,
            "n_wells": t.n_wells,
            "vehicle_sd": t.vehicle_sd,
        }
        meta = {
            "compounds": t.compounds.tolist(),
            "features": list(t.features),
            "smiles": t.smiles,
            "moa": t.moa,
            "model": self._model_meta(),
        }
        return arrays, meta

    def _model_meta(self) -> dict[str, Any]:
        return {}

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        table = ResponseTable(
            compounds=np.array(meta["compounds"], dtype=object),
            doses=np.asarray(arrays["doses"], dtype=np.float64),
            delta=np.asarray(arrays["delta"], dtype=np.float64),
            n_wells=np.asarray(arrays["n_wells"]),
            features=list(meta["features"]),
            vehicle_sd=np.asarray(arrays["vehicle_sd"], dtype=np.float64),
            smiles=dict(meta["smiles"]),
            moa=dict(meta["moa"]),
        )
        self.fit(table)
        self._set_model_meta(meta.get("model", {}))

    def _set_model_meta(self, meta: dict[str, Any]) -> None:
        """Restore what :meth:`_model_meta` wrote (after the table is refitted)."""


class VehicleChem(ChemicalModel):
    """No change from the vehicle wells."""

    name = "vehicle"

    def __init__(self) -> None:
        pass

    def _predict(self, compounds, ld, seen, smiles):
        return np.zeros((len(compounds), len(self.features_)))


class TrainMeanChem(ChemicalModel):
    """The mean change of all training conditions."""

    name = "train-mean"

    def __init__(self) -> None:
        pass

    def _predict(self, compounds, ld, seen, smiles):
        return np.repeat(self.train_.mean[None, :], len(compounds), 0)


class NearestCompound(ChemicalModel):
    """The most similar training compound's change at the query dose (Tanimoto, Morgan bits)."""

    name = "nearest-compound"

    def __init__(self) -> None:
        pass

    def _predict(self, compounds, ld, seen, smiles):
        out = np.zeros((len(compounds), len(self.features_)))
        new = np.flatnonzero(~np.asarray(seen, bool))
        for i in np.flatnonzero(seen):
            out[i] = self.train_.interp(compounds[i], ld[[i]])[0]
        if new.size:
            out[new] = self._unseen_by("nearest-compound", ld[new], [smiles[i] for i in new])
        return out


class RidgeFingerprint(ChemicalModel):
    """Ridge regression of the change on Morgan fingerprint bits and log dose."""

    name = "ridge-fingerprint"

    def __init__(self) -> None:
        pass

    def _predict(self, compounds, ld, seen, smiles):
        if any(s is None for s in smiles):
            missing = [c for c, s in zip(compounds, smiles, strict=True) if s is None]
            msg = (
                f"ridge-fingerprint needs a structure for every compound; {missing[:3]} have none."
            )
            raise DataValidationError(msg)
        return self._unseen_by("ridge-fingerprint", ld, smiles)


class DoseInterpolation(ChemicalModel):
    """The same compound's change interpolated in log dose (measured compounds only)."""

    name = "dose-interpolation"

    def __init__(self) -> None:
        pass

    def _predict(self, compounds, ld, seen, smiles):
        if not all(seen):
            new = [c for c, s in zip(compounds, seen, strict=True) if not s]
            msg = (
                f"dose-interpolation predicts measured compounds only; {new[:3]} were not measured."
            )
            raise ValueError(msg)
        return np.vstack(
            [self.train_.interp(c, np.array([d])) for c, d in zip(compounds, ld, strict=True)]
        )


def _rank_choice(scores: dict[str, dict[str, float]]) -> str:
    """The candidate with the best mean rank over pearson_delta_top20 (high) and mse_top20 (low)."""
    names = list(scores)
    p = np.array([scores[n]["pearson_delta_top20"] for n in names])
    m = np.array([scores[n]["mse_top20"] for n in names])
    rank_p = pd.Series(-p).rank(method="min").to_numpy()
    rank_m = pd.Series(m).rank(method="min").to_numpy()
    total = rank_p + rank_m
    return names[int(np.argmin(total))]  # argmin keeps the first (simplest) on ties


@register_instrument(
    "aivc-chem",
    description="Chemical manipulator: dose-response and structure candidates chosen on training data, "
    "with conformal intervals.",
    kind="chemical",
)
class ChemicalManipulator(ChemicalModel):
    """aivc's chemical manipulator (see the module docstring for what it chooses among and how).

    Parameters
    ----------
    folds
        Folds of the leave-compounds-out cross-validation on the training compounds.
    level
        Default nominal coverage of :meth:`predict_interval`.
    seed
        Seed of the cross-validation's compound folds.
    """

    def __init__(self, *, folds: int = 5, level: float = 0.9, seed: int = 0) -> None:
        self.folds = folds
        self.level = level
        self.seed = seed

    # cross-validation on the training table -----------------------------------
    def _cv_seen(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Leave-one-dose-out predictions of every seen-compound candidate."""
        t = self.table_
        preds: dict[str, list[np.ndarray]] = {}
        obs, lds = [], []
        for c in self.train_.names:
            rows = np.flatnonzero(t.compounds == c)
            if len(rows) < 3:
                continue
            for r in rows:
                keep = np.ones(len(t.compounds), bool)
                keep[r] = False
                inner = _Train(t.subset(keep), self.train_.fps)
                cand = _seen_candidates(inner, [c], self.train_.ld[[r]])
                for k, v in cand.items():
                    preds.setdefault(k, []).append(v[0])
                obs.append(t.delta[r])
                lds.append(self.train_.ld[r])
        return (
            {k: np.vstack(v) for k, v in preds.items()},
            np.vstack(obs) if obs else np.zeros((0, 0)),
            np.asarray(lds),
        )

    def _cv_unseen(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Leave-compounds-out predictions of every new-compound candidate."""
        t = self.table_
        names = self.train_.with_structure("morgan2")
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(names))
        k = min(self.folds, len(names))
        preds: dict[str, list[np.ndarray]] = {}
        obs, lds = [], []
        if k < 2:
            return {}, np.zeros((0, 0)), np.zeros(0)
        for f in range(k):
            held = {names[i] for i in order[f::k]}
            test = np.isin(t.compounds, list(held))
            inner = _Train(
                t.subset(~test),
                {
                    kd: {c: v for c, v in fp.items() if c not in held}
                    for kd, fp in self.train_.fps.items()
                },
            )
            smiles = [t.smiles[c] for c in t.compounds[test]]
            cand = _unseen_candidates(inner, smiles, self.train_.ld[test])
            for name, v in cand.items():
                preds.setdefault(name, []).append(v)
            obs.append(t.delta[test])
            lds.append(self.train_.ld[test])
        return {n: np.vstack(v) for n, v in preds.items()}, np.vstack(obs), np.concatenate(lds)

    def _choose(
        self, family: str, preds: dict[str, np.ndarray], obs: np.ndarray, ld: np.ndarray
    ) -> dict[str, Any]:
        if not preds or len(obs) == 0:
            return {"chosen": "dose-mean", "scores": {}, "n_held_out": 0}
        scores = {}
        for name, p in preds.items():
            ok = np.isfinite(p).all(1)
            s = condition_scores(obs[ok], p[ok])
            scores[name] = {k: float(v.mean()) for k, v in s.items()}
        chosen = _rank_choice(scores)
        resid = obs - preds[chosen]
        scale_f = np.sqrt(np.nanmean(resid**2, 0))
        scale_f = np.maximum(scale_f, 1e-6 * max(float(scale_f.max()), 1e-12))
        edges = np.quantile(self.train_.ld, [1 / 3, 2 / 3]) if len(self.train_.ld) else np.zeros(2)
        bins = np.searchsorted(edges, ld, side="right")
        norm = resid / scale_f
        g = np.ones(3)
        for b in range(3):
            sel = bins == b
            if sel.sum() >= 2:
                g[b] = float(np.sqrt(np.nanmean(norm[sel] ** 2)))
        calib = np.abs(norm) / g[bins][:, None]
        return {
            "chosen": chosen,
            "scores": scores,
            "n_held_out": len(obs),
            "scale": scale_f,
            "dose_edges": edges,
            "dose_factor": g,
            "calibration": calib[np.isfinite(calib)],
        }

    def _fit_model(self) -> None:
        check_level(self.level)
        seen = self._choose("seen", *self._cv_seen())
        unseen = self._choose("unseen", *self._cv_unseen())
        self._families = {"seen": seen, "unseen": unseen}
        self.selection_ = {
            fam: {"chosen": v["chosen"], "n_held_out": v["n_held_out"], "scores": v["scores"]}
            for fam, v in self._families.items()
        }
        logger.info(
            "aivc-chem chose %s for measured compounds at new doses and %s for new compounds",
            seen["chosen"],
            unseen["chosen"],
        )

    def _predict(self, compounds, ld, seen, smiles):
        out = np.zeros((len(compounds), len(self.features_)))
        seen_arr = np.asarray(seen, bool)
        if seen_arr.any():
            idx = np.flatnonzero(seen_arr)
            cand = _seen_candidates(self.train_, [compounds[i] for i in idx], ld[idx])
            out[idx] = cand[self._families["seen"]["chosen"]]
        if (~seen_arr).any():
            idx = np.flatnonzero(~seen_arr)
            chosen = self._families["unseen"]["chosen"]
            cand = _unseen_candidates(self.train_, [smiles[i] for i in idx], ld[idx], only=chosen)
            out[idx] = cand[chosen]
        return out

    def predict_interval(
        self,
        compounds: Sequence[str] | str,
        doses: Sequence[float] | float,
        *,
        dose_unit: str = "uM",
        level: float | None = None,
    ) -> PredictionInterval:
        """Predicted changes with split-conformal intervals at ``level`` (default ``self.level``)."""
        level = self.level if level is None else level
        check_level(level)
        compounds, um, seen, smiles = self._request(compounds, doses, dose_unit)
        ld = np.log10(um)
        delta = self._predict(compounds, ld, seen, smiles)
        half = np.zeros_like(delta)
        for i, s in enumerate(seen):
            fam = self._families["seen" if s else "unseen"]
            if "scale" not in fam:
                half[i] = np.inf
                continue
            q = conformal_quantile(fam["calibration"], level)
            b = int(np.searchsorted(fam["dose_edges"], ld[i], side="right"))
            half[i] = q * fam["scale"] * fam["dose_factor"][b]
        return PredictionInterval.from_arrays(
            delta,
            delta - half,
            delta + half,
            conditions=self._labels(compounds, um),
            genes=self.features_,
            level=level,
        )

    def _model_meta(self) -> dict[str, Any]:
        return {"selection": self.selection_}

    def _set_model_meta(self, meta: dict[str, Any]) -> None:
        # refitting on the stored table in _set_state reproduces the choice and calibration exactly
        stored = meta.get("selection", {})
        for fam, v in stored.items():
            if v.get("chosen") != self.selection_[fam]["chosen"]:
                msg = f"The saved model chose {v.get('chosen')!r} for {fam} compounds; refitting gave {self.selection_[fam]['chosen']!r}."
                raise DataValidationError(msg)


#: Every chemical model by name: the baselines and aivc-chem.
CHEMICAL_MODELS: dict[str, type[ChemicalModel]] = {
    cls.name: cls
    for cls in (
        VehicleChem,
        TrainMeanChem,
        NearestCompound,
        RidgeFingerprint,
        DoseInterpolation,
        ChemicalManipulator,
    )
}


def dose_response(
    model: ChemicalModel,
    compound: str,
    doses: Sequence[float],
    *,
    dose_unit: str = "uM",
    level: float = 0.9,
) -> pd.DataFrame:
    """One compound's predicted change at each dose, long: ``compound, dose, dose_unit, feature, delta, lower, upper``.

    Models without intervals (the baselines) give NaN bounds.
    """
    doses = [float(d) for d in doses]
    if isinstance(model, ChemicalManipulator):
        delta, lower, upper = model.predict_interval(
            [compound] * len(doses), doses, dose_unit=dose_unit, level=level
        ).arrays()
    else:
        delta = model.predict_delta([compound] * len(doses), doses, dose_unit=dose_unit).to_numpy()
        lower = upper = np.full_like(delta, np.nan)
    n_f = len(model.features_)
    return pd.DataFrame(
        {
            "compound": compound,
            "dose": np.repeat(doses, n_f),
            "dose_unit": dose_unit,
            "feature": np.tile(model.features_, len(doses)),
            "delta": delta.ravel(),
            "lower": lower.ravel(),
            "upper": upper.ravel(),
        }
    )
