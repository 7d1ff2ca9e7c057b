"""The virtual lab bench page in a real headless Chromium, against a real ``aivc serve``."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
        reason="needs chromium and chromedriver (Debian packages 'chromium', 'chromium-driver')",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(data_dir: Path, tmp_path: Path):
    """A real ``aivc serve`` on a free loopback port, in a subprocess."""
    with _serving(data_dir, tmp_path) as url:
        yield url


@contextmanager
def _serving(data_dir: Path, tmp_path: Path, **env_vars: str) -> Iterator[str]:
    """Run ``aivc serve`` on the workspace ``tmp_path / "ws"``; yields its address.

    ``env_vars`` are set in the server's environment.
    """
    port = _free_port()
    env = {**os.environ, "AIVC_DATA_DIR": str(data_dir), "AIVC_API_TOKEN": "", **env_vars}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aivc.interfaces.cli",
            "serve",
            "--port",
            str(port),
            "--workspace",
            str(tmp_path / "ws"),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/api/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"aivc serve exited: {(tmp_path / 'serve.log').read_text()}")
            time.sleep(0.1)
        else:
            pytest.fail("aivc serve did not start within 30 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture
def browser(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--headless=new",
        "--window-size=1500,1600",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


#: An element's computed text colour and the background colours of it and its ancestors,
#: the element's first.
_COLOURS_JS = """
const el = arguments[0];
const backgrounds = [];
for (let e = el; e; e = e.parentElement) backgrounds.push(getComputedStyle(e).backgroundColor);
return [getComputedStyle(el).color, backgrounds];
"""


def _rgba(css: str) -> tuple[float, float, float, float]:
    """``rgb(r, g, b)`` or ``rgba(r, g, b, a)`` as computed by the browser, channels 0-255."""
    parts = [
        float(v) for v in css[css.index("(") + 1 : css.index(")")].replace("/", ",").split(",")
    ]
    return (*parts[:3], parts[3] if len(parts) > 3 else 1.0)


def _over(top: tuple[float, ...], below: tuple[float, float, float]) -> tuple[float, float, float]:
    r, g, b, a = top
    return tuple(a * c + (1 - a) * d for c, d in zip((r, g, b), below, strict=True))


def _luminance(rgb: tuple[float, float, float]) -> float:
    def linear(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _contrast_ratio(text: str, backgrounds: list[str]) -> float:
    """WCAG contrast ratio of ``text`` over the backgrounds (element first) on a white canvas."""
    below = (255.0, 255.0, 255.0)
    for css in reversed(backgrounds):
        below = _over(_rgba(css), below)
    lum = sorted((_luminance(_over(_rgba(text), below)), _luminance(below)))
    return (lum[1] + 0.05) / (lum[0] + 0.05)


def test_contrast_ratio_of_known_colours() -> None:
    assert _contrast_ratio("rgb(0, 0, 0)", ["rgba(0, 0, 0, 0)"]) == pytest.approx(21.0)
    assert _contrast_ratio("rgb(255, 255, 255)", ["rgb(255, 255, 255)"]) == pytest.approx(1.0)
    # #767676 on white is the lightest grey that passes AA: 4.54
    assert _contrast_ratio("rgb(118, 118, 118)", ["rgba(0, 0, 0, 0)"]) == pytest.approx(
        4.54, abs=0.01
    )
    # a half-transparent black layer over white is mid grey
    assert _contrast_ratio("rgb(0, 0, 0)", ["rgba(0, 0, 0, 0.5)"]) < 6


def test_bench_fit_predict_and_screenshot(server: str, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(server + "/")
    # the page loads plotly.js from this server, not from a CDN
    scripts = [s.get_attribute("src") for s in browser.find_elements(By.TAG_NAME, "script")]
    assert all(s.startswith(server) for s in scripts if s), scripts
    wait.until(lambda d: len(Select(d.find_element(By.ID, "dataset")).options) > 0)
    assert browser.execute_script("return typeof Plotly") == "object"
    # a first visit, nothing fitted or chosen yet: the page starts on the main dataset and model
    first = {
        key: Select(browser.find_element(By.ID, key)).first_selected_option.get_attribute("value")
        for key in ("dataset", "instrument")
    }
    assert first == {"dataset": "papalexi2021", "instrument": "aivc-perturb"}

    Select(browser.find_element(By.ID, "dataset")).select_by_value("papalexi2021")
    Select(browser.find_element(By.ID, "instrument")).select_by_value("conformal")
    browser.find_element(By.ID, "fit-btn").click()
    # the fit runs as a background job; the page polls it and selects the new model
    wait.until(lambda d: Select(d.find_element(By.ID, "model")).options)
    wait.until(ec.text_to_be_present_in_element((By.ID, "model-info"), "held out"))
    info = browser.find_element(By.ID, "model-info").text
    heldout = info.split("held out: ")[1].rstrip(".").split(", ")[0]

    wait.until(
        lambda d: (
            d.execute_script("return (document.getElementById('embedding').data || []).length") > 0
        )
    )
    box = browser.find_element(By.ID, "pert-input")
    box.clear()
    box.send_keys(heldout)
    browser.find_element(By.ID, "predict-btn").click()
    wait.until(
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, "#top-table tbody tr")
            and d.find_element(By.CSS_SELECTOR, "#top-table tbody tr").get_attribute(
                "data-perturbation"
            )
            == heldout
        )
    )
    rows = browser.find_elements(By.CSS_SELECTOR, "#top-table tbody tr")
    assert len(rows) == 20
    # intervals are shown for a model with the 'uncertainty' capability
    assert rows[0].find_elements(By.TAG_NAME, "td")[2].text.startswith("[")
    # the volcano plot and the predicted-vs-observed plot name the perturbation
    wait.until(ec.text_to_be_present_in_element((By.ID, "volcano"), heldout))
    wait.until(ec.text_to_be_present_in_element((By.ID, "pred-obs"), "held out"))
    n_points = browser.execute_script(
        "const g = document.getElementById('volcano');"
        "return g.data.reduce((n, t) => n + t.x.length, 0);"
    )
    assert n_points == 299  # every measured gene of papalexi2021
    # the measured cells of the perturbation are highlighted in the embedding
    names = browser.execute_script(
        "return document.getElementById('embedding').data.map((t) => t.name);"
    )
    assert f"{heldout} (measured cells)" in names and "control" in names
    # and the predicted and observed mean states are drawn as arrows from the control mean
    assert {"control → predicted mean", "control → observed mean"} <= set(names)
    summary = browser.find_element(By.ID, "pred-summary").text
    assert heldout in summary and "held out of training" in summary
    wait.until(
        lambda d: (
            d.execute_script("return (document.getElementById('calibration').data || []).length")
            == 2
        )
    )

    # a screen under the prefilled objective and suggested next experiments
    assert browser.find_element(By.ID, "objective").get_attribute("value").startswith("down:")
    browser.find_element(By.ID, "screen-btn").click()
    browser.find_element(By.ID, "propose-btn").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#screen-table tbody tr")) == 10)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#proposal-table tbody tr")) == 10)
    proposed = [
        r.find_elements(By.TAG_NAME, "td")[1].text
        for r in browser.find_elements(By.CSS_SELECTOR, "#proposal-table tbody tr")
    ]
    assert heldout not in proposed  # measured perturbations are not proposed again

    shot = tmp_path / "bench.png"
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1500, min(int(height) + 140, 2400))
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000
    target = os.environ.get("AIVC_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / "bench.png")

    # upload a new measurement of the held-out knockout; the prediction is then compared with it
    from aivc.data import load

    raw = load("papalexi2021")
    labels = raw.obs["perturbation"].astype(str).to_numpy()
    rows = np.concatenate(
        [np.flatnonzero(labels == "control")[:300], np.flatnonzero(labels == heldout)[:150]]
    )
    upload = tmp_path / "round1.h5ad"
    raw[rows].copy().write_h5ad(upload)
    browser.find_element(By.ID, "upload-file").send_keys(str(upload))
    browser.find_element(By.ID, "upload-btn").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "upload-note"), "stored round1.h5ad"))
    assert "450 cells, 1 perturbations" in browser.find_element(By.ID, "upload-note").text
    browser.find_element(By.ID, "predict-btn").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "pred-summary"), "measured in an upload"))
    assert "(150 cells" in browser.find_element(By.ID, "pred-summary").text


@pytest.fixture
def server_with_models(data_dir: Path, tmp_path: Path):
    """``aivc serve`` on a workspace that already holds two models of papalexi2021.

    A linear baseline fitted first and the main model (``aivc-perturb``, in a light
    configuration so the fit takes seconds) fitted second.
    """
    from aivc.interfaces.api import Workspace

    ws = Workspace(tmp_path / "ws")
    fits = [
        ("a-linear", "linear", {}),
        (
            "main",
            "aivc-perturb",
            {"embeddings": "go", "ridge": 1.0, "interactions": False, "cell_detection": False},
        ),
    ]
    for name, instrument, params in fits:
        job = ws.submit_fit(dataset="papalexi2021", instrument=instrument, params=params, name=name)
        done = ws.jobs.wait(job["id"], timeout=300)
        assert done.state == "succeeded", done.error
    ws.shutdown()
    with _serving(data_dir, tmp_path) as url:
        yield url


def test_failed_prediction_shows_the_error_in_the_result_area_and_clears_stale_plots(
    server_with_models: str, browser, tmp_path: Path
) -> None:
    """A failed request left the last perturbation's plots up, the error in the header only."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(server_with_models + "/")
    wait.until(ec.text_to_be_present_in_element((By.ID, "model-info"), "held out"))
    # the page starts on the main model and its dataset, not on the first of each list
    assert (
        Select(browser.find_element(By.ID, "model")).first_selected_option.get_attribute("value")
        == "main"
    )
    assert (
        Select(browser.find_element(By.ID, "dataset")).first_selected_option.get_attribute("value")
        == "papalexi2021"
    )
    assert (
        Select(browser.find_element(By.ID, "instrument")).first_selected_option.get_attribute(
            "value"
        )
        == "aivc-perturb"
    )
    wait.until(
        lambda d: (
            d.execute_script("return (document.getElementById('embedding').data || []).length") > 0
        )
    )

    def predict(label: str) -> None:
        box = browser.find_element(By.ID, "pert-input")
        box.clear()
        box.send_keys(label)
        browser.find_element(By.ID, "predict-btn").click()

    predict("IFNGR1")
    wait.until(ec.text_to_be_present_in_element((By.ID, "volcano"), "IFNGR1"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#top-table tbody tr")) == 20
    traces = browser.execute_script(
        "return document.getElementById('embedding').data"
        ".map((t) => [t.name, t.meta || '', (t.marker && t.marker.color) || '']);"
    )
    highlight = [c for name, _, c in traces if name == "IFNGR1 (measured cells)"]
    groups = {c for _, meta, c in traces if meta != "overlay"}
    # the measured cells stand out: their colour is no perturbation group's
    assert highlight and highlight[0] not in groups, traces
    assert browser.find_element(By.ID, "pred-error").is_displayed() is False

    predict("NOTAGENE99")
    wait.until(lambda d: d.find_element(By.ID, "pred-error").is_displayed())
    error = browser.find_element(By.ID, "pred-error")
    assert "NOTAGENE99" in error.text and "Unknown gene" in error.text
    assert error.get_attribute("role") == "alert"
    # readable: WCAG AA contrast (4.5:1) between the message and what it is drawn on
    text, backgrounds = browser.execute_script(_COLOURS_JS, error)
    assert _contrast_ratio(text, backgrounds) >= 4.5, (text, backgrounds)
    # the error sits in the result area, above the (now empty) plots
    plots = browser.find_element(By.CSS_SELECTOR, "#predict .plots")
    assert error.location["y"] < plots.location["y"]
    assert browser.find_element(By.ID, "predict").find_element(By.ID, "pred-error") == error
    # nothing of IFNGR1 is left to be read as NOTAGENE99's result
    for plot in ("volcano", "pred-obs"):
        n = browser.execute_script(f"return (document.getElementById('{plot}').data || []).length")
        assert n == 0, plot
    assert "IFNGR1" not in browser.find_element(By.ID, "volcano").text
    assert browser.find_elements(By.CSS_SELECTOR, "#top-table tbody tr") == []
    assert browser.find_element(By.ID, "pred-summary").text == ""
    metas = browser.execute_script(
        "return document.getElementById('embedding').data.map((t) => t.meta || '');"
    )
    assert "overlay" not in metas
    shot = tmp_path / "bench-error.png"
    browser.execute_script("document.getElementById('predict').scrollIntoView()")
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000

    # the next good request hides the error again
    predict("STAT1")
    wait.until(ec.text_to_be_present_in_element((By.ID, "volcano"), "STAT1"))
    assert browser.find_element(By.ID, "pred-error").is_displayed() is False


def test_compound_dose_response_on_the_page(server: str, browser, tmp_path: Path) -> None:
    pytest.importorskip("rdkit")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 90)
    browser.get(server + "/")
    wait.until(lambda d: len(Select(d.find_element(By.ID, "chem-dataset")).options) > 0)
    browser.find_element(By.ID, "chem-fit-btn").click()
    wait.until(lambda d: len(Select(d.find_element(By.ID, "chem-model")).options) > 0)
    # a compound never measured, by structure: curves with interval bands, no measured points
    box = browser.find_element(By.ID, "chem-compound")
    box.clear()
    box.send_keys("CC(=O)Oc1ccccc1C(=O)O")
    browser.find_element(By.ID, "chem-predict-btn").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "chem-summary"), "new compound"))
    n_traces = browser.execute_script("return document.getElementById('dose-response').data.length")
    assert n_traces == 6 * 3  # six features: upper and lower band, and the curve
    # a measured compound also shows its measured doses
    box.clear()
    box.send_keys("bortezomib")
    browser.find_element(By.ID, "chem-predict-btn").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "chem-summary"), "measured compound"))
    names = browser.execute_script(
        "return document.getElementById('dose-response').data.map((t) => t.name || '')"
    )
    assert any(n.endswith("(measured)") for n in names)
    # an invalid structure: a clear error where the plot would be
    box.clear()
    box.send_keys("C1CC(")
    browser.find_element(By.ID, "chem-predict-btn").click()
    wait.until(ec.visibility_of_element_located((By.ID, "chem-error")))
    assert "SMILES" in browser.find_element(By.ID, "chem-error").text
    browser.save_screenshot(str(tmp_path / "compounds.png"))


def test_time_slider_shows_the_predicted_population(server: str, browser) -> None:
    pytest.importorskip("ot")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 90)
    browser.get(server + "/")
    wait.until(lambda d: len(Select(d.find_element(By.ID, "time-dataset")).options) > 0)
    Select(browser.find_element(By.ID, "time-dataset")).select_by_value("schiebinger2019")
    browser.find_element(By.ID, "time-fit-btn").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "time-summary"), "measured times"))
    names = browser.execute_script(
        "return document.getElementById('time-cells').data.map((t) => t.name)"
    )
    assert names[:3] == ["measured 10", "measured 10.5", "measured 11"] and names[3].startswith(
        "predicted"
    )
    # move the slider beyond the last measured day: a forecast
    browser.execute_script(
        "const s = document.getElementById('time-slider'); s.value = s.max;"
        "s.dispatchEvent(new Event('change'));"
    )
    wait.until(ec.text_to_be_present_in_element((By.ID, "time-summary"), "forecast beyond"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#time-genes tbody tr")) == 10


@pytest.fixture
def server_without_data(tmp_path: Path):
    """``aivc serve`` with an empty data folder: only the simulated tissue is offered.

    Torch runs on one thread: where the cores are shared, more threads mostly wait on each other.
    """
    empty = tmp_path / "no-data"
    empty.mkdir()
    with _serving(empty, tmp_path, OMP_NUM_THREADS="1") as url:
        yield url


#: Points drawn in the tissue map, and the names of its legend entries.
_TISSUE_JS = """
const g = document.getElementById('tissue-map');
if (!g.data) return null;
return [g.data.reduce((n, t) => n + t.x.length, 0),
        g.data.filter((t) => t.showlegend !== false).map((t) => t.name),
        Array.from(g.querySelectorAll('.legend .traces')).length,
        g.layout.yaxis.scaleanchor, g.layout.yaxis2.scaleanchor];
"""


def test_tissue_panel_draws_the_virtual_tissue(server_without_data: str, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(server_without_data + "/")
    wait.until(ec.text_to_be_present_in_element((By.ID, "tissue-summary"), "cell types"))
    dataset = Select(browser.find_element(By.ID, "tissue-dataset"))
    assert [o.get_attribute("value") for o in dataset.options] == ["virtual-tissue"]
    colour = Select(browser.find_element(By.ID, "tissue-color"))
    assert [o.get_attribute("value") for o in colour.options] == ["cell_type", "niche", "region"]
    n_points, legend, n_entries, anchor1, anchor2 = browser.execute_script(_TISSUE_JS)
    # every cell of both sections, one legend entry per cell type, x and y on one scale
    assert n_points == 3000
    assert legend == ["type_A", "type_B", "type_C", "type_D", "type_E"] and n_entries == 5
    assert (anchor1, anchor2) == ("x", "x2")
    assert "section S2" in browser.find_element(By.ID, "tissue-map").text

    colour.select_by_value("region")
    wait.until(ec.text_to_be_present_in_element((By.ID, "tissue-summary"), "4 regions"))
    n_points, legend, n_entries, *_ = browser.execute_script(_TISSUE_JS)
    assert n_points == 3000 and n_entries == 4 and legend[0] == "layer_1"

    colour.select_by_value("niche")
    wait.until(ec.text_to_be_present_in_element((By.ID, "tissue-summary"), "spatial domains"))
    n_points, legend, n_entries, *_ = browser.execute_script(_TISSUE_JS)
    assert n_points == 3000 and legend == [f"niche_{k}" for k in range(1, 6)] and n_entries == 5
    assert browser.find_element(By.ID, "tissue-error").is_displayed() is False
