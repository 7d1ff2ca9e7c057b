"""Which cell generator ``aivc-perturb`` chooses on each benchmark split (``cell_detection="auto"``).

Usage: AIVC_DATA_DIR=... python benchmarks/detection_choice.py RESULTS_DIR

Reads ``RESULTS_DIR/<task>/splits.json`` written by ``aivc benchmark <task> --out
RESULTS_DIR/<task>`` for unseen-cell-type, combinations and unseen-single, fits
the default model on the training view of each of seed 0's splits and prints
the chosen detection threshold with the training-condition overlap of every
candidate, then a count per task.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

TASKS = (
    ("unseen-cell-type", "kang2018"),
    ("combinations", "norman2019_subset"),
    ("unseen-single", "papalexi2021"),
)


def main(root: str) -> int:
    import numpy as np

    from aivc.data import load, prepare
    from aivc.data._registry import schema_of
    from aivc.data.splits import load_splits
    from aivc.instruments import PerturbModel

    for task, dataset in TASKS:
        raw = load(dataset)
        adata, schema = prepare(raw, schema_of(raw))
        labels = adata.obs[schema.perturbation_key].astype(str).to_numpy()
        is_control = labels == schema.control_label
        chosen: collections.Counter[str] = collections.Counter()
        for split in (s for s in load_splits(Path(root) / task / "splits.json") if s.seed == 0):
            keep = is_control | np.isin(labels, list(split.train_perturbations))
            if split.test_contexts:
                ctx = adata.obs[schema.context_key].astype(str).to_numpy()
                keep &= ~(np.isin(ctx, list(split.test_contexts)) & ~is_control)
            model = PerturbModel(seed=0).fit(adata[keep].copy(), schema)
            choice = model.selection_.get("detection", {})
            chosen[str(choice.get("chosen"))] += 1
            print(task, split.name, choice, flush=True)
        print(task, "chosen:", dict(chosen), flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__)
        raise SystemExit(2)
    raise SystemExit(main(sys.argv[1]))
