"""Data: the perturbation-dataset schema, validation, preprocessing, observed changes, registry, splits."""

from __future__ import annotations

from aivc.data import _public  # noqa: F401  (registers the public datasets)
from aivc.data._changes import ControlReference, observed_changes
from aivc.data._download import download_dataset as download
from aivc.data._expression import (
    ExpressionInput,
    counts_from_log,
    log_expression,
    looks_like_counts,
)
from aivc.data._ooc import (
    OutOfCorePseudobulk,
    OutOfCoreStatistics,
    condition_statistics_from_file,
    pseudobulk_from_file,
    validate_file,
)
from aivc.data._preprocess import (
    CONDITION_SEP,
    DOSE_SEP,
    condition_labels,
    differential_expression,
    dose_label,
    highly_variable_genes,
    log_normalize,
    prepare,
    pseudobulk,
    treatment_labels,
)
from aivc.data._profiles import (
    DOSE_UNITS,
    PROFILE_SCHEMAS,
    ProfileSchema,
    ResponseTable,
    load_profiles,
    normalize_profiles,
    read_profiles,
    response_table,
)
from aivc.data._registry import (
    DatasetEntry,
    RemoteFile,
    dataset_entry,
    list_datasets,
    load,
    register_dataset,
    schema_of,
)
from aivc.data._schema import PerturbationSchema
from aivc.data._validate import (
    DataValidationError,
    check_gene_panel,
    check_perturbation_labels,
    get_counts,
    read_h5ad,
    validate,
)

__all__ = [
    "CONDITION_SEP",
    "DOSE_SEP",
    "DOSE_UNITS",
    "PROFILE_SCHEMAS",
    "ControlReference",
    "DataValidationError",
    "DatasetEntry",
    "ExpressionInput",
    "OutOfCorePseudobulk",
    "OutOfCoreStatistics",
    "PerturbationSchema",
    "ProfileSchema",
    "RemoteFile",
    "ResponseTable",
    "check_gene_panel",
    "check_perturbation_labels",
    "condition_labels",
    "condition_statistics_from_file",
    "counts_from_log",
    "dataset_entry",
    "differential_expression",
    "dose_label",
    "download",
    "get_counts",
    "highly_variable_genes",
    "list_datasets",
    "load",
    "load_profiles",
    "log_expression",
    "log_normalize",
    "looks_like_counts",
    "normalize_profiles",
    "observed_changes",
    "prepare",
    "pseudobulk",
    "pseudobulk_from_file",
    "read_h5ad",
    "read_profiles",
    "register_dataset",
    "response_table",
    "schema_of",
    "treatment_labels",
    "validate",
    "validate_file",
]
