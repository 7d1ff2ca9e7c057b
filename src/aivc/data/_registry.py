"""Registry of datasets: local copies in the data directory and public sources.

Each entry has a name, a description, where its file lives relative to the
data directory, the :class:`PerturbationSchema` that describes it (for
perturbation data), and, for public datasets, the source URL, the checksum the
source publishes, the licence and the citation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aivc._labels import check_known
from aivc._settings import settings
from aivc.data._schema import PerturbationSchema
from aivc.data._validate import read_h5ad

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "DatasetEntry",
    "dataset_entry",
    "embedded_path",
    "list_datasets",
    "load",
    "register_dataset",
    "schema_of",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file of a public dataset.

    Attributes
    ----------
    url
        The original public URL.
    filename
        Name of the file in the dataset's folder.
    md5
        Checksum published by the source (Zenodo, figshare), if any.
    sha256
        Checksum recorded after one verified download, if any.
    size
        Size in bytes, if known.
    checksum_note
        Why no checksum is given, when none could be found.
    """

    url: str
    filename: str
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None
    checksum_note: str | None = None


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset aivc knows by name.

    Attributes
    ----------
    name
        Registry name, e.g. ``"papalexi2021"``.
    description
        One line on what the data are.
    folder
        Folder under the data directory holding the dataset.
    filename
        The h5ad file inside ``folder`` that :func:`load` reads.
    schema
        Schema of a perturbation dataset (``None`` for other data).
    kind
        ``"perturbation"``, ``"atlas"``, ``"multimodal"``, ``"spatial"``, ``"timecourse"``...
    citation
        The publication to cite.
    license
        Licence of the data.
    remote
        Files to download for users who have a network (empty for local-only data).
    notes
        Anything a user should know (subset, reconstruction of counts, caveats).
    """

    name: str
    description: str
    folder: str
    filename: str
    schema: PerturbationSchema | None = None
    kind: str = "perturbation"
    citation: str = ""
    license: str = ""
    remote: tuple[RemoteFile, ...] = field(default_factory=tuple)
    notes: str = ""

    def path(self, data_dir: str | Path | None = None) -> Path:
        """Where the file lives under ``data_dir`` (default: ``aivc.settings.data_dir``)."""
        base = Path(data_dir) if data_dir is not None else settings.data_dir
        return base / self.folder / self.filename


_REGISTRY: dict[str, DatasetEntry] = {}


def register_dataset(entry: DatasetEntry) -> DatasetEntry:
    """Add ``entry`` to the registry; a duplicate name raises."""
    if entry.name in _REGISTRY:
        msg = f"A dataset named {entry.name!r} is already registered; choose another name."
        raise ValueError(msg)
    _REGISTRY[entry.name] = entry
    return entry


def dataset_entry(name: str) -> DatasetEntry:
    """The registry entry called ``name``."""
    check_known(
        [name], _REGISTRY, what="dataset", advice="See aivc.data.list_datasets().", error=KeyError
    )
    return _REGISTRY[name]


def list_datasets() -> Iterator[DatasetEntry]:
    """All registered datasets, sorted by name."""
    for name in sorted(_REGISTRY):
        yield _REGISTRY[name]


def schema_of(adata: AnnData) -> PerturbationSchema:
    """The schema stored in ``adata.uns["aivc"]["schema"]`` by :func:`load` or :func:`aivc.data.prepare`."""
    try:
        return PerturbationSchema.from_dict(dict(adata.uns["aivc"]["schema"]))
    except KeyError:
        msg = (
            "This AnnData carries no aivc schema in uns['aivc']['schema']. Declare one with "
            "aivc.data.PerturbationSchema(...) and pass it explicitly, or load the data with aivc.data.load()."
        )
        raise KeyError(msg) from None


#: Datasets whose file also ships inside the package (in ``aivc/data/_embedded``), by name.
_EMBEDDED_FILES = {"papalexi2021": "papalexi2021.h5ad"}


def embedded_path(name: str) -> Path | None:
    """The copy of dataset ``name`` that ships inside the package, or ``None``.

    Parameters
    ----------
    name
        Registry name, e.g. ``"papalexi2021"``.

    Returns
    -------
    Path of the embedded file, or ``None`` when the dataset has no embedded copy
    (or the installation lacks it).
    """
    filename = _EMBEDDED_FILES.get(name)
    if filename is None:
        return None
    path = Path(__file__).parent / "_embedded" / filename
    return path if path.is_file() else None


def load(name: str, *, data_dir: str | Path | None = None, download: bool = False) -> AnnData:
    """Load a registered dataset by name.

    Reads ``<data_dir>/<folder>/<filename>``; the data directory defaults to
    ``aivc.settings.data_dir`` (``AIVC_DATA_DIR``). When ``data_dir`` is not
    given and the settings' data directory holds no copy, a dataset that ships
    inside the package (:func:`embedded_path`, e.g. ``papalexi2021``) is read
    from there; an explicit ``data_dir`` is read only from that folder. With
    ``download=True`` a public dataset that is not present locally is
    downloaded first (this needs a network). The dataset's schema, if any, is
    stored in ``uns["aivc"]["schema"]``. Which copy was read is logged at INFO.
    """
    entry = dataset_entry(name)
    path = entry.path(data_dir)
    embedded = embedded_path(name) if data_dir is None else None
    if path.exists():
        logger.info("Loading %s from the data directory: %s", name, path)
    elif embedded is not None:
        logger.info(
            "Loading %s from the copy embedded in aivc (%s); the data directory %s holds none",
            name,
            embedded,
            settings.data_dir,
        )
        path = embedded
    if not path.exists():
        from aivc.data.sources import source_of

        rebuildable = entry.remote or source_of(name) is not None
        if download and rebuildable:
            from aivc.data._download import download_dataset

            download_dataset(name, data_dir=data_dir)
        else:
            base = Path(data_dir) if data_dir is not None else settings.data_dir
            how = (
                f"aivc.data.download({name!r}) (or `aivc datasets download {name}`) fetches it from its source"
                if rebuildable
                else "this dataset has no public download; copy its folder there"
            )
            msg = (
                f"Dataset {name!r} is not in the data directory {str(base)!r} (expected {entry.folder}/"
                f"{entry.filename}). Set AIVC_DATA_DIR to the folder that holds it; {how}."
            )
            raise FileNotFoundError(msg)
    adata = read_h5ad(path)
    if entry.schema is not None:
        adata.uns.setdefault("aivc", {})
        adata.uns["aivc"]["schema"] = entry.schema.to_dict()
        adata.uns["aivc"]["dataset"] = name
    return adata


# ----------------------------------------------------------------------------- local datasets
register_dataset(
    DatasetEntry(
        name="papalexi2021",
        description="THP-1 ECCITE-seq CRISPR knockouts: 20,729 cells x 299 genes, 25 targets, raw counts, 3 replicates",
        folder="papalexi2021_thp1_eccite_sceptre",
        filename="papalexi2021_thp1_eccite_sceptre.h5ad",
        schema=PerturbationSchema(
            perturbation_key="perturbation",
            control_label="control",
            batch_key="batch",
            context_key=None,
        ),
        citation="Papalexi E. et al. Nature Genetics 53:322-331 (2021). doi:10.1038/s41588-021-00778-2",
        license="MIT (sceptredata example data); GEO GSE153056",
        notes="299 randomly chosen genes of the screen; gRNA assigned by maximum UMI.",
    )
)
register_dataset(
    DatasetEntry(
        name="norman2019_subset",
        description="K562 CRISPRa subset: 3,375 cells x 500 genes, 18 singles + 15 doubles, reconstructed counts",
        folder="norman2019_perturbench_subset",
        filename="norman2019_perturbench_subset.h5ad",
        schema=PerturbationSchema(
            perturbation_key="perturbation",
            control_label="control",
            batch_key="gemgroup",
            counts_layer="counts",
        ),
        citation="Norman T.M. et al. Science 365:786-793 (2019). doi:10.1126/science.aax4438",
        license="BSD-3-Clause (PerturBench development subset); GEO GSE133344",
        notes="Only 1 of the 31 target genes is among the 500 measured genes.",
    )
)
register_dataset(
    DatasetEntry(
        name="kang2018",
        description="PBMC control vs IFN-beta, 7 cell types: 1,975 cells x 6,998 genes (scGen validation split)",
        folder="kang2018_ifnb_pbmc_scgen",
        filename="kang2018_ifnb_pbmc_scgen_valid.h5ad",
        schema=PerturbationSchema(
            perturbation_key="perturbation",
            control_label="control",
            context_key="cell_type",
            counts_layer="counts",
        ),
        citation=(
            "Kang H.M. et al. Nature Biotechnology 36:89-94 (2018). doi:10.1038/nbt.4042; "
            "Lotfollahi M. et al. Nature Methods 16:715-721 (2019). doi:10.1038/s41592-019-0494-8"
        ),
        license="GEO GSE96583 (public); scGen repository GPL-3.0",
    )
)
register_dataset(
    DatasetEntry(
        name="baron_human",
        description="Baron 2016 human pancreas: 2,142 cells, 4 donors, raw counts, cell types",
        folder="pancreas_baron_human_mouse",
        filename="baron_human.h5ad",
        kind="atlas",
        citation="Baron M. et al. Cell Systems 3:346-360 (2016). doi:10.1016/j.cels.2016.08.011",
        license="GEO GSE84133 (public)",
    )
)
register_dataset(
    DatasetEntry(
        name="baron_mouse",
        description="Baron 2016 mouse pancreas: 1,886 cells, 2 mice, raw counts, cell types",
        folder="pancreas_baron_human_mouse",
        filename="baron_mouse.h5ad",
        kind="atlas",
        citation="Baron M. et al. Cell Systems 3:346-360 (2016). doi:10.1016/j.cels.2016.08.011",
        license="GEO GSE84133 (public)",
    )
)
register_dataset(
    DatasetEntry(
        name="pbmc10k_cite_small",
        description="10x PBMC 10k CITE-seq, 200 cells, 14 proteins in obsm['protein_counts']",
        folder="citeseq_pbmc_small",
        filename="pbmc_10k_protein_v3_200cells.h5ad",
        kind="multimodal",
        citation="10x Genomics (CC BY 4.0); Gayoso A. et al. Nature Methods 18:272-282 (2021)",
        license="CC BY 4.0",
    )
)
register_dataset(
    DatasetEntry(
        name="pbmc5k_cite_small",
        description="10x PBMC 5k CITE-seq, 200 cells, 29 proteins in obsm['protein_counts']",
        folder="citeseq_pbmc_small",
        filename="pbmc_5k_protein_v3_200cells.h5ad",
        kind="multimodal",
        citation="10x Genomics (CC BY 4.0); Gayoso A. et al. Nature Methods 18:272-282 (2021)",
        license="CC BY 4.0",
    )
)
register_dataset(
    DatasetEntry(
        name="mimitou2019_cite_small",
        description="ECCITE-seq PBMC control sample, 500 cells, 49 proteins",
        folder="citeseq_pbmc_small",
        filename="eccite_pbmc_mimitou2019_500cells.h5ad",
        kind="multimodal",
        citation="Mimitou E.P. et al. Nature Methods 16:409-412 (2019). doi:10.1038/s41592-019-0392-0",
        license="GPL-3 (CiteFuse example data); GEO GSE126310",
    )
)
register_dataset(
    DatasetEntry(
        name="osmfish_cortex",
        description="osmFISH mouse somatosensory cortex: 4,530 cells x 33 genes with x/y",
        folder="spatial_osmfish_ssp_cortex",
        filename="osmfish_ssp_cortex.h5ad",
        kind="spatial",
        citation="Codeluppi S. et al. Nature Methods 15:932-935 (2018). doi:10.1038/s41592-018-0175-z",
    )
)
register_dataset(
    DatasetEntry(
        name="hsmm_timecourse",
        description="HSMM myoblast differentiation, 271 cells x 21,512 genes, FPKM at 0/24/48/72 h",
        folder="hsmm_myoblast_timecourse",
        filename="hsmm_myoblast_timecourse.h5ad",
        kind="timecourse",
        citation="Trapnell C. et al. Nature Biotechnology 32:381-386 (2014). doi:10.1038/nbt.2859",
        license="Artistic-2.0 (Bioconductor HSMMSingleCell)",
        notes="Values are FPKM, not counts.",
    )
)
register_dataset(
    DatasetEntry(
        name="lincs_cellpainting_a549",
        description="LINCS Cell Painting, one A549 plate: 384 wells x 454 morphology features, "
        "56 compounds x 6 doses (uM) + 2 plate controls + 24 DMSO, MOA and SMILES",
        folder="lincs_cellpainting_a549_compounds",
        filename="lincs_cellpainting_a549_compounds.h5ad",
        kind="profiles",
        citation="Way G.P. et al. Cell Systems 13:911-923 (2022). doi:10.1016/j.cels.2022.10.001",
        license="CC0 1.0 (lincs-cell-painting); BSD-3-Clause (cytominer-eval example data)",
        notes="Level-4b profiles (pycytominer mad_robustize over all wells, feature-selected); "
        "one well per compound and dose; SMILES from the Drug Repurposing Hub, else chemCPA.",
    )
)
register_dataset(
    DatasetEntry(
        name="schiebinger2019",
        description="MEF -> iPSC reprogramming (serum), 250 cells x 1,479 genes at days 10, 10.5 and 11",
        folder="schiebinger2019_reprogramming_moscot_subset",
        filename="schiebinger2019_reprogramming_moscot_subset.h5ad",
        kind="timecourse",
        citation="Schiebinger G. et al. Cell 176:928-943 (2019). doi:10.1016/j.cell.2019.01.006",
        license="BSD-3-Clause (moscot test data); GEO GSE122662",
        notes="moscot's test subset; log-normalised X, reconstructed counts in layers['counts']; time in obs['day'].",
    )
)
