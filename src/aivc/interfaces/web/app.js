// aivc virtual lab bench: a thin page over the REST API (/api, see /docs).
"use strict";

const $ = (id) => document.getElementById(id);
const PLOT_CONFIG = { responsive: true, displaylogo: false, displayModeBar: false };
// The project's main model, and the dataset to start on when no model of it is fitted yet.
const MAIN_INSTRUMENT = "aivc-perturb";
const MAIN_DATASET = "papalexi2021";
// Perturbation groups of the embedding get these colours; none is the highlight's.
const GROUP_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#393b79", "#8c6d31"];
const CONTROL_COLOUR = "#9e9e9e";
const OTHER_COLOUR = "#cfd8dc";
const HIGHLIGHT_COLOUR = "#ff1744";
const state = { token: localStorage.getItem("aivc-token") || "", job: null, model: null, info: null, caps: {} };

function setStatus(text, error = false) {
  const s = $("status");
  s.textContent = text;
  s.className = error ? "error" : "";
}

// An error shown where the result would have been (a box that screen readers announce).
function showError(id, message) {
  const box = $(id);
  box.textContent = message;
  box.hidden = false;
}

function hideError(id) {
  const box = $(id);
  box.textContent = "";
  box.hidden = true;
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(options.json);
  }
  const r = await fetch("/api" + path, Object.assign({}, options, { headers }));
  if (r.status === 401) {
    $("auth").hidden = false;
    throw new Error("this server needs a token");
  }
  if (r.status === 204) return null;
  const body = await r.json();
  if (!r.ok) {
    const d = body.detail;
    throw new Error(typeof d === "string" ? d : JSON.stringify(d));
  }
  return body;
}

function option(select, value, text) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text || value;
  select.appendChild(o);
}

function fmt(v, digits = 3) {
  return v === null || v === undefined ? "–" : Number(v).toFixed(digits);
}

// ---------------------------------------------------------------- setup
// The model to start with: the first of the main instrument, else the first fitted one.
function mainModel(models) {
  return models.find((x) => x.instrument === MAIN_INSTRUMENT) || models[0] || null;
}

async function loadLists() {
  const [datasets, instruments, models] = await Promise.all([api("/datasets"), api("/instruments"), api("/models")]);
  const ds = $("dataset");
  ds.innerHTML = "";
  datasets.forEach((d) => option(ds, d.name, d.name));
  const ins = $("instrument");
  ins.innerHTML = "";
  instruments.forEach((i) => {
    state.caps[i.name] = i.capabilities;
    option(ins, i.name, i.name + (i.capabilities.includes("uncertainty") ? " (intervals)" : ""));
  });
  if (state.caps[MAIN_INSTRUMENT]) ins.value = MAIN_INSTRUMENT;
  // start on the dataset of the main model; without one, on the main dataset
  const names = datasets.map((d) => d.name);
  const main = mainModel(models.filter((x) => names.includes(x.dataset)));
  if (main) ds.value = main.dataset;
  else if (names.includes(MAIN_DATASET)) ds.value = MAIN_DATASET;
  await loadModels(main ? main.id : undefined, models);
}

async function loadModels(select, known) {
  const models = known || (await api("/models"));
  const m = $("model");
  m.innerHTML = "";
  models.forEach((x) => option(m, x.id, `${x.id} (${x.instrument} on ${x.dataset})`));
  const chosen = select || (mainModel(models) || {}).id;
  if (chosen) m.value = chosen;
  if (m.value) await chooseModel(m.value);
}

async function chooseModel(id) {
  state.model = id;
  clearPrediction();
  state.info = await api("/models/" + encodeURIComponent(id));
  const i = state.info;
  if ([...$("dataset").options].some((o) => o.value === i.dataset)) $("dataset").value = i.dataset;
  $("model-info").textContent =
    `${i.instrument} fitted on ${i.dataset} (${i.train_perturbations.length} training perturbations, ` +
    `${i.n_genes} genes); held out: ${i.heldout_perturbations.join(", ") || "none"}.`;
  const ctx = $("context");
  ctx.innerHTML = "";
  i.contexts.forEach((c) => option(ctx, c));
  ctx.hidden = i.contexts.length < 2;
  if (!$("pert-input").value && i.heldout_perturbations.length) {
    $("pert-input").value = i.heldout_perturbations[0];
  }
  setStatus(`model ${id} ready`);
  await Promise.all([drawEmbedding(i.dataset), drawCalibration()]);
}

async function drawEmbedding(dataset) {
  const e = await api(`/datasets/${encodeURIComponent(dataset)}/embedding?n_cells=2000`);
  state.embedding = e;
  const counts = {};
  e.perturbation.forEach((p) => (counts[p] = (counts[p] || 0) + 1));
  const top = Object.keys(counts).sort((a, b) => counts[b] - counts[a]).slice(0, 10);
  const groups = {};
  e.perturbation.forEach((p, k) => {
    const g = top.includes(p) ? p : "other";
    (groups[g] = groups[g] || []).push(k);
  });
  const control = state.info ? state.info.control_label : null;
  let next = 0;
  const colour = (g) => (g === control ? CONTROL_COLOUR : g === "other" ? OTHER_COLOUR : GROUP_COLOURS[next++ % GROUP_COLOURS.length]);
  const traces = Object.keys(groups).map((g) => ({
    type: "scatter", mode: "markers", name: g,
    x: groups[g].map((k) => e.x[k]), y: groups[g].map((k) => e.y[k]),
    marker: { size: 4, opacity: 0.6, color: colour(g) },
  }));
  Plotly.react("embedding", traces, {
    title: { text: `${dataset}: ${e.n_cells} cells (${e.method})`, font: { size: 13 } },
    margin: { t: 40, l: 40, r: 10, b: 40 }, legend: { font: { size: 10 }, orientation: "h", y: -0.18 },
    xaxis: { title: { text: "PC1" } }, yaxis: { title: { text: "PC2" } },
  }, PLOT_CONFIG);
}

async function fit() {
  const body = { dataset: $("dataset").value, instrument: $("instrument").value };
  try {
    const job = await api("/models", { method: "POST", json: body });
    state.job = job.id;
    $("cancel-btn").disabled = false;
    $("fit-btn").disabled = true;
    pollJob();
  } catch (err) {
    setStatus("fit refused: " + err.message, true);
  }
}

async function pollJob() {
  if (!state.job) return;
  const j = await api("/jobs/" + state.job);
  $("fit-progress").value = j.progress;
  $("fit-message").textContent = `${j.state}: ${j.message}`;
  if (["succeeded", "failed", "cancelled"].includes(j.state)) {
    state.job = null;
    $("cancel-btn").disabled = true;
    $("fit-btn").disabled = false;
    if (j.state === "succeeded") await loadModels(j.result.id);
    else setStatus(`fit ${j.state}${j.error ? ": " + j.error : ""}`, j.state === "failed");
    return;
  }
  setTimeout(pollJob, 400);
}

async function cancelJob() {
  if (state.job) await api("/jobs/" + state.job, { method: "DELETE" }).catch((e) => setStatus(e.message, true));
}

// ---------------------------------------------------------------- predict
let suggestTimer = null;
function suggest() {
  clearTimeout(suggestTimer);
  suggestTimer = setTimeout(async () => {
    if (!state.model) return;
    const q = $("pert-input").value;
    const items = await api(`/models/${encodeURIComponent(state.model)}/suggest?limit=30&q=${encodeURIComponent(q)}`);
    const dl = $("pert-options");
    dl.innerHTML = "";
    items.forEach((s) => option(dl, s));
  }, 150);
}

// Remove the results of the last prediction: plots, table, summary and the embedding overlays.
function clearPrediction() {
  ["volcano", "pred-obs"].forEach((id) => {
    Plotly.purge(id);
    $(id).innerHTML = "";
  });
  $("top-table").querySelector("tbody").innerHTML = "";
  $("pred-summary").textContent = "";
  removeOverlays();
}

async function predict() {
  const pert = $("pert-input").value.trim();
  if (!state.model || !pert) return;
  const body = { perturbations: [pert], top_k: 20, all_genes: true };
  if (!$("context").hidden) body.context = $("context").value;
  setStatus(`predicting ${pert}…`);
  hideError("pred-error");
  let out;
  try {
    out = await api(`/models/${encodeURIComponent(state.model)}/predict`, { method: "POST", json: body });
  } catch (err) {
    // the last perturbation's results would read as this one's: clear them, say why here
    clearPrediction();
    showError("pred-error", `could not predict ${pert}: ${err.message}`);
    setStatus(`prediction of ${pert} failed`, true);
    return;
  }
  const p = out.predictions[0];
  const where = p.measured
    ? `measured${p.observed_source && p.observed_source.startsWith("upload:") ? " in an upload" : ""} (${p.n_observed_cells} cells${p.in_training ? ", in training" : p.heldout ? ", held out of training" : ""})`
    : "not measured";
  $("pred-summary").textContent =
    `${p.perturbation} with ${out.instrument}: ${where}` +
    (p.pearson_observed !== null && p.pearson_observed !== undefined ? `; Pearson r with the observed change ${fmt(p.pearson_observed)}` : "") +
    (p.interval_coverage !== null && p.interval_coverage !== undefined ? `; ${fmt(100 * p.interval_coverage, 0)}% of genes inside the ${out.level} interval` : "");
  highlightCells(p.perturbation, p.embedding);
  drawVolcano(out, p);
  drawPredObs(p);
  fillTop(out, p);
  if (!$("objective").value && p.top_genes.length) $("objective").value = "down:" + p.top_genes[0].gene;
  setStatus(`predicted ${p.perturbation}`);
}

function removeOverlays() {
  const g = $("embedding");
  if (!g.data) return;
  const old = g.data.map((t, k) => (t.meta === "overlay" ? k : -1)).filter((k) => k >= 0);
  if (old.length) Plotly.deleteTraces(g, old);
}

function highlightCells(pert, emb) {
  const e = state.embedding;
  const g = $("embedding");
  if (!e || !g.data) return;
  const keep = e.perturbation.map((p, k) => (p === pert ? k : -1)).filter((k) => k >= 0);
  const trace = {
    type: "scatter", mode: "markers", name: `${pert} (measured cells)`,
    x: keep.map((k) => e.x[k]), y: keep.map((k) => e.y[k]),
    marker: { size: 7, color: HIGHLIGHT_COLOUR, opacity: 0.9, line: { color: "#000", width: 1 } },
  };
  removeOverlays();
  const overlays = [];
  if (keep.length) overlays.push(Object.assign(trace, { meta: "overlay" }));
  if (emb) {
    const arrow = (to, name, dash) => ({
      type: "scatter", mode: "lines+markers", name, meta: "overlay",
      x: [emb.control[0], to[0]], y: [emb.control[1], to[1]],
      line: { color: "#111", width: 3, dash }, marker: { size: [6, 12], color: "#111", symbol: ["circle", "diamond"] },
    });
    overlays.push(arrow(emb.predicted, "control → predicted mean", "solid"));
    if (emb.observed) overlays.push(arrow(emb.observed, "control → observed mean", "dot"));
  }
  if (overlays.length) Plotly.addTraces(g, overlays);
}

function drawVolcano(out, p) {
  const hw = out.has_intervals ? p.upper.map((u, k) => (u - p.lower[k]) / 2) : null;
  const y = out.has_intervals ? p.delta.map((d, k) => Math.abs(d) / Math.max(hw[k], 1e-9)) : p.delta.map(Math.abs);
  const topSet = new Set(p.top_genes.map((g) => g.gene));
  const idx = p.genes.map((_, k) => k);
  const trace = (keep, name, color) => ({
    type: "scatter", mode: "markers", name,
    x: idx.filter(keep).map((k) => p.delta[k]), y: idx.filter(keep).map((k) => y[k]),
    text: idx.filter(keep).map((k) => p.genes[k]), hovertemplate: "%{text}: %{x:.3f}<extra></extra>",
    marker: { size: 6, color },
  });
  Plotly.react("volcano", [
    trace((k) => !topSet.has(p.genes[k]), "other genes", "#9fb3c8"),
    trace((k) => topSet.has(p.genes[k]), "top 20", "#e53935"),
  ], {
    title: { text: `predicted change: ${p.perturbation}`, font: { size: 13 } },
    margin: { t: 40, l: 50, r: 10, b: 40 },
    xaxis: { title: { text: "predicted change (log-normalised)" } },
    yaxis: { title: { text: out.has_intervals ? `|change| / interval half-width (${out.level})` : "|predicted change|" } },
  }, PLOT_CONFIG);
}

function drawPredObs(p) {
  if (!p.measured) {
    Plotly.react("pred-obs", [], {
      title: { text: `${p.perturbation} was not measured: no observed change to compare`, font: { size: 13 } },
      xaxis: { visible: false }, yaxis: { visible: false }, margin: { t: 40 },
    }, PLOT_CONFIG);
    return;
  }
  const k = p.genes.map((_, i) => i).filter((i) => p.observed[i] !== null);
  const obs = k.map((i) => p.observed[i]);
  const pred = k.map((i) => p.delta[i]);
  const lim = Math.max(...obs.map(Math.abs), ...pred.map(Math.abs)) * 1.05 || 1;
  const traces = [{
    type: "scatter", mode: "markers", name: "genes", x: obs, y: pred, text: k.map((i) => p.genes[i]),
    hovertemplate: "%{text}<br>observed %{x:.3f}<br>predicted %{y:.3f}<extra></extra>",
    marker: { size: 6, color: "#1e88e5", opacity: 0.7 },
  }, { type: "scatter", mode: "lines", name: "y = x", x: [-lim, lim], y: [-lim, lim], line: { color: "#000", width: 1 } }];
  if (p.lower) {
    traces[0].error_y = { type: "data", symmetric: false, array: k.map((i) => p.upper[i] - p.delta[i]), arrayminus: k.map((i) => p.delta[i] - p.lower[i]), thickness: 0.6, width: 0, color: "#90caf9" };
  }
  Plotly.react("pred-obs", traces, {
    title: { text: `predicted vs observed: ${p.perturbation}${p.heldout ? " (held out)" : p.in_training ? " (in training)" : ""}`, font: { size: 13 } },
    margin: { t: 40, l: 50, r: 10, b: 40 },
    xaxis: { title: { text: "observed change" } }, yaxis: { title: { text: "predicted change" } },
  }, PLOT_CONFIG);
}

function fillTop(out, p) {
  const tb = $("top-table").querySelector("tbody");
  tb.innerHTML = "";
  p.top_genes.forEach((g) => {
    const tr = document.createElement("tr");
    const cells = [g.gene, fmt(g.delta), out.has_intervals ? `[${fmt(g.lower)}, ${fmt(g.upper)}]` : "–", fmt(g.observed)];
    cells.forEach((c, k) => {
      const td = document.createElement("td");
      td.textContent = c;
      if (k > 0) td.className = "num";
      tr.appendChild(td);
    });
    tr.dataset.perturbation = p.perturbation;
    tb.appendChild(tr);
  });
}

// ---------------------------------------------------------------- calibration, screen, proposals
async function drawCalibration() {
  const caps = state.caps[state.info.instrument] || [];
  if (!caps.includes("uncertainty")) {
    Plotly.purge("calibration");
    $("calibration").innerHTML = "";
    $("calibration-note").textContent = `${state.info.instrument} gives no intervals; fit a model with the 'uncertainty' capability (e.g. conformal) for a calibration curve.`;
    return;
  }
  try {
    Plotly.purge("calibration");
    const c = await api(`/models/${encodeURIComponent(state.model)}/calibration`);
    Plotly.react("calibration", [
      { type: "scatter", mode: "lines+markers", name: state.info.instrument, x: c.levels, y: c.coverage },
      { type: "scatter", mode: "lines", name: "ideal", x: [0, 1], y: [0, 1], line: { dash: "dot", color: "#000" } },
    ], {
      title: { text: `interval calibration on ${c.n_perturbations} held-out perturbations`, font: { size: 13 } },
      margin: { t: 40, l: 50, r: 10, b: 40 },
      xaxis: { title: { text: "nominal level" }, range: [0.4, 1] }, yaxis: { title: { text: "observed coverage" }, range: [0.4, 1] },
    }, PLOT_CONFIG);
    $("calibration-note").textContent = "";
  } catch (err) {
    $("calibration").innerHTML = "";
    $("calibration-note").textContent = "no calibration: " + err.message;
  }
}

function fillRanked(tableId, rows, cols) {
  const tb = $(tableId).querySelector("tbody");
  tb.innerHTML = "";
  rows.forEach((r, k) => {
    const tr = document.createElement("tr");
    [String(k + 1), ...cols.map((c) => (typeof r[c] === "number" ? fmt(r[c]) : String(r[c] ?? "–")))].forEach((v) => {
      const td = document.createElement("td");
      td.textContent = v;
      tr.appendChild(td);
    });
    tb.appendChild(tr);
  });
}

async function screen() {
  if (!state.model) return;
  $("screen-note").textContent = "screening…";
  hideError("screen-error");
  try {
    const objective = $("objective").value.trim();
    const body = { objective, top_k: 10 };
    if (!$("context").hidden) body.context = $("context").value;
    const out = await api(`/models/${encodeURIComponent(state.model)}/screen`, { method: "POST", json: body });
    fillRanked("screen-table", out.ranking, ["perturbation", "score", "score_lower", "effect_size"]);
    $("screen-note").textContent = out.description || "";
  } catch (err) {
    $("screen-table").querySelector("tbody").innerHTML = "";
    $("screen-note").textContent = "";
    showError("screen-error", "screen unavailable: " + err.message);
  }
}

async function propose() {
  if (!state.model) return;
  $("proposal-note").textContent = "proposing…";
  hideError("proposal-error");
  try {
    const body = { batch_size: 10, strategy: $("strategy").value };
    if (!$("context").hidden) body.context = $("context").value;
    const out = await api(`/models/${encodeURIComponent(state.model)}/proposals`, { method: "POST", json: body });
    fillRanked("proposal-table", out.proposals, ["perturbation", "predicted_effect"]);
    $("proposal-note").textContent = out.description || "";
  } catch (err) {
    $("proposal-table").querySelector("tbody").innerHTML = "";
    $("proposal-note").textContent = "";
    showError("proposal-error", "suggestions unavailable: " + err.message);
  }
}

// ---------------------------------------------------------------- uploads
async function upload() {
  const file = $("upload-file").files[0];
  const dataset = state.info ? state.info.dataset : $("dataset").value;
  if (!file || !dataset) return;
  $("upload-note").textContent = `uploading ${file.name}…`;
  try {
    const meta = await api(`/datasets/${encodeURIComponent(dataset)}/measurements?filename=${encodeURIComponent(file.name)}`, {
      method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" },
    });
    $("upload-note").textContent =
      `stored ${meta.filename}: ${meta.n_cells} cells, ${meta.perturbations.length} perturbations ` +
      `(${meta.perturbations.slice(0, 5).join(", ")}${meta.perturbations.length > 5 ? ", …" : ""}); predictions now compare with it.`;
  } catch (err) {
    $("upload-note").textContent = "upload refused: " + err.message;
  }
}

// ---------------------------------------------------------------- wiring
// ---------------------------------------------------------------- compounds
async function loadCompoundLists(select) {
  const [datasets, models] = await Promise.all([api("/compound-datasets"), api("/compound-models")]);
  const ds = $("chem-dataset");
  ds.innerHTML = "";
  datasets.forEach((d) => option(ds, d.name, d.name));
  const ms = $("chem-model");
  ms.innerHTML = "";
  models.forEach((m) => option(ms, m.id, `${m.id} (${m.n_compounds} compounds)`));
  if (select) ms.value = select;
  const chosen = models.find((m) => m.id === ms.value);
  const opts = $("chem-options");
  opts.innerHTML = "";
  (chosen ? chosen.compounds : []).forEach((c) => option(opts, c));
}

async function fitCompoundModel() {
  hideError("chem-error");
  setStatus("fitting aivc-chem…");
  try {
    const m = await api("/compound-models", { method: "POST", json: { dataset: $("chem-dataset").value } });
    await loadCompoundLists(m.id);
    setStatus(`fitted ${m.id}: ${m.chosen.seen} for new doses, ${m.chosen.unseen} for new compounds`);
  } catch (err) {
    showError("chem-error", err.message);
    setStatus("fit failed", true);
  }
}

async function predictCompound() {
  hideError("chem-error");
  const model = $("chem-model").value;
  if (!model) {
    showError("chem-error", "fit a chemical model first");
    return;
  }
  const doses = $("chem-doses").value.split(",").map((d) => Number(d.trim()));
  if (doses.some((d) => !Number.isFinite(d))) {
    showError("chem-error", "doses must be comma-separated numbers");
    return;
  }
  try {
    const out = await api(`/compound-models/${encodeURIComponent(model)}/predict`, {
      method: "POST",
      json: { compound: $("chem-compound").value.trim(), doses, top_k: 6 },
    });
    drawDoseResponse(out);
    $("chem-summary").textContent = `${out.measured ? "measured compound" : "new compound"} · ${out.candidate} · ${Math.round(out.level * 100)}% intervals`;
  } catch (err) {
    showError("chem-error", err.message);
  }
}

function drawDoseResponse(out) {
  const traces = [];
  out.features.forEach((f, i) => {
    const colour = GROUP_COLOURS[i % GROUP_COLOURS.length];
    traces.push({ x: out.doses, y: f.upper, mode: "lines", line: { width: 0 }, hoverinfo: "skip", showlegend: false, legendgroup: f.feature });
    traces.push({ x: out.doses, y: f.lower, mode: "lines", line: { width: 0 }, fill: "tonexty", fillcolor: colour + "33", hoverinfo: "skip", showlegend: false, legendgroup: f.feature });
    traces.push({ x: out.doses, y: f.delta, mode: "lines+markers", name: f.feature, line: { color: colour }, legendgroup: f.feature });
  });
  out.observed.forEach((o, i) => {
    const colour = GROUP_COLOURS[i % GROUP_COLOURS.length];
    traces.push({ x: o.dose_um, y: o.delta, mode: "markers", marker: { symbol: "x", size: 9, color: colour }, name: `${o.feature} (measured)`, legendgroup: o.feature });
  });
  Plotly.react("dose-response", traces, {
    title: `${out.compound} · predicted change vs dose`,
    xaxis: { title: `dose (${out.dose_unit})`, type: "log" },
    yaxis: { title: "change from vehicle" },
    margin: { t: 40, r: 10 },
  }, PLOT_CONFIG);
}

// ---------------------------------------------------------------- time courses
async function loadTemporalLists(select) {
  const [datasets, models] = await Promise.all([api("/temporal-datasets"), api("/temporal-models")]);
  const ds = $("time-dataset");
  ds.innerHTML = "";
  datasets.forEach((d) => option(ds, d.name, d.name));
  const ms = $("time-model");
  ms.innerHTML = "";
  models.forEach((m) => option(ms, m.id, `${m.id} (times ${m.times.join(", ")})`));
  if (select) ms.value = select;
  const chosen = models.find((m) => m.id === ms.value);
  if (chosen) {
    // from the first measured time to half a course beyond the last
    const first = chosen.times[0];
    const last = chosen.times[chosen.times.length - 1];
    const slider = $("time-slider");
    slider.min = first;
    slider.max = last + (last - first) / 2;
    slider.step = (last - first) / 100;
    slider.value = (first + last) / 2;
    $("time-value").textContent = Number(slider.value).toFixed(2);
  }
}

async function fitTemporalModel() {
  hideError("time-error");
  setStatus("fitting aivc-time…");
  try {
    const m = await api("/temporal-models", { method: "POST", json: { dataset: $("time-dataset").value } });
    await loadTemporalLists(m.id);
    setStatus(`fitted ${m.id}: ${m.chosen.interpolate} between measured times, ${m.chosen.forecast} beyond`);
    await forecastAtSlider();
  } catch (err) {
    showError("time-error", err.message);
    setStatus("fit failed", true);
  }
}

async function forecastAtSlider() {
  hideError("time-error");
  const model = $("time-model").value;
  if (!model) return;
  const t = Number($("time-slider").value);
  $("time-value").textContent = t.toFixed(2);
  try {
    const out = await api(`/temporal-models/${encodeURIComponent(model)}/forecast`, {
      method: "POST",
      json: { times: [t], n_cells: 200, top_k: 10 },
    });
    const p = out.predictions[0];
    const traces = out.measured_pc.map((m, i) => ({
      x: m.cells_pc.map((c) => c[0]), y: m.cells_pc.map((c) => c[1]), mode: "markers", type: "scatter",
      name: `measured ${m.time}`, marker: { size: 4, color: GROUP_COLOURS[i % GROUP_COLOURS.length], opacity: 0.35 },
    }));
    traces.push({
      x: p.cells_pc.map((c) => c[0]), y: p.cells_pc.map((c) => c[1]), mode: "markers", type: "scatter",
      name: `predicted ${p.time.toFixed(2)}`, marker: { size: 5, color: HIGHLIGHT_COLOUR },
    });
    Plotly.react("time-cells", traces, {
      title: `cells at ${p.time.toFixed(2)} (${p.rule}: ${p.candidate})`,
      xaxis: { title: "PC1" }, yaxis: { title: "PC2" }, margin: { t: 40, r: 10 },
    }, PLOT_CONFIG);
    const body = $("time-genes").querySelector("tbody");
    body.innerHTML = "";
    p.top_genes.forEach((g) => {
      const tr = document.createElement("tr");
      [g.gene, fmt(g.change)].forEach((v) => {
        const td = document.createElement("td");
        td.textContent = v;
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    $("time-summary").textContent = `${p.rule === "forecast" ? "forecast beyond" : "between"} the measured times ${out.measured_times.join(", ")}; changes from time ${p.compared_with_time}`;
  } catch (err) {
    showError("time-error", err.message);
  }
}

// ---------------------------------------------------------------- tissues
const COLOR_NAMES = { cell_type: "cell type", niche: "niche (fits a niche model)", region: "region" };
const tissueState = { datasets: [], request: 0 };

async function loadTissueLists() {
  tissueState.datasets = await api("/spatial-datasets");
  const ds = $("tissue-dataset");
  ds.innerHTML = "";
  tissueState.datasets.forEach((d) => option(ds, d.name, d.name));
  fillTissueColours();
  await drawTissue();
}

// The colourings the chosen tissue has; the current one is kept when it has it.
function fillTissueColours() {
  const d = tissueState.datasets.find((x) => x.name === $("tissue-dataset").value);
  const sel = $("tissue-color");
  const before = sel.value;
  sel.innerHTML = "";
  (d ? d.colors : []).forEach((c) => option(sel, c, COLOR_NAMES[c] || c));
  if ([...sel.options].some((o) => o.value === before)) sel.value = before;
}

async function drawTissue() {
  const name = $("tissue-dataset").value;
  const color = $("tissue-color").value;
  if (!name || !color) return;
  const request = ++tissueState.request;
  hideError("tissue-error");
  $("tissue-summary").textContent = color === "niche"
    ? `fitting a niche model on ${name} (seconds, the first time)…`
    : `loading ${name}…`;
  let out;
  try {
    out = await api(`/spatial/${encodeURIComponent(name)}?color=${encodeURIComponent(color)}&max_cells=5000`);
  } catch (err) {
    if (request !== tissueState.request) return;
    Plotly.purge("tissue-map");
    $("tissue-map").innerHTML = "";
    $("tissue-summary").textContent = "";
    showError("tissue-error", `could not draw ${name}: ${err.message}`);
    return;
  }
  if (request !== tissueState.request) return; // a later choice is on its way
  // one panel per section, on equal x and y scales; one legend entry per category
  const n = out.sections.length;
  const columns = Math.min(n, 3);
  const rows = Math.ceil(n / columns);
  const axis = (k) => (k === 0 ? "" : String(k + 1));
  const traces = [];
  out.categories.forEach((c, j) => {
    out.sections.forEach((sec, k) => {
      const keep = out.labels.map((l, i) => (l === c && out.section[i] === sec ? i : -1)).filter((i) => i >= 0);
      traces.push({
        type: "scatter", mode: "markers", name: c, legendgroup: c, showlegend: k === 0,
        x: keep.map((i) => out.x[i]), y: keep.map((i) => out.y[i]),
        xaxis: "x" + axis(k), yaxis: "y" + axis(k),
        hovertemplate: `${c}<br>section ${sec}<br>x %{x}<br>y %{y}<extra></extra>`,
        marker: { size: 4, opacity: 0.8, color: GROUP_COLOURS[j % GROUP_COLOURS.length] },
      });
    });
  });
  const layout = {
    title: { text: `${name}: ${out.n_shown} of ${out.n_cells} cells by ${color.replace("_", " ")}`, font: { size: 13 } },
    margin: { t: 60, l: 50, r: 10, b: 40 },
    legend: { title: { text: color.replace("_", " ") } },
    grid: { rows, columns, pattern: "independent" },
    annotations: out.sections.map((sec, k) => ({
      text: n > 1 ? `section ${sec}` : "", showarrow: false, font: { size: 12 },
      xref: `x${axis(k)} domain`, yref: `y${axis(k)} domain`, x: 0.5, y: 1.06,
    })),
  };
  out.sections.forEach((_, k) => {
    layout["xaxis" + axis(k)] = { constrain: "domain", zeroline: false };
    layout["yaxis" + axis(k)] = { scaleanchor: "x" + axis(k), scaleratio: 1, constrain: "domain", zeroline: false };
  });
  Plotly.react("tissue-map", traces, layout, PLOT_CONFIG);
  const niche = out.niche_model;
  $("tissue-summary").textContent =
    `${out.categories.length} ${color === "niche" ? "niches" : color === "region" ? "regions" : "cell types"} in ` +
    `${n} section${n > 1 ? "s" : ""}` +
    (out.n_shown < out.n_cells ? `; a seeded sample of ${out.n_shown} of the ${out.n_cells} cells` : "") +
    (niche ? `; spatial domains of ${niche.instrument} (${niche.steps} steps, fitted in ${niche.fit_seconds} s)` : "");
}

function init() {
  $("token").value = state.token;
  $("token-save").addEventListener("click", () => {
    state.token = $("token").value.trim();
    localStorage.setItem("aivc-token", state.token);
    start();
  });
  $("fit-btn").addEventListener("click", fit);
  $("cancel-btn").addEventListener("click", cancelJob);
  $("model").addEventListener("change", (e) => chooseModel(e.target.value).catch((err) => setStatus(err.message, true)));
  $("pert-input").addEventListener("input", suggest);
  $("pert-input").addEventListener("keydown", (e) => { if (e.key === "Enter") predict(); });
  $("predict-btn").addEventListener("click", predict);
  $("screen-btn").addEventListener("click", screen);
  $("propose-btn").addEventListener("click", propose);
  $("upload-btn").addEventListener("click", upload);
  $("chem-fit-btn").addEventListener("click", fitCompoundModel);
  $("chem-predict-btn").addEventListener("click", predictCompound);
  $("time-fit-btn").addEventListener("click", fitTemporalModel);
  $("time-slider").addEventListener("change", forecastAtSlider);
  $("time-model").addEventListener("change", () => loadTemporalLists($("time-model").value).then(forecastAtSlider).catch((err) => setStatus(err.message, true)));
  $("chem-model").addEventListener("change", () => loadCompoundLists($("chem-model").value).catch((err) => setStatus(err.message, true)));
  $("tissue-dataset").addEventListener("change", () => {
    fillTissueColours();
    drawTissue();
  });
  $("tissue-color").addEventListener("change", drawTissue);
  start();
}

async function start() {
  try {
    await loadLists();
    if (!state.model) setStatus("choose a dataset and an instrument, then fit");
    await loadCompoundLists();
    await loadTemporalLists();
    await loadTissueLists();
  } catch (err) {
    setStatus(err.message, true);
  }
}

document.addEventListener("DOMContentLoaded", init);
