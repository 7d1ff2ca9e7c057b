"""Published peer models, each in a virtual environment of its own.

A peer model (Tangram, CellCharter, Novae ...) is never installed into aivc's
environment: its dependencies would fight aivc's own. Each peer has an entry
in a small registry (:data:`PEERS`) naming the pip packages it needs and the
module that must import; :func:`install_peer` (``aivc peers install NAME``)
creates ``<cache dir>/peers/<name>/`` with ``python -m venv`` and installs
them there, with torch held to :data:`TORCH_REQUIREMENT` (the CPU build).

A peer runs through a standalone script shipped in ``aivc/evaluate/peers/``
(it imports only the standard library, numpy, anndata/scanpy and the peer's
own package, never aivc), started with the environment's python by
:func:`run_peer`. Data go in and out as files: ``.h5ad`` in; ``.npy``,
``.csv`` or ``.json`` out; never pickle.

An environment is ready once its ``ready.json`` marker exists: it is written
last, atomically, with the versions installed, so an install that failed or
was interrupted is never taken for a ready one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from aivc._io import write_json_atomic, write_text_atomic
from aivc._labels import check_known
from aivc._settings import settings

__all__ = [
    "PEERS",
    "TORCH_REQUIREMENT",
    "PeerEnv",
    "PeerInstallError",
    "PeerNotInstalledError",
    "PeerRunError",
    "PeerStatus",
    "UnknownPeerError",
    "check_peer_settings",
    "constraints_text",
    "get_peer",
    "install_peer",
    "list_peers",
    "peer_root",
    "peer_status",
    "run_peer",
]

logger = logging.getLogger(__name__)

#: The torch every peer environment gets: the CPU build, so that pip never pulls
#: the CUDA packages (several GB) a peer's unpinned ``torch`` would bring.
TORCH_REQUIREMENT = "torch==2.13.0"

#: The marker of a ready environment, written last.
READY_FILE = "ready.json"
#: The constraints file every pip call of an environment is given.
CONSTRAINTS_FILE = "constraints.txt"
#: pip's full output of the last install.
INSTALL_LOG = "install.log"
#: Lines of pip's (or a peer script's) output quoted in an error.
_TAIL_LINES = 30
#: Version of the ``ready.json`` layout.
_READY_FORMAT = 1


@dataclass(frozen=True)
class PeerEnv:
    """A published model's own virtual environment.

    Attributes
    ----------
    name
        Registry name, used on the command line (``aivc peers install NAME``)
        and as the environment's folder name.
    packages
        pip requirement strings installed into the environment.
    module
        Python module that must import once the packages are installed.
    description
        What the model does, in one sentence.
    note
        How it is run here, or why it cannot be.
    licence
        The peer's licence, as its package declares it (some forbid commercial use).
    """

    name: str
    packages: tuple[str, ...]
    module: str
    description: str
    note: str = ""
    licence: str = ""

    def __post_init__(self) -> None:
        if not self.packages:
            msg = f"The peer {self.name!r} must name at least one pip package. Got none."
            raise ValueError(msg)


@dataclass(frozen=True)
class PeerStatus:
    """Whether a peer's environment is ready, where it is and what it holds.

    Attributes
    ----------
    peer
        The registry entry.
    path
        The environment's folder (it may not exist).
    installed
        Whether the environment is ready (its ``ready.json`` marker exists).
    versions
        Installed versions of the peer's packages and of torch (empty when not
        installed).
    python
        The environment's Python version (empty when not installed).
    """

    peer: PeerEnv
    path: Path
    installed: bool
    versions: dict[str, str] = field(default_factory=dict)
    python: str = ""


class UnknownPeerError(ValueError):
    """No peer of that name is registered."""


class PeerNotInstalledError(RuntimeError):
    """The peer's environment is not ready: it was never installed, or its install failed."""


class PeerInstallError(RuntimeError):
    """Creating a peer's environment or installing its packages failed."""


class PeerRunError(RuntimeError):
    """A peer script exited with an error or ran past its time limit."""


PEERS: dict[str, PeerEnv] = {}


def _register(peer: PeerEnv) -> None:
    if peer.name in PEERS:
        msg = f"A peer named {peer.name!r} is already registered; give the new one another name."
        raise ValueError(msg)
    PEERS[peer.name] = peer


_register(
    PeerEnv(
        name="tangram",
        packages=("tangram-sc>=1.0.4",),
        module="tangram",
        description=(
            "Tangram (Biancalani et al. 2021): maps reference cells onto spatial cells by "
            "gene-expression similarity and projects unmeasured genes into space."
        ),
        note=(
            "Trained from scratch on CPU in 'cells' mode on the genes the two data sets share "
            "(script tangram_impute)."
        ),
        licence="BSD-3-Clause",
    )
)
_register(
    PeerEnv(
        name="cellcharter",
        packages=("cellcharter>=0.3.7",),
        module="cellcharter",
        description=(
            "CellCharter (Varrone et al. 2024): spatial domains from neighbourhood-aggregated "
            "cell features clustered with a Gaussian mixture."
        ),
        note=(
            "Squidpy's spatial graph, CellCharter's neighbourhood aggregation and its GMM on "
            "PCA of log-normalised expression (scVI would be slow on CPU); "
            "script cellcharter_domains."
        ),
        licence="BSD-3-Clause",
    )
)
_register(
    PeerEnv(
        name="novae",
        packages=("novae>=1.1.2",),
        module="novae",
        description=(
            "Novae (Blampey et al. 2025): a graph foundation model of spatial transcriptomics "
            "whose cell representations are clustered into spatial domains."
        ),
        note=(
            "Trained from scratch on CPU (no pretrained weights are downloaded): Novae's graph "
            "per section, Novae(adata).fit, compute_representations, assign_domains with K "
            "domains; script novae_domains."
        ),
        licence="BSD-3-Clause",
    )
)


_register(
    PeerEnv(
        name="biolord",
        packages=("biolord>=0.0.3", "scvi-tools>=1.3"),
        module="biolord",
        description=(
            "biolord (Piran et al. 2024): disentangles known attributes (perturbation, cell "
            "type) from the rest of a cell's state and predicts unseen attribute combinations."
        ),
        note=(
            "Trained from scratch on CPU with the perturbation and the context as categorical "
            "attributes; checkpointing is switched off (scvi-tools' callback fails with it); "
            "script perturbation_peer --peer biolord. Only perturbations measured in training "
            "can be predicted."
        ),
        licence="BSD-3-Clause",
    )
)
_register(
    PeerEnv(
        name="state",
        packages=("arc-state>=0.11",),
        module="state",
        description=(
            "State (Adduri et al. 2025, Arc Institute): a transformer over sets of cells that "
            "maps control cells to perturbed cells given the perturbation and the context."
        ),
        note=(
            "Its state transition model trained from scratch on CPU through its own Lightning "
            "module with a small configuration (no pretrained weights, no downloads); "
            "perturbations as one-hot vectors, so only perturbations measured in training can "
            "be predicted; script perturbation_peer --peer state."
        ),
        licence="CC-BY-NC-SA-4.0 (non-commercial)",
    )
)
_register(
    PeerEnv(
        name="cellflow",
        packages=("cellflow-tools>=0.0.9", "requests"),
        module="cellflow",
        description=(
            "CellFlow (Klein et al. 2025, Theis lab): flow matching from control to perturbed "
            "cell populations, conditioned on perturbation and context embeddings."
        ),
        note=(
            "Trained from scratch on CPU (JAX) on principal components of the training cells, "
            "with one-hot perturbation and context embeddings; script perturbation_peer "
            "--peer cellflow. It pins scikit-learn 1.5.1, which is why it cannot share aivc's "
            "environment."
        ),
        licence="PolyForm-Noncommercial-1.0.0 (non-commercial)",
    )
)

_register(
    PeerEnv(
        name="prescient",
        packages=("prescient==0.1.0",),
        module="prescient.train",
        description=(
            "PRESCIENT (Yeo et al. 2021): a potential whose gradient drives a stochastic "
            "differential equation, learned from a time course with a Sinkhorn loss; it "
            "simulates cells forward to any time."
        ),
        note=(
            "Trained from scratch on CPU by its own training loop on the benchmark's principal "
            "components, options at its train_model defaults, time in units of the mean gap "
            "between measured time points; cells of the first time point simulated to the "
            "query time; script prescient_course."
        ),
        licence="MIT",
    )
)


def get_peer(name: str) -> PeerEnv:
    """The registered peer ``name``.

    Raises
    ------
    UnknownPeerError
        No peer has that name (the message lists them and suggests close names).
    """
    check_known(
        [name],
        PEERS,
        what="peer",
        known_as="registered peers",
        advice="`aivc peers list` names them all.",
        error=UnknownPeerError,
    )
    return PEERS[name]


def peer_root() -> Path:
    """The folder holding the peer environments: ``<aivc cache dir>/peers``.

    The cache directory is :attr:`aivc.settings.cache_dir` (environment
    variable ``AIVC_CACHE_DIR``).
    """
    return Path(settings.cache_dir) / "peers"


def _env_dir(name: str) -> Path:
    return peer_root() / name


def _env_python(env_dir: Path) -> Path:
    if os.name == "nt":  # pragma: no cover
        return env_dir / "Scripts" / "python.exe"
    return env_dir / "bin" / "python"


def _script_path(script: str) -> Path:
    """The shipped peer script ``aivc/evaluate/peers/<script>.py``."""
    folder = Path(str(resources.files("aivc.evaluate") / "peers"))
    known = sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))
    check_known(
        [script],
        known,
        what="peer script",
        known_as=f"scripts in {folder}",
        error=ValueError,
    )
    return folder / f"{script}.py"


def _tail(text: str, n: int = _TAIL_LINES) -> str:
    lines = text.strip().splitlines()
    return "\n".join(lines[-n:])


def _read_ready(env_dir: Path) -> dict[str, Any] | None:
    path = env_dir / READY_FILE
    if not path.is_file() or not _env_python(env_dir).exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def constraints_text() -> str:
    """The content of every peer environment's pip constraints file."""
    return (
        "# every pip call of an aivc peer environment gets this file with -c:\n"
        "# torch stays the CPU build instead of the CUDA one a peer's unpinned torch pulls in\n"
        f"{TORCH_REQUIREMENT}\n"
    )


def _clean_env() -> dict[str, str]:
    """The environment variables for a peer's process: aivc's own environment left out."""
    env = dict(os.environ)
    for key in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "CONDA_PREFIX"):
        env.pop(key, None)
    return env


def _pip_install(python: Path, packages: Sequence[str], constraints: Path, log: Path) -> None:
    """``python -m pip install -c CONSTRAINTS PACKAGES``, its output appended to ``log``.

    Raises :class:`PeerInstallError` with the end of pip's output when pip fails.
    """
    cmd = [str(python), "-m", "pip", "install", "--no-input", "-c", str(constraints), *packages]
    logger.debug("running %s", " ".join(cmd))
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=_clean_env(), check=False
        )
    if proc.returncode != 0:
        msg = (
            f"pip could not install {', '.join(packages)} with {python} "
            f"(exit status {proc.returncode}); the environment is not marked ready. "
            f"Fix the cause and run the install again. The last lines of pip's output "
            f"(all of it is in {log}):\n{_tail(log.read_text())}"
        )
        raise PeerInstallError(msg)


def _folder_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            p = Path(root) / f
            if not p.is_symlink():
                total += p.stat().st_size
    return total


def install_peer(name: str, *, force: bool = False) -> Path:
    """Create the virtual environment of peer ``name`` and install its packages.

    The environment is ``<peer_root()>/<name>/``, made with ``python -m venv``
    from the interpreter running aivc (nothing in it is upgraded beyond what
    the packages need). Every pip call gets the constraints file
    ``<env>/constraints.txt`` holding :data:`TORCH_REQUIREMENT`; pip's output
    goes to ``<env>/install.log``. Then the peer's module must import, and
    ``<env>/ready.json`` is written, atomically, with the installed versions.
    Installs download from the package index: minutes, and up to a few GB.

    Parameters
    ----------
    name
        Registered peer (see :func:`list_peers`).
    force
        Delete the environment and build it anew even when it is ready.

    Returns
    -------
    Path
        The environment's folder.

    Raises
    ------
    UnknownPeerError
        ``name`` is not a registered peer.
    PeerInstallError
        The environment could not be created, pip failed, or the module does
        not import; the message quotes the end of the output. The environment
        is left without its ``ready.json``, so it is never used.
    """
    peer = get_peer(name)
    env_dir = _env_dir(name)
    if not force and _read_ready(env_dir) is not None:
        logger.info(
            "peer %r is already installed in %s (force a new install with --force)", name, env_dir
        )
        return env_dir
    if env_dir.exists():
        logger.info("removing the previous environment %s", env_dir)
        (env_dir / READY_FILE).unlink(missing_ok=True)
        shutil.rmtree(env_dir)
    t0 = time.perf_counter()
    logger.info("creating the virtual environment %s", env_dir)
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "venv", str(env_dir)],
        capture_output=True,
        text=True,
        env=_clean_env(),
        check=False,
    )
    python = _env_python(env_dir)
    if proc.returncode != 0 or not python.exists():
        msg = (
            f"`{sys.executable} -m venv {env_dir}` failed (exit status {proc.returncode}); "
            f"on Debian install the python3-venv package. Its output:\n"
            f"{_tail(proc.stdout + proc.stderr)}"
        )
        raise PeerInstallError(msg)
    constraints = write_text_atomic(env_dir / CONSTRAINTS_FILE, constraints_text())
    log = env_dir / INSTALL_LOG
    logger.info(
        "installing %s with %s (pip's output: %s)",
        ", ".join(peer.packages),
        TORCH_REQUIREMENT,
        log,
    )
    _pip_install(python, peer.packages, constraints, log)
    logger.info("checking that %r imports", peer.module)
    with tempfile.TemporaryDirectory(prefix=".probe-", dir=env_dir) as tmp:
        out = Path(tmp) / "probe.json"
        try:
            _run(python, "probe", ["--import", peer.module, "--out", str(out)], timeout=600)
        except PeerRunError as e:
            msg = (
                f"The packages of the peer {name!r} installed, but its module {peer.module!r} "
                f"does not import, so the environment is not marked ready; pip's output is in "
                f"{log}. {e}"
            )
            raise PeerInstallError(msg) from e
        probe = json.loads(out.read_text())
    seconds = time.perf_counter() - t0
    size = _folder_size(env_dir)
    ready = {
        "format": _READY_FORMAT,
        "peer": peer.name,
        "packages": list(peer.packages),
        "constraints": [TORCH_REQUIREMENT],
        "python": probe["python"],
        "module_version": probe["modules"].get(peer.module, ""),
        "versions": probe["distributions"],
        "install_seconds": round(seconds, 1),
        "size_bytes": size,
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(env_dir / READY_FILE, ready, sort_keys=True)
    logger.info("peer %r is ready in %s (%.0f s, %.0f MB)", name, env_dir, seconds, size / 1e6)
    return env_dir


def _requested_versions(peer: PeerEnv, versions: dict[str, str]) -> dict[str, str]:
    """The versions of the peer's own packages and of torch, from all the installed ones."""
    import re

    def norm(s: str) -> str:
        return re.sub(r"[-_.]+", "-", s).lower()

    by_norm = {norm(k): (k, v) for k, v in versions.items()}
    out = {}
    for req in (*peer.packages, "torch"):
        key = norm(re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0])
        if key in by_norm:
            k, v = by_norm[key]
            out[k] = v
    return out


def peer_status(name: str) -> PeerStatus:
    """Whether peer ``name`` is installed, and the versions of its packages.

    Raises
    ------
    UnknownPeerError
        ``name`` is not a registered peer.
    """
    peer = get_peer(name)
    env_dir = _env_dir(name)
    ready = _read_ready(env_dir)
    if ready is None:
        return PeerStatus(peer=peer, path=env_dir, installed=False)
    return PeerStatus(
        peer=peer,
        path=env_dir,
        installed=True,
        versions=_requested_versions(peer, dict(ready.get("versions", {}))),
        python=str(ready.get("python", "")),
    )


def list_peers() -> list[PeerStatus]:
    """Every registered peer with its status, in name order."""
    return [peer_status(name) for name in sorted(PEERS)]


def _run(
    python: Path, script: str, args: Sequence[str], *, timeout: float | None
) -> subprocess.CompletedProcess[str]:
    path = _script_path(script)
    cmd = [str(python), "-I", str(path), *map(str, args)]
    logger.debug("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=_clean_env(),
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        msg = (
            f"The peer script {script!r} ran past its time limit of {timeout} s and was "
            f"stopped; give it a larger timeout or less data. The last lines it wrote:\n"
            f"{_tail(out)}"
        )
        raise PeerRunError(msg) from e
    if proc.stderr:
        logger.debug("%s wrote:\n%s", script, _tail(proc.stderr, 200))
    if proc.returncode != 0:
        msg = (
            f"The peer script {script!r} failed (exit status {proc.returncode}) with "
            f"{python}. The last lines it wrote:\n{_tail(proc.stdout + proc.stderr)}"
        )
        raise PeerRunError(msg)
    return proc


def check_peer_settings(steps: int | None, n_cells: int) -> None:
    """Raise ``ValueError`` unless ``steps`` (training steps, or ``None`` for the peer's own
    rule) and ``n_cells`` (cells a peer samples per condition) are usable."""
    if steps is not None and int(steps) < 1:
        msg = f"steps must be a positive number of training steps or None. Got {steps}."
        raise ValueError(msg)
    if int(n_cells) < 2:
        msg = f"n_cells must be at least 2. Got {n_cells}."
        raise ValueError(msg)


def run_peer(
    name: str, script: str, args: list[str], *, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the shipped peer script ``script`` with the python of peer ``name``'s environment.

    The script is ``aivc/evaluate/peers/<script>.py``, run in isolated mode
    (``python -I``: neither aivc's environment variables nor its folders are
    seen). Data pass as files named in ``args``.

    Parameters
    ----------
    name
        Registered peer whose environment runs the script.
    script
        Script name, without ``.py``.
    args
        Command-line arguments of the script.
    timeout
        Seconds after which the script is stopped (no limit by default).

    Returns
    -------
    subprocess.CompletedProcess
        The finished process, with its standard output and error as text.

    Raises
    ------
    UnknownPeerError
        ``name`` is not a registered peer.
    PeerNotInstalledError
        The environment is not ready: run ``aivc peers install NAME``.
    ValueError
        No shipped script has that name.
    PeerRunError
        The script exited with an error (the message quotes its last lines) or
        ran past ``timeout``.
    """
    get_peer(name)
    env_dir = _env_dir(name)
    if _read_ready(env_dir) is None:
        msg = (
            f"The peer {name!r} is not installed: its environment {env_dir} is not ready. "
            f"Run `aivc peers install {name}` (it downloads the packages into that "
            f"environment, never into aivc's)."
        )
        raise PeerNotInstalledError(msg)
    return _run(_env_python(env_dir), script, args, timeout=timeout)
