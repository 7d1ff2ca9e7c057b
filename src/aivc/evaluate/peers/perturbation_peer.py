"""A published perturbation model trained from scratch on CPU, then asked for held-out conditions.

Standalone: run with the python of the peer's own environment (``aivc peers
install biolord | state | cellflow``); it imports numpy, pandas, anndata and
the peer's package, never aivc.

Inputs (written by aivc):

* ``--train train.h5ad``: training cells, log-normalised expression in ``X``,
  ``obs["perturbation"]`` (``--control-label`` for control cells) and
  ``obs["context"]``;
* ``--control control.h5ad``: control cells of every requested context;
* ``--query query.csv``: ``perturbation``, ``context``, ``n_cells`` per
  requested condition.

Outputs in ``--out``: ``cells.npy`` (float32, the generated cells of every
query stacked in query order) and ``info.json`` (peer version, configuration,
training seconds, steps).

How each peer is run:

* ``biolord``: ``biolord.Biolord`` with ``perturbation`` and ``context`` as
  categorical attributes, a normal likelihood on log expression, the module
  and optimiser settings of biolord's published perturbation examples, 10%
  of the cells for validation, no checkpointing; a condition's cells are the
  decoded means of control cells of its context given the perturbation.
* ``state``: State's transition model (``state.tx.models.state_transition``)
  built from its own ``state_sm`` configuration shrunk for CPU, trained with
  Lightning on sets of cells, each a set of control cells of one context
  paired with a set of perturbed cells of the same context and perturbation;
  perturbations are one-hot, the context is a one-hot batch covariate.
* ``cellflow``: ``cellflow.model.CellFlow`` on 50 principal components of the
  training cells, one-hot perturbation and context embeddings, its default
  flow-matching solver; generated components are mapped back to genes.

Usage::

    python perturbation_peer.py --peer biolord --train train.h5ad --control control.h5ad \
        --query query.csv --control-label control --out OUTDIR [--steps N] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from importlib import metadata
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _dense(x: object) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float32)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def _sources(control: ad.AnnData, query: pd.DataFrame, seed: int) -> list[np.ndarray]:
    """For every query row, the indices of the control cells it starts from (seeded)."""
    rng = np.random.default_rng(seed)
    ctx = control.obs["context"].astype(str).to_numpy()
    out = []
    for c, n in zip(query["context"].astype(str), query["n_cells"].astype(int), strict=True):
        pool = np.flatnonzero(ctx == c)
        out.append(rng.choice(pool, n, replace=len(pool) < n))
    return out


# ------------------------------------------------------------------------------------- biolord
#: biolord's module and optimiser settings of its published perturbation examples.
BIOLORD_MODULE = {
    "decoder_width": 1024,
    "decoder_depth": 4,
    "attribute_nn_width": 512,
    "attribute_nn_depth": 2,
    "gene_likelihood": "normal",
    "reconstruction_penalty": 1e2,
    "unknown_attribute_penalty": 1e1,
    "unknown_attribute_noise_param": 1e-1,
    "attribute_dropout_rate": 0.1,
    "use_batch_norm": False,
    "use_layer_norm": False,
}
BIOLORD_PLAN = {
    "n_epochs_warmup": 0,
    "latent_lr": 1e-4,
    "latent_wd": 1e-4,
    "decoder_lr": 1e-4,
    "decoder_wd": 1e-4,
    "attribute_nn_lr": 1e-2,
    "attribute_nn_wd": 4e-8,
    "step_size_lr": 45,
    "cosine_scheduler": True,
    "scheduler_final_lr": 1e-5,
}


def biolord_epochs(n_obs: int, steps: int | None) -> int:
    """``steps``, or biolord's own rule for the number of epochs when none is given (its ``train`` default)."""
    return int(steps) if steps is not None else int(min(round(20000 / n_obs * 400), 400))


def train_biolord(
    train: ad.AnnData, module_params: dict, plan: dict, *, epochs: int, name: str
) -> tuple[object, float]:
    """A ``biolord.Biolord`` on ``train`` (set up already, ``split`` column), trained on CPU; and its seconds."""
    import biolord

    model = biolord.Biolord(
        adata=train,
        n_latent=32,
        model_name=name,
        module_params=module_params,
        train_classifiers=False,
        split_key="split",
    )
    t0 = time.perf_counter()
    model.train(
        max_epochs=epochs,
        batch_size=512,
        plan_kwargs=plan,
        early_stopping=False,
        check_val_every_n_epoch=max(1, epochs),
        enable_checkpointing=False,
        enable_progress_bar=False,
        accelerator="cpu",
        logger=False,
    )
    return model, time.perf_counter() - t0


def run_biolord(
    train: ad.AnnData,
    control: ad.AnnData,
    query: pd.DataFrame,
    *,
    control_label: str,
    steps: int | None,
    seed: int,
) -> tuple[np.ndarray, dict]:
    import biolord
    import torch

    epochs = biolord_epochs(train.n_obs, steps)
    train = train.copy()
    train.X = _dense(train.X)
    rng = np.random.default_rng(seed)
    train.obs["split"] = np.where(rng.random(train.n_obs) < 0.1, "test", "train")
    train.obs["split"] = train.obs["split"].astype("category")
    for key in ("perturbation", "context"):
        train.obs[key] = train.obs[key].astype(str).astype("category")
    biolord.Biolord.setup_anndata(
        train,
        ordered_attributes_keys=[],
        categorical_attributes_keys=["perturbation", "context"],
        retrieval_attribute_key=None,
    )
    module_params = {**BIOLORD_MODULE, "n_latent_attribute_categorical": 4, "seed": seed}
    plan = dict(BIOLORD_PLAN)
    model, seconds = train_biolord(train, module_params, plan, epochs=epochs, name="aivc_peer")
    cats = {k: train.obs[k].cat.categories for k in ("perturbation", "context")}
    blocks = []
    for idx, (p, c) in zip(
        _sources(control, query, seed),
        zip(query["perturbation"], query["context"], strict=True),
        strict=True,
    ):
        src = ad.AnnData(X=_dense(control.X[idx]), var=train.var[[]].copy())
        src.obs["perturbation"] = pd.Categorical(
            [str(p)] * len(idx), categories=cats["perturbation"]
        )
        src.obs["context"] = pd.Categorical([str(c)] * len(idx), categories=cats["context"])
        src.obs["split"] = pd.Categorical(["test"] * len(idx), categories=["test", "train"])
        src.obs["_indices"] = np.arange(len(idx))  # the cell index field biolord registers
        if src.obs["context"].isna().any():
            _fail(
                f"the context {c!r} has no training cells; biolord needs it as a known attribute."
            )
        with torch.no_grad():
            mean, _ = model.predict(src)
        blocks.append(_dense(mean.X))
    config = {"n_latent": 32, "epochs": epochs, "batch_size": 512, **module_params, **plan}
    return np.concatenate(blocks), {"train_seconds": seconds, "steps": epochs, "config": config}


# ------------------------------------------------------------------------------------- State
#: State's ``state_sm`` model configuration shrunk for a CPU run (the rest is state_sm's own).
STATE_CPU = {
    "cell_set_len": 64,
    "hidden_dim": 128,
    "n_encoder_layers": 2,
    "n_decoder_layers": 2,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "head_dim": 32,
    "batch_size": 8,
    "lr": 1e-4,
    "steps": 1500,
}


def _state_config(n_genes: int) -> tuple[dict, dict]:
    """State's ``state_sm`` model and default training configurations, shrunk by :data:`STATE_CPU`."""
    from importlib import resources

    from omegaconf import OmegaConf

    folder = resources.files("state") / "configs"
    model = OmegaConf.load(str(folder / "model" / "state_sm.yaml"))
    training = OmegaConf.load(str(folder / "training" / "default.yaml"))
    kw = model.kwargs
    kw.cell_set_len = STATE_CPU["cell_set_len"]
    kw.hidden_dim = STATE_CPU["hidden_dim"]
    kw.n_encoder_layers = STATE_CPU["n_encoder_layers"]
    kw.n_decoder_layers = STATE_CPU["n_decoder_layers"]
    bb = kw.transformer_backbone_kwargs
    bb.intermediate_size = STATE_CPU["intermediate_size"]
    bb.num_hidden_layers = STATE_CPU["num_hidden_layers"]
    bb.num_attention_heads = STATE_CPU["num_attention_heads"]
    bb.num_key_value_heads = STATE_CPU["num_attention_heads"]
    bb.head_dim = STATE_CPU["head_dim"]
    model_cfg = OmegaConf.to_container(OmegaConf.create({"model": model}), resolve=True)["model"]
    training_cfg = OmegaConf.to_container(training, resolve=True)
    training_cfg["batch_size"] = STATE_CPU["batch_size"]
    training_cfg["lr"] = STATE_CPU["lr"]
    return model_cfg["kwargs"], training_cfg


def run_state(
    train: ad.AnnData,
    control: ad.AnnData,
    query: pd.DataFrame,
    *,
    control_label: str,
    steps: int | None,
    seed: int,
) -> tuple[np.ndarray, dict]:
    import lightning.pytorch as pl
    import torch
    from state.tx.utils import get_lightning_module

    torch.manual_seed(seed)
    n_steps = int(steps) if steps is not None else STATE_CPU["steps"]
    x = torch.from_numpy(_dense(train.X))
    genes = [str(g) for g in train.var_names]
    perts = sorted(set(train.obs["perturbation"].astype(str)))
    p_index = {p: i for i, p in enumerate(perts)}
    pert = train.obs["perturbation"].astype(str).to_numpy()
    ctx = train.obs["context"].astype(str).to_numpy()
    model_kw, training_cfg = _state_config(len(genes))
    s_len = int(model_kw["cell_set_len"])
    batch_size = int(training_cfg["batch_size"])
    # sentences: a set of perturbed cells of one (perturbation, context) paired with a random set of
    # control cells of the same context (State's "random" basal mapping); controls map to controls
    groups = [
        (p, c, np.flatnonzero((pert == p) & (ctx == c))) for p in perts for c in sorted(set(ctx))
    ]
    groups = [(p, c, rows) for p, c, rows in groups if len(rows)]
    ctrl_of = {c: np.flatnonzero((pert == control_label) & (ctx == c)) for c in set(ctx)}
    groups = [(p, c, rows) for p, c, rows in groups if len(ctrl_of[c])]
    if not groups:
        _fail(
            "no (perturbation, context) group of the training cells has control cells of its context."
        )
    weights = np.array([len(rows) for _, _, rows in groups], dtype=float)
    weights /= weights.sum()

    class Sentences(torch.utils.data.Dataset):
        def __init__(self, n: int) -> None:
            self.rng = np.random.default_rng(seed)
            self.n = n

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int) -> dict:
            p, c, rows = groups[self.rng.choice(len(groups), p=weights)]
            tgt = self.rng.choice(rows, s_len, replace=len(rows) < s_len)
            src = self.rng.choice(ctrl_of[c], s_len, replace=len(ctrl_of[c]) < s_len)
            onehot = torch.zeros(s_len, len(perts))
            onehot[:, p_index[p]] = 1.0
            return {"pert_emb": onehot, "ctrl_cell_emb": x[src], "pert_cell_emb": x[tgt]}

    data_cfg = {
        "embed_key": None,
        "output_space": "gene",
        "basal_mapping_strategy": "random",
        "control_pert": control_label,
    }
    var_dims = {
        "input_dim": len(genes),
        "output_dim": len(genes),
        "hvg_dim": len(genes),
        "gene_dim": len(genes),
        "pert_dim": len(perts),
        "batch_dim": len(set(ctx)),
        "gene_names": genes,
    }
    module = get_lightning_module("state", data_cfg, model_kw, training_cfg, var_dims)
    loader = torch.utils.data.DataLoader(
        Sentences(n_steps * batch_size), batch_size=batch_size, shuffle=False, num_workers=0
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=n_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=float(training_cfg.get("gradient_clip_val", 10)),
    )
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    seconds = time.perf_counter() - t0
    module.eval()
    blocks = []
    for idx, p in zip(
        _sources(control, query, seed), query["perturbation"].astype(str), strict=True
    ):
        if p not in p_index:
            _fail(f"State encodes perturbations one-hot; {p!r} has no training cells.")
        n = len(idx)
        n_sets = -(-n // s_len)
        rng = np.random.default_rng(seed)
        padded = np.concatenate([idx, rng.choice(idx, n_sets * s_len - n)]) if n % s_len else idx
        basal = torch.from_numpy(_dense(control.X[padded]))
        onehot = torch.zeros(len(padded), len(perts))
        onehot[:, p_index[p]] = 1.0
        with torch.no_grad():
            out = module.forward({"pert_emb": onehot, "ctrl_cell_emb": basal}, padded=True)
        blocks.append(out.numpy()[:n])
    config = {
        **model_kw,
        "training": {k: training_cfg[k] for k in ("batch_size", "lr")},
        "steps": n_steps,
    }
    return np.concatenate(blocks), {"train_seconds": seconds, "steps": n_steps, "config": config}


# ------------------------------------------------------------------------------------- CellFlow
#: CellFlow's network shrunk for a CPU run; the rest are ``prepare_model``'s defaults.
CELLFLOW_CPU = {
    "n_components": 50,
    "condition_embedding_dim": 64,
    "time_encoder_dims": (256, 256),
    "hidden_dims": (512, 512),
    "decoder_dims": (512, 512),
    "batch_size": 512,
    "steps": 2000,
}


def run_cellflow(
    train: ad.AnnData,
    control: ad.AnnData,
    query: pd.DataFrame,
    *,
    control_label: str,
    steps: int | None,
    seed: int,
) -> tuple[np.ndarray, dict]:
    import cellflow
    import optax

    n_steps = int(steps) if steps is not None else CELLFLOW_CPU["steps"]
    # CellFlow trains on (control, perturbed) population pairs per split covariate: controls of a
    # context with no perturbed training cells have no target, so they only serve as sources
    obs = train.obs.astype(str)
    treated = set(obs.loc[obs["perturbation"] != control_label, "context"])
    train = train[obs["context"].isin(treated).to_numpy()]
    x = _dense(train.X)
    mean = x.mean(axis=0)
    # principal components of the training cells (SVD of the centred matrix)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    basis = vt[: CELLFLOW_CPU["n_components"]].astype(np.float32)
    cells = ad.AnnData(X=x, obs=train.obs[["perturbation", "context"]].astype(str).copy())
    cells.obsm["X_pca"] = (x - mean) @ basis.T
    cells.obs["control"] = cells.obs["perturbation"] == control_label
    perts = sorted(set(cells.obs["perturbation"]))
    ctxs = sorted(set(cells.obs["context"]) | set(control.obs["context"].astype(str)))
    eye_p, eye_c = np.eye(len(perts), dtype=np.float32), np.eye(len(ctxs), dtype=np.float32)
    cells.uns["pert_emb"] = {p: eye_p[i] for i, p in enumerate(perts)}
    cells.uns["ctx_emb"] = {c: eye_c[i] for i, c in enumerate(ctxs)}
    for key in ("perturbation", "context"):
        cells.obs[key] = cells.obs[key].astype("category")
    cf = cellflow.model.CellFlow(cells, solver="otfm")
    cf.prepare_data(
        sample_rep="X_pca",
        control_key="control",
        perturbation_covariates={"perturbation": ["perturbation"]},
        perturbation_covariate_reps={"perturbation": "pert_emb"},
        sample_covariates=["context"],
        sample_covariate_reps={"context": "ctx_emb"},
        split_covariates=["context"],
    )
    cf.prepare_model(
        condition_embedding_dim=CELLFLOW_CPU["condition_embedding_dim"],
        time_encoder_dims=CELLFLOW_CPU["time_encoder_dims"],
        hidden_dims=CELLFLOW_CPU["hidden_dims"],
        decoder_dims=CELLFLOW_CPU["decoder_dims"],
        optimizer=optax.adam(1e-4),
        seed=seed,
    )
    t0 = time.perf_counter()
    cf.train(num_iterations=n_steps, batch_size=CELLFLOW_CPU["batch_size"], valid_freq=n_steps + 1)
    seconds = time.perf_counter() - t0
    blocks = []
    for i, (idx, (p, c)) in enumerate(
        zip(
            _sources(control, query, seed),
            zip(query["perturbation"].astype(str), query["context"].astype(str), strict=True),
            strict=True,
        )
    ):
        if p not in cells.uns["pert_emb"]:
            _fail(f"CellFlow is given perturbations one-hot here; {p!r} has no training cells.")
        src = ad.AnnData(X=_dense(control.X[idx]))
        src.obsm["X_pca"] = (src.X - mean) @ basis.T
        src.obs["control"] = True
        src.uns["pert_emb"], src.uns["ctx_emb"] = cells.uns["pert_emb"], cells.uns["ctx_emb"]
        src.obs["context"] = pd.Categorical([c] * len(idx))
        covariates = pd.DataFrame(
            {"perturbation": [p], "context": [c], "control": [False], "condition": [f"q{i}"]}
        ).astype({"perturbation": "category", "context": "category"})
        out = cf.predict(
            src, covariate_data=covariates, sample_rep="X_pca", condition_id_key="condition"
        )
        z = np.asarray(out[f"q{i}"], dtype=np.float32)
        blocks.append(np.clip(z @ basis + mean, 0.0, None))
    config = {
        **{k: list(v) if isinstance(v, tuple) else v for k, v in CELLFLOW_CPU.items()},
        "solver": "otfm",
        "optimizer": "adam(1e-4)",
        "steps": n_steps,
    }
    return np.concatenate(blocks), {"train_seconds": seconds, "steps": n_steps, "config": config}


# ------------------------------------------------------------------------------------- main
PEERS = {
    "biolord": (run_biolord, "biolord"),
    "state": (run_state, "arc-state"),
    "cellflow": (run_cellflow, "cellflow-tools"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", required=True, choices=sorted(PEERS))
    parser.add_argument("--train", required=True, type=Path)
    parser.add_argument("--control", required=True, type=Path)
    parser.add_argument("--query", required=True, type=Path)
    parser.add_argument("--control-label", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    random.seed(args.seed)
    np.random.seed(args.seed)  # noqa: NPY002 (the peers draw from numpy's global generator)
    train = ad.read_h5ad(args.train)
    control = ad.read_h5ad(args.control)
    query = pd.read_csv(args.query, dtype={"perturbation": str, "context": str})
    for name, frame in (("train", train.obs), ("control", control.obs)):
        for col in ("perturbation", "context"):
            if col not in frame:
                _fail(f"the {name} cells have no obs column {col!r}.")
    if list(train.var_names) != list(control.var_names):
        _fail("the training and control cells must hold the same genes in the same order.")
    missing = sorted(set(query["context"]) - set(control.obs["context"].astype(str)))
    if missing:
        _fail(f"no control cells for the queried contexts {missing}.")
    run_and_save(args, PEERS[args.peer], train, control, query, unit="cells")


def run_and_save(
    args: argparse.Namespace,
    peer: tuple,
    train: ad.AnnData,
    second: object,
    query: pd.DataFrame,
    *,
    unit: str,
) -> None:
    """Train and sample the peer ``(run, distribution)``, then write ``cells.npy`` and
    ``info.json`` (its version, seed and timings) under ``args.out``: the protocol's output."""
    run, dist = peer
    t0 = time.perf_counter()
    cells, info = run(
        train, second, query, control_label=args.control_label, steps=args.steps, seed=args.seed
    )
    info = {
        "peer": args.peer,
        "version": _version(dist),
        "torch": _version("torch"),
        "seed": args.seed,
        f"n_train_{unit}": int(train.n_obs),
        "total_seconds": time.perf_counter() - t0,
        **info,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / "cells.npy", np.asarray(cells, dtype=np.float32), allow_pickle=False)
    (args.out / "info.json").write_text(json.dumps(info, indent=1, default=str))
    print(
        f"{args.peer}: {len(query)} conditions, {cells.shape[0]} {unit}, {info['total_seconds']:.1f} s"
    )


if __name__ == "__main__":
    main()
