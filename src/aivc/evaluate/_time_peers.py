"""Published temporal models run as peers of ``aivc-time``, each in its own environment.

:class:`PrescientPeer` is PRESCIENT (``aivc peers install prescient``): it
shares the representation of every temporal model (fitted by
:class:`~aivc.instruments._temporal.TemporalModel` on the training cells),
hands the training populations to the peer script ``prescient_course`` as
``.npy`` files, and reads the predicted cells back (never a pickle). It is
trained when a time is asked for, since PRESCIENT's simulation needs only the
trained potential and the first population.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from aivc.evaluate._peer_envs import peer_status, run_peer
from aivc.instruments._temporal import TemporalModel

__all__ = ["BENCHMARK_OPTIONS", "TIME_PEERS", "PrescientPeer", "installed_time_peers"]

logger = logging.getLogger(__name__)

#: Seconds after which one PRESCIENT fit is stopped.
PEER_TIMEOUT = 3600.0


class PrescientPeer(TemporalModel):
    """PRESCIENT, trained from scratch on the training time points, simulated to the query time.

    Parameters
    ----------
    train_epochs, pretrain_epochs
        PRESCIENT's training and pretraining epochs (``None``: its defaults,
        2,500 and 500).
    **kwargs
        The representation's options (see :class:`TemporalModel`).
    """

    name = "prescient"

    def __init__(
        self,
        *,
        train_epochs: int | None = None,
        pretrain_epochs: int | None = None,
        **kwargs: int,
    ) -> None:
        super().__init__(**kwargs)
        self.train_epochs = train_epochs
        self.pretrain_epochs = pretrain_epochs

    def _predict(self, time: float, n: int, rng: np.random.Generator) -> np.ndarray:
        cells = np.concatenate([self.populations_[float(t)] for t in self.times_])
        times = np.repeat(self.times_, [len(self.populations_[float(t)]) for t in self.times_])
        with tempfile.TemporaryDirectory(prefix="aivc-prescient-") as tmp:
            folder = Path(tmp)
            np.save(folder / "cells.npy", cells.astype(np.float32), allow_pickle=False)
            np.save(folder / "times.npy", times.astype(np.float64), allow_pickle=False)
            args = [
                "--cells", str(folder / "cells.npy"),
                "--times", str(folder / "times.npy"),
                "--query", repr(float(time)),
                "--n-cells", str(int(n)),
                "--out", str(folder / "predicted.npy"),
                "--workdir", str(folder / "run"),
                "--seed", str(int(self.seed)),
            ]  # fmt: skip
            if self.train_epochs is not None:
                args += ["--train-epochs", str(int(self.train_epochs))]
            if self.pretrain_epochs is not None:
                args += ["--pretrain-epochs", str(int(self.pretrain_epochs))]
            run_peer("prescient", "prescient_course", args, timeout=PEER_TIMEOUT)
            predicted = np.load(folder / "predicted.npy", allow_pickle=False)
        if predicted.shape != (n, cells.shape[1]) or not np.isfinite(predicted).all():
            msg = (
                f"PRESCIENT returned {predicted.shape} cells (finite: "
                f"{bool(np.isfinite(predicted).all())}); expected {(n, cells.shape[1])}."
            )
            raise RuntimeError(msg)
        return predicted.astype(np.float64)


#: The temporal peers by name.
TIME_PEERS: dict[str, type[TemporalModel]] = {PrescientPeer.name: PrescientPeer}

#: Options the time benchmark gives each peer: a CPU budget, not tuned. PRESCIENT trains for a
#: tenth of its default epochs (250 and 50 of pretraining instead of 2,500 and 500): one fit on
#: the myoblast course then takes about 100 s on 2 cores, the default about 16 minutes.
BENCHMARK_OPTIONS: dict[str, dict[str, int]] = {
    "prescient": {"train_epochs": 250, "pretrain_epochs": 50}
}


def installed_time_peers() -> tuple[list[str], dict[str, str]]:
    """The temporal peers whose environments are ready, and why each other one does not run."""
    ready, missing = [], {}
    for name in TIME_PEERS:
        if peer_status(name).installed:
            ready.append(name)
        else:
            missing[name] = f"not installed (aivc peers install {name})"
    return ready, missing
