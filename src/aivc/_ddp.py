"""Training a model on several CPU processes with PyTorch DistributedDataParallel (gloo).

:func:`train_on_processes` starts ``world`` processes (``torch.multiprocessing``,
spawn), joins them in a gloo process group (rendezvous through a file in a
temporary folder) and calls ``model.<method>(*args, rank=r, world=world)`` in
each; the method wraps its module in ``DistributedDataParallel`` when
``world > 1``, trains on its share of every batch and returns
``(module, history)``. Rank 0 saves the weights (safetensors); every rank
writes a checksum of its own, and the run fails unless they are all equal
(DistributedDataParallel averages the gradients, so the ranks take the same
steps). Each process gets ``threads`` intra-op threads.

The processes are spawned, so a script that trains this way must start its
work under ``if __name__ == "__main__":`` (each process imports the script).
A process that waits on a dead one gives up after :data:`WAIT`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["WAIT", "train_on_processes"]

#: Longest wait of a process on the others (joining the group, one gradient exchange).
WAIT = datetime.timedelta(minutes=10)


def _rank_main(
    rank: int, model: Any, method: str, args: tuple[Any, ...], world: int, folder: str, threads: int
) -> None:
    """One training process (started by :func:`train_on_processes`)."""
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file

    torch.set_num_threads(max(1, threads))
    dist.init_process_group(
        "gloo",
        init_method=f"file://{folder}/rendezvous",
        rank=rank,
        world_size=world,
        timeout=WAIT,
    )
    try:
        t0 = time.perf_counter()
        module, history = getattr(model, method)(*args, rank=rank, world=world)
        seconds = time.perf_counter() - t0
        state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
        digest = hashlib.sha256()
        for k in sorted(state):
            digest.update(state[k].numpy().tobytes())
        if rank == 0:
            save_file(state, f"{folder}/state.safetensors")
        Path(folder, f"rank{rank}.json").write_text(
            json.dumps({"checksum": digest.hexdigest(), "history": history, "seconds": seconds})
        )
        dist.barrier()
    finally:
        dist.destroy_process_group()


def train_on_processes(
    model: Any, method: str, args: tuple[Any, ...], world: int, *, threads: int = 1
) -> tuple[dict[str, Any], list[float], float]:
    """Run ``model.<method>(*args, rank=r, world=world)`` on ``world`` processes.

    Returns
    -------
    Rank 0's weights (a state dict of tensors), its loss history and its
    training seconds.

    Raises
    ------
    RuntimeError
        The processes ended with different weights.
    """
    import torch
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory(prefix="aivc-ddp-") as tmp:
        torch.multiprocessing.start_processes(
            _rank_main,
            args=(model, method, args, int(world), tmp, int(threads)),
            nprocs=int(world),
            join=True,
            start_method="spawn",
        )
        folder = Path(tmp)
        sums = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(int(world))]
        state = load_file(str(folder / "state.safetensors"))
    if any(s["checksum"] != sums[0]["checksum"] for s in sums):
        msg = f"The {world} training processes ended with different weights: {sums}."
        raise RuntimeError(msg)
    return state, list(sums[0]["history"]), float(sums[0]["seconds"])
