"""Evaluation that cannot flatter: metrics, cell-eval, scaled scores and the benchmark runner."""

from __future__ import annotations

from aivc.evaluate._benchmark import TASKS, BenchmarkTask, results_markdown, run_benchmark
from aivc.evaluate._calibration import CALIBRATION_METRICS, run_calibration
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
from aivc.evaluate._tasks import EXTRA_TASKS, run_task, task_names

__all__ = [
    "CALIBRATION_METRICS",
    "CELL_EVAL_METRICS",
    "EXTRA_TASKS",
    "METRICS",
    "TASKS",
    "BenchmarkTask",
    "MetricInfo",
    "ResourceMeter",
    "cell_eval_metrics",
    "centroid_accuracy",
    "direction_acc_de20",
    "energy_distance",
    "mse_de20",
    "pearson_delta",
    "pearson_delta_de20",
    "results_markdown",
    "run_benchmark",
    "run_calibration",
    "run_task",
    "scaled_score",
    "systema_pearson_delta",
    "task_names",
    "top_de_mask",
]
