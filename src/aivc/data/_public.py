"""Public datasets users will want, with their source URLs and published checksums.

Each entry points at the original public copy of one ``.h5ad`` file and records
the checksum its host publishes (Zenodo lists an md5 for every file), its size,
licence and citation, and the :class:`PerturbationSchema` of the file as
distributed. Nothing is downloaded on import: :func:`aivc.data.download` or
``aivc.data.load(name, download=True)`` fetches a file on request.

Where a published checksum could not be found, ``md5`` is ``None`` and
``checksum_note`` says why. Where the column names or labels inside a file
could not be confirmed from its processing code, the entry's ``notes`` say so.
"""

from __future__ import annotations

from aivc.data._registry import DatasetEntry, RemoteFile, register_dataset
from aivc.data._schema import PerturbationSchema

__all__: list[str] = []

# scPerturb RNA collection, version 1.4 (concept DOI 10.5281/zenodo.7041848; record 7041849 is
# an earlier version of the same collection). Version 1.4 corrected the sci-Plex 3 processing;
# the Norman, Replogle and Adamson files carry the same md5 in versions 1.3 and 1.4.
_SCPERTURB_RECORD = "13350497"
_SCPERTURB_PAGE = f"https://zenodo.org/records/{_SCPERTURB_RECORD}"
_SCPERTURB_CITATION = (
    "Peidli S., Green T.D. et al. scPerturb: harmonized single-cell perturbation data. "
    "Nature Methods 21:531-540 (2024). doi:10.1038/s41592-023-02144-y"
)
_SCPERTURB_LICENSE = "CC BY 4.0 (scPerturb, Zenodo record 13350497)"
_SCPERTURB_NOTE = (
    f"URL, md5 and size: file list of the scPerturb Zenodo record ({_SCPERTURB_PAGE}), as quoted "
    "identically by independent downstream projects (e.g. github.com/gao-lab/CASCADE, "
    "data/download/); not re-read from the live record. Column names: scPerturb processing code "
    "(github.com/sanderlab/scPerturb, dataset_processing/)."
)


def _scperturb_url(filename: str) -> str:
    return f"{_SCPERTURB_PAGE}/files/{filename}?download=1"


register_dataset(
    DatasetEntry(
        name="norman2019",
        description=(
            "K562 CRISPRa Perturb-seq, single and paired gene activations (about 105 genes, "
            "131 pairs), raw counts, scPerturb release"
        ),
        folder="norman2019_scperturb",
        filename="NormanWeissman2019_filtered.h5ad",
        schema=PerturbationSchema(
            perturbation_key="perturbation",
            control_label="control",
            combination_separator="_",
        ),
        citation=(
            "Norman T.M. et al. Science 365:786-793 (2019). doi:10.1126/science.aax4438; "
            + _SCPERTURB_CITATION
        ),
        license=_SCPERTURB_LICENSE + "; GEO GSE133344",
        remote=(
            RemoteFile(
                url=_scperturb_url("NormanWeissman2019_filtered.h5ad"),
                filename="NormanWeissman2019_filtered.h5ad",
                md5="c870e6967d91c017d9da827bab183cd6",
                size=698_680_199,
            ),
        ),
        notes=(
            _SCPERTURB_NOTE + " Raw counts are in X. Pairs are labelled 'GENE1_GENE2' (the "
            "separator is '_', not '+'); controls are 'control'. Gene symbols in X follow the "
            "scPerturb harmonisation, not GEARS' processed copy."
        ),
    )
)

register_dataset(
    DatasetEntry(
        name="replogle2022_k562_essential",
        description=(
            "K562 CRISPRi Perturb-seq of common essential genes: 310,385 cells x 8,563 genes, "
            "about 2,000 targets, raw counts, scPerturb release"
        ),
        folder="replogle2022_k562_essential_scperturb",
        filename="ReplogleWeissman2022_K562_essential.h5ad",
        schema=PerturbationSchema(
            perturbation_key="perturbation",
            control_label="control",
            batch_key="batch",
        ),
        citation=(
            "Replogle J.M. et al. Cell 185:2559-2575.e28 (2022). doi:10.1016/j.cell.2022.05.013; "
            + _SCPERTURB_CITATION
        ),
        license=(
            _SCPERTURB_LICENSE + "; authors' release on figshare+ (article 20029387) is CC BY 4.0"
        ),
        remote=(
            RemoteFile(
                url=_scperturb_url("ReplogleWeissman2022_K562_essential.h5ad"),
                filename="ReplogleWeissman2022_K562_essential.h5ad",
                md5="d8cba17576d1a8afc0f7d71b79cad0f7",
                size=1_546_729_675,
            ),
        ),
        notes=(
            _SCPERTURB_NOTE + " Raw counts are in X. The perturbation column is copied from the "
            "authors' 'gene' column and 'batch' from their 'gem_group'. Non-targeting cells are "
            "reported as 'control' in this file; if validation finds no 'control' cells, check for "
            "'non-targeting' and set control_label accordingly. The authors' own file "
            "(K562_essential_raw_singlecell_01.h5ad) is on figshare+ (article 20029387)."
        ),
    )
)

register_dataset(
    DatasetEntry(
        name="adamson2016",
        description=(
            "K562 CRISPRi UPR Perturb-seq screen (GSM2406681, 10X010): 65,337 cells x 32,738 genes, "
            "91 sgRNAs against 82 genes, raw counts, scPerturb release"
        ),
        folder="adamson2016_upr_scperturb",
        filename="AdamsonWeissman2016_GSM2406681_10X010.h5ad",
        schema=PerturbationSchema(
            perturbation_key="perturbation",
            control_label="63(mod)_pBA580",
        ),
        citation=(
            "Adamson B. et al. Cell 167:1867-1882.e21 (2016). doi:10.1016/j.cell.2016.11.048; "
            + _SCPERTURB_CITATION
        ),
        license=_SCPERTURB_LICENSE + "; GEO GSE90546",
        remote=(
            RemoteFile(
                url=_scperturb_url("AdamsonWeissman2016_GSM2406681_10X010.h5ad"),
                filename="AdamsonWeissman2016_GSM2406681_10X010.h5ad",
                md5="2fa44ea61a8dd35742af618638ec65fc",
                size=471_286_951,
            ),
        ),
        notes=(
            _SCPERTURB_NOTE + " Raw counts are in X. Caveat: obs['perturbation'] holds the "
            "authors' guide-construct names ('GENE_pDSnnn', 'ATF6_PERK_IRE1_pMJ158' for a triple "
            "knockdown), not gene symbols; non-targeting cells are spread over several control "
            "constructs ('63(mod)_pBA580', 'Gal4-4(mod)_pBA582', '3x_neg_ctrl_pMJ144-1', ...); "
            "unassigned cells are '*' and some cells have no label. The declared control label "
            "is the largest control construct only and is unconfirmed: map constructs to gene "
            "symbols and all control constructs to one label before modelling. The pilot "
            "(GSM2406675_10X001) and epistasis (GSM2406677_10X005) experiments are separate files "
            "in the same record."
        ),
    )
)

register_dataset(
    DatasetEntry(
        name="kang2018_full",
        description=(
            "PBMC from 8 lupus donors, control vs IFN-beta (6 h): 24,673 cells x 15,706 genes, "
            "8 cell types, raw counts (pertpy curation)"
        ),
        folder="kang2018_ifnb_pbmc_pertpy",
        filename="kang_2018.h5ad",
        schema=PerturbationSchema(
            perturbation_key="label",
            control_label="ctrl",
            context_key="cell_type",
            batch_key="replicate",
        ),
        citation=(
            "Kang H.M. et al. Nature Biotechnology 36:89-94 (2018). doi:10.1038/nbt.4042; "
            "curated by pertpy (scverse)"
        ),
        license="GEO GSE96583 (public); the licence of the figshare copy is not stated by pertpy",
        remote=(
            RemoteFile(
                url="https://api.figshare.com/v2/file/download/34464122",
                filename="kang_2018.h5ad",
                md5=None,
                sha256="e6a5adac64dcdeb36eaba27db49b63e0c64bb0ed4a64c6705971506b41c39830",
                checksum_note=(
                    "figshare keeps an md5 for every file, but no published value for file "
                    "34464122 could be found. The SHA-256 is the value that several independent "
                    "projects recorded for this file and for the identical scverse mirror "
                    "(https://exampledata.scverse.org/pertpy/kang_2018.h5ad); it is not "
                    "published by figshare."
                ),
            ),
        ),
        notes=(
            "File id 34464122 is the one in pertpy's kang_2018() loader (github.com/scverse/pertpy, "
            "pertpy/data/_datasets.py); newer pertpy downloads the same file from "
            "https://exampledata.scverse.org/pertpy/kang_2018.h5ad. The figshare API address is used "
            "because https://figshare.com/ndownloader/files/34464122 has been seen to answer "
            "scripted clients with an empty HTTP 202. Raw counts are in X; obs['label'] is "
            "'ctrl'/'stim', obs['replicate'] the donor, obs['cell_type'] the cell type. "
            "The 'kang2018' entry is the scGen validation subset of the same experiment."
        ),
    )
)

register_dataset(
    DatasetEntry(
        name="sciplex3",
        description=(
            "sci-Plex 3: A549, MCF7 and K562 cells treated 24 h with 188 compounds at 4 doses: "
            "799,317 cells x 110,983 features, raw counts, scPerturb release"
        ),
        folder="sciplex3_srivatsan2020_scperturb",
        filename="SrivatsanTrapnell2020_sciplex3.h5ad",
        schema=PerturbationSchema(
            perturbation_key="perturbation",
            control_label="control",
            combination_separator="|",
            context_key="cell_line",
            dose_key="dose_value",
            time_key="time",
        ),
        citation=(
            "Srivatsan S.R. et al. Science 367:45-51 (2020). doi:10.1126/science.aax6234; "
            + _SCPERTURB_CITATION
        ),
        license=_SCPERTURB_LICENSE + "; GEO GSE139944",
        remote=(
            RemoteFile(
                url=_scperturb_url("SrivatsanTrapnell2020_sciplex3.h5ad"),
                filename="SrivatsanTrapnell2020_sciplex3.h5ad",
                md5="c9e70629505d98c7ca1a837f62b14e89",
                size=2_526_631_614,
            ),
        ),
        notes=(
            _SCPERTURB_NOTE + " Use this version-1.4 file: earlier versions of the record hold a "
            "sci-Plex 3 file with processing errors and a different md5. Raw counts are in X. "
            "Vehicle (DMSO) cells are 'control'; obs['dose_value'] is in nM (obs['dose_unit']), "
            "obs['time'] in hours. Compound names contain '+' (e.g. '(+)-JQ1'), so the "
            "combination separator is '|' (every cell has one compound). The column names are "
            "those written by the scPerturb processing code; the corrected 1.4 processing was "
            "not inspected, so check them with aivc.data.validate after loading. Not every "
            "feature is a human (ENSG) gene; keep the human genes for most uses."
        ),
    )
)
