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
import json
import sys
from pathlib import Path

TASKS = (
    ("unseen-cell-type", "kang2018"),
    ("combinations", "norman2019_subset"),
    ("unseen-single", "papalexi2021"),
)


def main(root: str) -> int:
    from aivc.data import load, prepare
    from aivc.data._registry import schema_of
    from aivc.instruments import PerturbModel

    for task, dataset in TASKS:
        raw = load(dataset)
        adata, schema = prepare(raw, schema_of(raw))
        labels = adata.obs[schema.perturbation_key].astype(str).to_numpy()
        is_control = labels == schema.control_label
        splits = json.loads((Path(root) / task / "splits.json").read_text())
        chosen: collections.Counter[str] = collections.Counter()
        for split in (s for s in splits if s["seed"] == 0):
            train = split["train_perturbations"]
            if isinstance(train, str):  # long lists are stored as their text form
                train = json.loads(train.replace("'", '"'))
            keep = (
                is_control | adata.obs[schema.perturbation_key].astype(str).isin(train).to_numpy()
            )
            if split.get("test_contexts"):
                ctx = adata.obs[schema.context_key].astype(str).isin(split["test_contexts"])
                keep &= ~(ctx.to_numpy() & ~is_control)
            model = PerturbModel(seed=0).fit(adata[keep].copy(), schema)
            choice = model.selection_.get("detection", {})
            chosen[str(choice.get("chosen"))] += 1
            print(task, split["name"], choice, flush=True)
        print(task, "chosen:", dict(chosen), flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__)
        raise SystemExit(2)
    raise SystemExit(main(sys.argv[1]))
