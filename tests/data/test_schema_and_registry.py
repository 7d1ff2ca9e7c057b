from __future__ import annotations

import pytest

from aivc.data import (
    DatasetEntry,
    PerturbationSchema,
    dataset_entry,
    list_datasets,
    load,
    register_dataset,
    schema_of,
)


def test_schema_roundtrip_and_targets():
    s = PerturbationSchema(
        perturbation_key="p", control_label="ctrl", context_key="cell_type", counts_layer="counts"
    )
    assert PerturbationSchema.from_json(s.to_json()) == s
    assert s.targets("A+B") == ("A", "B")
    assert s.targets("ctrl") == ()
    assert s.join(["A", "B"]) == "A+B"
    assert s.order("A+B+C") == 3


def test_schema_rejects_bad_fields():
    with pytest.raises(
        ValueError,
        match=r"The 'control_label' field of PerturbationSchema must be a non-empty string",
    ):
        PerturbationSchema(perturbation_key="p", control_label="")
    with pytest.raises(ValueError, match=r"contains the combination separator"):
        PerturbationSchema(perturbation_key="p", control_label="a+b")
    with pytest.raises(ValueError, match=r"Unknown PerturbationSchema fields \['colour'\]"):
        PerturbationSchema.from_dict(
            {"perturbation_key": "p", "control_label": "c", "colour": "red"}
        )


def test_registry_rejects_duplicates():
    entry = dataset_entry("papalexi2021")
    with pytest.raises(ValueError, match=r"already registered"):
        register_dataset(entry)


def test_unknown_dataset_suggests():
    with pytest.raises(KeyError, match=r"Did you mean 'papalexi2021'\?"):
        dataset_entry("papalexi2012")


def test_missing_dataset_says_where(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"is not in the data directory .* Set AIVC_DATA_DIR"
    ):
        load("papalexi2021", data_dir=tmp_path)


@pytest.mark.parametrize("name", ["papalexi2021", "norman2019_subset", "kang2018"])
def test_local_perturbation_datasets_load_and_validate(data_dir, name):
    from aivc.data import validate
    from aivc.genes import gene_symbols

    adata = load(name)
    schema = schema_of(adata)
    validate(adata, schema, known_genes=gene_symbols())


def test_all_local_entries_exist(data_dir):
    local = [e for e in list_datasets() if not e.remote]
    assert len(local) >= 10
    for e in local:
        assert e.path().exists(), e.name
    assert isinstance(local[0], DatasetEntry)
