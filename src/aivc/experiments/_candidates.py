"""Default candidates: the perturbations a model can make and a lab can order.

Inverse design, virtual screens and proposals choose among candidate
perturbations. Without a list from the user they take the model's measured
targets (every gene perturbed in its training data, plus measured
perturbations the caller knows of, e.g. those held out of training) and the
genes of its panel that prior knowledge (Gene Ontology, STRING, HuRI)
describes. Panel genes nothing is known about (unannotated transcripts such as
most lncRNAs) are left out: a model predicts little for them and they are
rarely what an experiment perturbs. :attr:`Candidates.description` says what
was chosen, for the interfaces to print.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from aivc.instruments._base import PerturbationModel

__all__ = ["Candidates", "default_candidates"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidates:
    """A candidate set and where its members come from.

    Attributes
    ----------
    labels
        The candidates: measured targets first, then genes with knowledge.
    measured_targets
        Targets perturbed in the measurements (training data and ``measured``).
    knowledge_genes
        Panel genes with prior knowledge that are not measured targets.
    without_knowledge
        Panel genes left out because no knowledge source covers them.
    knowledge_available
        Whether the knowledge tables were found; without them every panel
        gene is a candidate.
    """

    labels: list[str]
    measured_targets: list[str]
    knowledge_genes: list[str]
    without_knowledge: list[str]
    knowledge_available: bool

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def description(self) -> str:
        """One line for the output, e.g. ``candidates: 25 measured targets + 240 genes with knowledge``."""
        head = f"candidates: {len(self.measured_targets)} measured targets"
        if not self.knowledge_available:
            return (
                f"{head} + {len(self.knowledge_genes)} other measured genes (no gene-knowledge "
                "tables found to tell which genes have knowledge; set AIVC_DATA_DIR)"
            )
        text = f"{head} + {len(self.knowledge_genes)} genes with knowledge"
        if self.without_knowledge:
            shown = ", ".join(self.without_knowledge[:3])
            more = ", ..." if len(self.without_knowledge) > 3 else ""
            text += (
                f" ({len(self.without_knowledge)} measured genes without knowledge left out, "
                f"e.g. {shown}{more})"
            )
        return text


def default_candidates(
    model: PerturbationModel,
    *,
    measured: Sequence[str] = (),
    knowledge: Collection[str] | None = None,
    data_dir: str | Path | None = None,
) -> Candidates:
    """The perturbations to choose from when the user names none.

    Parameters
    ----------
    model
        A fitted perturbation model.
    measured
        Further measured perturbation labels (``"A"``, ``"A+B"``), e.g. those
        held out of training; their targets count as measured targets when
        the model accepts them.
    knowledge
        Genes with prior knowledge; default :func:`aivc.genes.genes_with_knowledge`
        of the model's panel.
    data_dir
        Data directory of the gene-knowledge tables.

    Returns
    -------
    :class:`Candidates`: the measured targets, then the panel genes with
    knowledge, each once.
    """
    model._check_fitted()
    schema = model.schema_
    sep = schema.combination_separator
    accepted = frozenset(map(str, model.known_genes_))
    targets: list[str] = []
    for label in [*model.train_perturbations_, *measured]:
        label = str(label)
        if label == schema.control_label:
            continue
        targets += [t for t in schema.targets(label) if t in accepted]
    targets = list(dict.fromkeys(targets))
    taken = set(targets)
    panel = [g for g in dict.fromkeys(map(str, model.genes_)) if g not in taken and sep not in g]
    available = True
    if knowledge is None:
        from aivc.genes import genes_with_knowledge

        try:
            knowledge = set(genes_with_knowledge(panel, data_dir=data_dir))
        except FileNotFoundError as e:
            logger.info("no gene-knowledge tables (%s); every measured gene is a candidate", e)
            available = False
    if available:
        known = knowledge if isinstance(knowledge, set | frozenset) else set(knowledge or ())
        with_knowledge = [g for g in panel if g in known]
        without = [g for g in panel if g not in known]
    else:
        with_knowledge, without = panel, []
    return Candidates(
        labels=targets + with_knowledge,
        measured_targets=targets,
        knowledge_genes=with_knowledge,
        without_knowledge=without,
        knowledge_available=available,
    )
