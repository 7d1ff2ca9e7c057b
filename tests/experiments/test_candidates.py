"""Default candidates of design, screens and proposals: what a model can make and a lab can order."""

from __future__ import annotations

import pytest

from aivc.experiments import default_candidates, inverse_design, propose_next
from aivc.instruments import AdditiveModel


@pytest.fixture
def fitted(prepared):
    adata, schema = prepared
    return adata, schema, AdditiveModel().fit(adata, schema)


def test_default_candidates_are_measured_targets_plus_genes_with_knowledge(fitted):
    _, schema, model = fitted
    targets = list(dict.fromkeys(t for p in model.train_perturbations_ for t in schema.targets(p)))
    panel = [str(g) for g in model.genes_]
    knowledge = {g for g in panel[-10:] if g not in targets}
    chosen = default_candidates(model, knowledge=knowledge)
    assert chosen.measured_targets == targets
    assert chosen.labels == targets + [g for g in panel if g in knowledge]
    left_out = [g for g in panel if g not in knowledge and g not in targets]
    assert chosen.without_knowledge == left_out
    assert chosen.description.startswith(
        f"candidates: {len(targets)} measured targets + {len(knowledge)} genes with knowledge "
        f"({len(left_out)} measured genes without knowledge left out, e.g. "
    )
    # measured perturbations the caller knows of (e.g. held out of training) count as targets
    extra = next(g for g in panel if g not in knowledge and g not in targets)
    more = default_candidates(model, measured=[extra, "control"], knowledge=knowledge)
    assert more.measured_targets == [*targets, extra]


def test_default_candidates_without_knowledge_tables_take_the_panel(fitted, tmp_path, monkeypatch):
    from aivc import settings

    monkeypatch.setattr(settings, "data_dir", tmp_path)  # no 'genes' tables there
    _, _, model = fitted
    chosen = default_candidates(model)
    assert not chosen.knowledge_available
    assert set(chosen.labels) == set(map(str, model.genes_)) | set(chosen.measured_targets)
    assert "no gene-knowledge tables" in chosen.description


def test_design_towards_ifngr1_cells_returns_ifngr1_and_skips_unannotated_genes(
    data_dir, papalexi2021
):
    """The default candidates of inverse design include the measured targets, which are not
    all in the gene panel (IFNGR1 is not), and leave out panel genes nothing is known about."""
    from aivc.data import prepare, schema_of
    from aivc.genes import gene_symbols

    raw = papalexi2021[::3].copy()  # a third of the cells keeps the test fast
    adata, schema = prepare(raw, schema_of(raw))
    assert "IFNGR1" not in adata.var_names
    model = AdditiveModel().fit(adata, schema, known_genes=sorted(gene_symbols()))
    target = adata[adata.obs[schema.perturbation_key].astype(str) == "IFNGR1"]
    result = inverse_design(model, target=target, pairs=False, n_top=400)
    assert result.best == "IFNGR1"
    assert result.candidates.startswith("candidates: 25 measured targets + ")
    tried = set(result.table["perturbation"])
    assert {"IFNGR1", "STAT1", "JAK2"} <= tried
    assert not [g for g in tried if g.startswith(("RP11-", "CTD-", "LINC"))]
    chosen = default_candidates(model)
    assert tried == set(chosen.labels)
    assert "RP11-228B15.4" in chosen.without_knowledge


def test_propose_next_defaults_to_the_candidates_and_says_so(data_dir, fitted):
    adata, _, model = fitted
    # the synthetic genes have no knowledge: every default candidate is a measured target
    with pytest.raises(ValueError, match=r"measured already \(candidates: \d+ measured targets"):
        propose_next(model, adata, strategy="random", batch_size=3)
    props = propose_next(model, None, strategy="random", batch_size=3)
    assert props.candidates.startswith("candidates: ")
    assert set(props.table["perturbation"]) <= set(default_candidates(model).labels)


def test_gp_ucb_proposals_on_papalexi2021_are_default_candidates_without_lncrnas(
    data_dir, papalexi2021
):
    """GP-UCB, the default strategy, proposes from the default candidates: no unannotated
    transcripts (RP11-, CTD-, LINC), though the panel holds some."""
    from aivc.data import prepare, schema_of
    from aivc.genes import gene_symbols
    from aivc.instruments import make_instrument

    adata, schema = prepare(papalexi2021, schema_of(papalexi2021))
    model = make_instrument("linear").fit(adata, schema, known_genes=sorted(gene_symbols()))
    unannotated = ("RP11-", "CTD-", "LINC")
    assert [g for g in map(str, model.genes_) if g.startswith(unannotated)]
    chosen = default_candidates(model)
    # a batch as large as the candidates: every open candidate is proposed, in GP-UCB's order
    props = propose_next(model, adata, strategy="gp-ucb", batch_size=10_000)
    proposed = list(props.table["perturbation"])
    assert not [p for p in proposed if p.startswith(unannotated)]
    assert set(proposed) <= set(chosen.labels)
    assert not set(proposed) & set(chosen.measured_targets)
    assert props.strategy == "gp-ucb" and props.n_candidates == len(chosen)
    assert len(proposed) == len(chosen) - len(chosen.measured_targets) > 100
