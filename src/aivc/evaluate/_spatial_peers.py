"""Published spatial models run as peers, each in its own environment.

:func:`tangram_impute` (Tangram's imputation of unmeasured genes),
:func:`cellcharter_domains` (CellCharter's spatial domains) and
:func:`novae_domains` (Novae's spatial domains) write their inputs to
temporary ``.h5ad`` files, run the peer's script with
:func:`aivc.evaluate._peer_envs.run_peer` and read the ``.npy`` result back
(never a pickle). Their environments are made with ``aivc peers install
tangram``, ``aivc peers install cellcharter`` and ``aivc peers install novae``.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aivc._labels import check_known
from aivc.evaluate._peer_envs import run_peer

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["cellcharter_domains", "novae_domains", "tangram_impute"]

logger = logging.getLogger(__name__)


def _check_counts(adata: AnnData, what: str) -> None:
    """Raise unless ``adata.X`` holds raw counts (its first stored values are checked)."""
    from aivc.data._expression import _sample_values

    values = _sample_values(adata.X)
    bad = ~np.isfinite(values) | (values < 0) | (np.abs(values - np.round(values)) > 1e-6)
    if bad.any():
        msg = (
            f"The {what}'s X must hold raw counts (non-negative integers); it holds other "
            f"values (e.g. {values[bad][:3].tolist()}). Put the raw counts in X "
            "(e.g. adata.X = adata.layers['counts'])."
        )
        raise ValueError(msg)


def _write_h5ad(adata: AnnData, path: Path, *, obs: dict[str, np.ndarray] | None = None) -> None:
    """Write X, the names and the given obs columns (and ``obsm['spatial']``) of ``adata``."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    x = adata.X
    x = sp.csr_matrix(x, dtype=np.float32) if sp.issparse(x) else np.asarray(x, dtype=np.float32)
    out = ad.AnnData(
        X=x,
        obs=pd.DataFrame(
            {k: pd.Categorical(v) for k, v in (obs or {}).items()},
            index=pd.Index(adata.obs_names.astype(str)),
        ),
        var=pd.DataFrame(index=pd.Index(adata.var_names.astype(str))),
    )
    if "spatial" in adata.obsm:
        out.obsm["spatial"] = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    out.write_h5ad(path)


def _read_npy(path: Path, shape: tuple[int, ...], what: str) -> np.ndarray:
    if not path.is_file():
        msg = f"The {what} peer script wrote no result to {path}; its output is in the debug log."
        raise RuntimeError(msg)
    out = np.load(path, allow_pickle=False)
    if out.shape != shape:
        msg = f"The {what} peer script wrote an array of shape {out.shape}; expected {shape}."
        raise RuntimeError(msg)
    return out


def _domain_inputs(
    adata: AnnData, n_clusters: int, section_key: str | None, caller: str
) -> dict[str, np.ndarray]:
    """Check the inputs of a spatial-domain peer; the obs columns to write (the sections)."""
    if "spatial" not in adata.obsm:
        msg = (
            f"{caller} needs the cell coordinates in adata.obsm['spatial']; "
            f"found obsm keys {sorted(adata.obsm)}."
        )
        raise ValueError(msg)
    if not 1 < n_clusters < adata.n_obs:
        msg = (
            f"The 'n_clusters' parameter of {caller} must be between 2 and the "
            f"number of cells less one ({adata.n_obs - 1}). Got {n_clusters} instead."
        )
        raise ValueError(msg)
    obs = {}
    if section_key is not None:
        check_known([section_key], set(adata.obs.columns), what="obs column")
        obs["section"] = adata.obs[section_key].astype(str).to_numpy()
    _check_counts(adata, "spatial data")
    return obs


def tangram_impute(
    spatial: AnnData,
    reference: AnnData,
    targets: list[str],
    *,
    seed: int = 0,
    epochs: int = 500,
) -> np.ndarray:
    """Tangram's imputation of genes the spatial data did not measure, trained from scratch.

    Runs in the ``tangram`` peer environment (``aivc peers install
    tangram``), on CPU: Tangram maps every reference cell onto the spatial
    cells in ``"cells"`` mode, trained on the genes the two share, and
    projects the reference's expression of ``targets`` onto each spatial cell
    (its documented ``pp_adatas``, ``map_cells_to_space``, ``project_genes``
    workflow; the reference is normalised to equal totals first, as in
    Tangram's tutorial).

    Parameters
    ----------
    spatial
        Spatial cells, raw counts in ``X`` (e.g. a gene panel).
    reference
        Single-cell reference, raw counts in ``X``; it must hold every target.
    targets
        Genes to impute, each a gene of ``reference``.
    seed
        Seed of Tangram's initial mapping.
    epochs
        Training epochs (Tangram's tutorial uses 500).

    Returns
    -------
    np.ndarray
        Cells of ``spatial`` x ``targets``, float32: the projected expression
        on the scale of the normalised reference (each reference cell scaled to
        the reference's median total count; apply ``np.log1p`` for a log
        scale). A target no reference cell expresses is 0.

    Raises
    ------
    ValueError
        A target is not a gene of the reference, the two share no gene, or an
        ``X`` does not hold raw counts.
    aivc.evaluate._peer_envs.PeerNotInstalledError
        The environment is missing: run ``aivc peers install tangram``.
    aivc.evaluate._peer_envs.PeerRunError
        Tangram failed; the message quotes its last lines.
    """
    targets = [str(g) for g in targets]
    if not targets:
        msg = "tangram_impute needs at least one target gene. Got none."
        raise ValueError(msg)
    check_known(
        targets, set(reference.var_names), what="target gene", known_as="genes of the reference"
    )
    if not set(spatial.var_names) & set(reference.var_names):
        msg = (
            "The spatial data and the reference share no gene, so Tangram has nothing to train "
            "on; give both the same gene names (e.g. symbols)."
        )
        raise ValueError(msg)
    if epochs < 1:
        msg = f"The 'epochs' parameter of tangram_impute must be at least 1. Got {epochs} instead."
        raise ValueError(msg)
    _check_counts(spatial, "spatial data")
    _check_counts(reference, "reference")
    with tempfile.TemporaryDirectory(prefix="aivc-tangram-") as tmp:
        d = Path(tmp)
        _write_h5ad(spatial, d / "spatial.h5ad")
        _write_h5ad(reference, d / "reference.h5ad")
        (d / "targets.txt").write_text("\n".join(targets) + "\n")
        out = d / "imputed.npy"
        logger.info(
            "running Tangram (%d spatial cells, %d reference cells, %d targets, %d epochs)",
            spatial.n_obs,
            reference.n_obs,
            len(targets),
            epochs,
        )
        run_peer(
            "tangram",
            "tangram_impute",
            [
                "--spatial", str(d / "spatial.h5ad"),
                "--reference", str(d / "reference.h5ad"),
                "--targets", str(d / "targets.txt"),
                "--genes-out", str(out),
                "--epochs", str(epochs),
                "--seed", str(seed),
            ],
        )  # fmt: skip
        return _read_npy(out, (spatial.n_obs, len(targets)), "tangram_impute").astype(
            np.float32, copy=False
        )


def cellcharter_domains(
    adata: AnnData,
    n_clusters: int,
    *,
    section_key: str | None = None,
    seed: int = 0,
) -> np.ndarray:
    """CellCharter's spatial domains, run in the ``cellcharter`` peer environment.

    As CellCharter's documentation does: squidpy's Delaunay graph of the
    cells of each section (its longest links removed), CellCharter's
    aggregation of each cell's features with those of its neighbours up to
    three hops away, and its Gaussian mixture with ``n_clusters`` components.
    The cell features are 50 principal components of log-normalised expression
    (in place of scVI's latent space, which would be slow on CPU).

    Parameters
    ----------
    adata
        Spatial cells: raw counts in ``X``, coordinates in ``obsm["spatial"]``.
    n_clusters
        Number of domains.
    section_key
        ``obs`` column with the section of each cell (graphs never link two
        sections); ``None``: one section.
    seed
        Seed of the PCA and the mixture.

    Returns
    -------
    np.ndarray
        The domain of each cell, integers from 0 to ``n_clusters - 1``.

    Raises
    ------
    ValueError
        No coordinates, an unknown ``section_key``, fewer cells than domains,
        or an ``X`` without raw counts.
    aivc.evaluate._peer_envs.PeerNotInstalledError
        The environment is missing: run ``aivc peers install cellcharter``.
    aivc.evaluate._peer_envs.PeerRunError
        CellCharter failed; the message quotes its last lines.
    """
    obs = _domain_inputs(adata, n_clusters, section_key, "cellcharter_domains")
    logger.info("running CellCharter (%d cells, %d domains)", adata.n_obs, n_clusters)
    return _run_domains("cellcharter", adata, obs, n_clusters, section_key, seed, [])


def _run_domains(
    peer: str,
    adata: AnnData,
    obs: object,
    n_clusters: int,
    section_key: str | None,
    seed: int,
    extra: list[str],
) -> np.ndarray:
    """Run the peer's ``<peer>_domains`` script on ``adata`` and read its labels back."""
    with tempfile.TemporaryDirectory(prefix=f"aivc-{peer}-") as tmp:
        d = Path(tmp)
        _write_h5ad(adata, d / "data.h5ad", obs=obs)
        out = d / "labels.npy"
        args = [
            "--data", str(d / "data.h5ad"),
            "--n-clusters", str(n_clusters),
            "--labels-out", str(out),
            "--seed", str(seed),
            *extra,
        ]  # fmt: skip
        if section_key is not None:
            args += ["--section-key", "section"]
        run_peer(peer, f"{peer}_domains", args)
        return _read_npy(out, (adata.n_obs,), f"{peer}_domains").astype(np.int64, copy=False)


#: Fewest training epochs of Novae: its learning-rate schedule warms up for 2 epochs.
_NOVAE_MIN_EPOCHS = 3


def novae_domains(
    adata: AnnData,
    n_clusters: int,
    *,
    section_key: str | None = None,
    seed: int = 0,
    epochs: int = 10,
) -> np.ndarray:
    """Novae's spatial domains from a model trained from scratch, in the ``novae`` peer environment.

    Follows Novae's documented workflow for a new model, on CPU and without
    pretrained weights: Novae's Delaunay graph of the cells of each section
    (links longer than the 99th percentile removed), a model built from the
    data (``novae.Novae(adata)``), ``fit`` for at most ``epochs`` epochs (with
    Novae's early stopping), ``compute_representations`` and
    ``assign_domains`` with ``n_domains=n_clusters``. Counts are
    log-normalised first, as Novae's automatic preprocessing does. A cell Novae
    leaves without a domain (no usable neighbourhood) takes the domain of its
    nearest cell of the same section.

    Parameters
    ----------
    adata
        Spatial cells: raw counts in ``X``, coordinates in ``obsm["spatial"]``.
    n_clusters
        Number of domains.
    section_key
        ``obs`` column with the section of each cell (graphs never link two
        sections, and Novae keeps a prototype queue per section); ``None``: one
        section.
    seed
        Seed of Python's, numpy's and torch's generators in the peer process.
    epochs
        Most training epochs, at least 3.

    Returns
    -------
    np.ndarray
        The domain of each cell, integers from 0 to ``n_clusters - 1``.

    Raises
    ------
    ValueError
        No coordinates, an unknown ``section_key``, fewer cells than domains,
        fewer than 3 epochs, or an ``X`` without raw counts.
    aivc.evaluate._peer_envs.PeerNotInstalledError
        The environment is missing: run ``aivc peers install novae``.
    aivc.evaluate._peer_envs.PeerRunError
        Novae failed (e.g. no level of its prototype tree gives ``n_clusters``
        domains); the message quotes its last lines.
    """
    obs = _domain_inputs(adata, n_clusters, section_key, "novae_domains")
    if epochs < _NOVAE_MIN_EPOCHS:
        msg = (
            f"The 'epochs' parameter of novae_domains must be at least {_NOVAE_MIN_EPOCHS} "
            f"(Novae warms its learning rate up for 2 epochs). Got {epochs} instead."
        )
        raise ValueError(msg)
    logger.info(
        "running Novae (%d cells, %d domains, at most %d epochs)", adata.n_obs, n_clusters, epochs
    )
    return _run_domains(
        "novae", adata, obs, n_clusters, section_key, seed, ["--epochs", str(epochs)]
    )
