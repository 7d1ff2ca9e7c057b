"""PRESCIENT's population at an unmeasured time, trained from scratch on CPU.

Standalone: run with the python of the ``prescient`` peer environment
(``aivc peers install prescient``); it imports numpy, torch and prescient,
never aivc.

PRESCIENT (Yeo et al. 2021) learns a potential whose gradient is the drift of
a stochastic differential equation; trained by its own loop
(``prescient.train.run``: contrastive pretraining of the potential, then the
Sinkhorn loss between the cells simulated from the first time point and the
measured cells of every later training time point), with every option at the
default of its ``train_model`` command (one softplus layer of 500 units, 500
pretraining and 2,500 training epochs, step 0.1, noise 0.5, batches of 10% of
the cells, no growth weights) unless given here. Its simulator
(``prescient.simulate.simulate``) then carries cells of the first time point
forward to the query time with the last saved checkpoint, as PRESCIENT's own
validation of held-out time points does.

The cells come already in the space they are compared in (the benchmark's
principal components). Time is given to PRESCIENT in units of the mean gap
between consecutive measured time points, so a step of 0.1 is a tenth of a
typical gap whatever the data's unit (PRESCIENT's examples count time in days,
one unit between samples).

Usage::

    python prescient_course.py --cells X.npy --times T.npy --query 48 \
        --n-cells 250 --out PRED.npy --workdir DIR [--seed 0] \
        [--train-epochs 2500] [--pretrain-epochs 500]

``X.npy``: cells x dimensions (float); ``T.npy``: each cell's time (float);
``PRED.npy``: the predicted cells at ``--query`` (n-cells x dimensions, float32).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", required=True)
    parser.add_argument("--times", required=True)
    parser.add_argument("--query", required=True, type=float)
    parser.add_argument("--n-cells", required=True, type=int)
    parser.add_argument("--out", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-epochs", type=int, default=None)
    parser.add_argument("--pretrain-epochs", type=int, default=None)
    a = parser.parse_args(argv)

    import prescient.simulate as prescient_sim
    import prescient.train as prescient_train
    from prescient.commands.train_model import create_parser, init_config
    from prescient.train.model import AutoGenerator

    cells = np.load(a.cells, allow_pickle=False).astype(np.float32)
    times = np.load(a.times, allow_pickle=False).astype(np.float64)
    if cells.ndim != 2 or len(cells) != len(times):
        _fail(
            f"cells must be cells x dimensions with one time per cell; got {cells.shape} and {times.shape}."
        )
    measured = np.unique(times)
    if len(measured) < 2:
        _fail(f"PRESCIENT needs two or more time points; got {measured.tolist()}.")
    if a.query <= measured[0]:
        _fail(f"the query time {a.query:g} must come after the first time point {measured[0]:g}.")
    unit = float(np.diff(measured).mean())
    scaled = [(float(t) - float(measured[0])) / unit for t in measured]

    # PRESCIENT's own train_model options, at their defaults unless given here
    options = ["-i", "unused", "--out_dir", str(Path(a.workdir)), "--seed", str(a.seed)]
    if a.train_epochs is not None:
        options += ["--train_epochs", str(a.train_epochs)]
    if a.pretrain_epochs is not None:
        options += ["--pretrain_epochs", str(a.pretrain_epochs)]
    args = create_parser().parse_args(options)
    args.weight = "uniform"
    x = [torch.from_numpy(cells[times == t]) for t in measured]

    def init_task(args: argparse.Namespace):
        args.out_dir = os.path.join(args.out_dir, f"seed_{args.seed}")
        config = init_config(args)
        config.x_dim = cells.shape[1]
        config.t = scaled[-1] - scaled[0]
        # PRESCIENT indexes its populations by position: the first is the start
        config.start_t = 0
        config.train_t = list(range(1, len(measured)))
        w = {(scaled[0], s): torch.ones(len(x[0]), dtype=torch.float64) for s in scaled[1:]}
        return x, scaled, w, config

    prescient_train.run(args, init_task)
    out_dir = Path(a.workdir) / f"seed_{a.seed}"
    config = argparse.Namespace(**torch.load(out_dir / "config.pt"))
    net = AutoGenerator(config)
    # the last epoch's checkpoint, as PRESCIENT's simulate command uses (saved every 100
    # epochs); the lowest-loss one when training was shorter than that
    saved = sorted(out_dir.glob("train.epoch_*.pt"))
    state = torch.load(saved[-1] if saved else out_dir / "train.best.pt", map_location="cpu")
    net.load_state_dict(state["model_state_dict"])

    start = cells[times == measured[0]].astype(np.float64)
    steps = round((a.query - float(measured[0])) / unit / config.train_dt)
    per_sim = min(a.n_cells, len(start))
    sims = prescient_sim.simulate(
        start,
        np.zeros(len(start)),
        np.zeros(len(start)),
        None,
        net,
        config,
        math.ceil(a.n_cells / per_sim),
        per_sim,
        steps,
        torch.device("cpu"),
        0,
        None,
    )
    final = np.concatenate([s[-1] for s in sims])[: a.n_cells]
    np.save(a.out, final.astype(np.float32), allow_pickle=False)


if __name__ == "__main__":
    main()
