"""Evaluation that cannot flatter: metrics, cell-eval, scaled scores and the benchmark tasks.

Every benchmark task lives in :mod:`aivc.evaluate.tasks` and runs through
:func:`run_task` (``aivc benchmark TASK``); :func:`list_tasks` names them all.
"""

from __future__ import annotations

from aivc.evaluate._celleval import CELL_EVAL_METRICS, cell_eval_metrics
from aivc.evaluate._memory import ResourceMeter
from aivc.evaluate._metrics import (
    METRICS,
    MetricInfo,
    centroid_accuracy,
    direction_acc_de20,
    energy_distance,
    mse_de20,
    pearson_delta,
    pearson_delta_de20,
    scaled_score,
    systema_pearson_delta,
    top_de_mask,
)
from aivc.evaluate._peer_envs import (
    PeerEnv,
    PeerNotInstalledError,
    install_peer,
    list_peers,
    peer_status,
    run_peer,
)
from aivc.evaluate._results import summarize, write_results
from aivc.evaluate._scib import integration_scores
from aivc.evaluate._spatial_peers import cellcharter_domains, novae_domains, tangram_impute
from aivc.evaluate.tasks import Task, get_task, list_tasks, register_task, run_task, task_names

__all__ = [
    "CELL_EVAL_METRICS",
    "METRICS",
    "MetricInfo",
    "PeerEnv",
    "PeerNotInstalledError",
    "ResourceMeter",
    "Task",
    "cell_eval_metrics",
    "cellcharter_domains",
    "centroid_accuracy",
    "direction_acc_de20",
    "energy_distance",
    "get_task",
    "install_peer",
    "integration_scores",
    "list_peers",
    "list_tasks",
    "mse_de20",
    "novae_domains",
    "pearson_delta",
    "pearson_delta_de20",
    "peer_status",
    "register_task",
    "run_peer",
    "run_task",
    "scaled_score",
    "summarize",
    "systema_pearson_delta",
    "tangram_impute",
    "task_names",
    "top_de_mask",
    "write_results",
]
