"""The single web page of ``omniseg serve`` (``GET /``): plain HTML, CSS and JavaScript, nothing loaded
from elsewhere, so it works offline.

Choose, drop or sample an image, type a vocabulary or boxes (or drag boxes on the image), press
Segment: the page posts the form to ``POST /segment`` and shows the overlay, a table of instances
and download links (COCO results JSON, overlay PNG) made in the browser.

Query parameters: ``vocabulary``, ``boxes``, ``min_score`` fill the form; ``selftest=1`` loads the
sample image, runs Segment through the same functions as the buttons and writes a JSON report
(``status``, ``count``, ``texts``, ``overlay`` size, or ``message``) into ``<pre id="selftest">``:
what the headless-browser test reads.
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>omniseg</title>
<style>
  :root { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2330; background: #f2f4f7; }
  body { margin: 0; }
  header { background: #1d2330; color: #fff; padding: 12px 24px; display: flex; gap: 18px; align-items: baseline; }
  header h1 { font-size: 20px; margin: 0; }
  header span { color: #b8c1d6; font-size: 14px; }
  main { display: grid; grid-template-columns: minmax(300px, 1fr) minmax(300px, 1fr); gap: 20px; padding: 20px; }
  @media (max-width: 760px) { main { grid-template-columns: 1fr; } }
  section { background: #fff; border-radius: 8px; padding: 16px 18px; box-shadow: 0 1px 3px rgba(0, 0, 0, .12); min-width: 0; }
  h2 { font-size: 16px; margin: 0 0 10px; }
  h2 small { font-weight: normal; color: #556; }
  #drop { border: 2px dashed #9aa5b8; border-radius: 6px; padding: 12px; text-align: center; color: #445; font-size: 14px; }
  #drop.over { background: #eef3ff; border-color: #3b6fd8; }
  canvas, #overlay { display: block; margin: 12px auto 4px; max-width: 100%; }
  canvas { cursor: crosshair; }
  .pixelated { image-rendering: pixelated; }
  label { display: block; font-size: 13px; font-weight: 600; margin-top: 12px; }
  .hint { font-size: 12px; font-weight: normal; color: #667; }
  input[type=text] { width: 100%; box-sizing: border-box; padding: 6px 8px; margin-top: 4px; font: inherit; font-size: 14px; }
  input[type=number] { width: 70px; padding: 5px; font: inherit; font-size: 14px; }
  .row { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; margin-top: 14px; }
  .row label { margin: 0; }
  button { padding: 8px 18px; font: inherit; font-weight: 600; background: #3b6fd8; color: #fff; border: 0; border-radius: 5px; cursor: pointer; }
  button.secondary { background: #e3e7ee; color: #1d2330; padding: 5px 12px; font-weight: normal; }
  button:disabled { opacity: .5; cursor: default; }
  #status { font-size: 14px; }
  #status.error { color: #b3261e; font-weight: 600; }
  table { border-collapse: collapse; width: 100%; font-size: 14px; margin-top: 12px; }
  th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #e3e7ee; }
  th { font-size: 12px; color: #556; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 6px; vertical-align: -1px; }
  a { color: #3b6fd8; font-size: 14px; }
  .empty { color: #778; font-size: 14px; }
</style>
</head>
<body>
<header><h1>omniseg</h1><span id="model">loading the model description…</span></header>
<main>
  <section>
    <h2>1. Image</h2>
    <div id="drop">Drop an image here, or <input type="file" id="file" accept="image/*">
      <button type="button" class="secondary" id="sample">use a sample</button></div>
    <canvas id="preview" width="0" height="0"></canvas>
    <p class="hint" id="box-hint" hidden>Drag on the image to add a box; <button type="button" class="secondary"
      id="clear-boxes">clear boxes</button></p>
    <h2>2. What to find</h2>
    <label for="vocabulary">Vocabulary <span class="hint">comma-separated class names or phrases; empty: the
      model's classes</span></label>
    <input type="text" id="vocabulary" placeholder="red ring, blue star">
    <label for="boxes">Boxes <span class="hint">x0,y0,x1,y1; x0,y0,x1,y1 (pixels) for models that segment given
      boxes</span></label>
    <input type="text" id="boxes" placeholder="10,10,50,60; 0,0,20,20">
    <div class="row">
      <label for="min-score">Min score</label><input type="number" id="min-score" min="0" max="1" step="0.05" value="0.3">
      <button type="button" id="segment" disabled>Segment</button><span id="status"></span>
    </div>
  </section>
  <section>
    <h2>3. Result <small id="count"></small></h2>
    <p class="empty" id="empty">Choose an image and press Segment.</p>
    <img id="overlay" alt="the image with the instances found drawn over it" hidden>
    <div class="row"><a id="download-coco" hidden>download COCO JSON</a><a id="download-png" hidden>download overlay PNG</a></div>
    <table id="table" hidden>
      <thead><tr><th>#</th><th>text</th><th>score</th><th>box x0, y0, x1, y1</th><th>area (px)</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
</main>
<pre id="selftest" hidden></pre>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = { model: null, file: null, image: null, scale: 1, drag: null, result: null };

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

// display scale of a w x h image in its column: fit the width and maxHeight, small images enlarged up to 3x
function fitScale(w, h, column, maxHeight) {
  return Math.min((column.clientWidth - 40) / w, maxHeight / h, 3);
}

async function loadModel() {
  const m = await (await fetch("/health")).json();
  state.model = m;
  const what = m.prompt === "boxes" ? "segments the boxes you give it" : "finds objects by name";
  const classes = m.classes.length ? `${m.classes.length} training classes` : "no fixed classes";
  $("model").textContent = `${m.recipe} model · ${what} · ${classes}`;
  if (m.prompt === "vocabulary" && m.classes.length && m.classes.length <= 20) $("vocabulary").value = m.classes.join(", ");
  $("box-hint").hidden = m.prompt !== "boxes";
}

function parseBoxes(text) {
  return text.split(";").map((p) => p.split(",").map(Number)).filter((b) => b.length === 4 && b.every(Number.isFinite));
}

function drawPreview() {
  const c = $("preview"), img = state.image;
  if (!img) { c.width = c.height = 0; return; }
  const s = state.scale = fitScale(img.naturalWidth, img.naturalHeight, c.parentElement, 380);
  c.width = Math.round(img.naturalWidth * s);
  c.height = Math.round(img.naturalHeight * s);
  const ctx = c.getContext("2d");
  ctx.imageSmoothingEnabled = s < 1;
  ctx.drawImage(img, 0, 0, c.width, c.height);
  ctx.lineWidth = 2;
  ctx.strokeStyle = "#ffffff";
  for (const b of parseBoxes($("boxes").value)) ctx.strokeRect(b[0] * s, b[1] * s, (b[2] - b[0]) * s, (b[3] - b[1]) * s);
  if (state.drag) {
    const d = state.drag;
    ctx.setLineDash([5, 4]);
    ctx.strokeRect(d.x0, d.y0, d.x1 - d.x0, d.y1 - d.y0);
    ctx.setLineDash([]);
  }
}

// the one way an image enters the page: file input, drop and the sample all come here
function setFile(file) {
  return new Promise((resolve) => {
    const img = new Image();
    state.file = file;
    $("segment").disabled = false;
    img.onload = () => {
      state.image = img;
      drawPreview();
      setStatus(`${file.name}: ${img.naturalWidth} × ${img.naturalHeight} pixels`);
      resolve();
    };
    img.onerror = () => {  // let the server say what is wrong with it
      state.image = null;
      drawPreview();
      setStatus(`${file.name}: this browser cannot show it; Segment sends it anyway`, true);
      resolve();
    };
    img.src = URL.createObjectURL(file);
  });
}

async function useSample() {
  const [blob, objects] = await Promise.all([
    fetch("/sample.png").then((r) => r.blob()), fetch("/sample.json").then((r) => r.json())]);
  if (state.model && state.model.prompt === "boxes") {
    $("boxes").value = objects.boxes;
    $("vocabulary").value = objects.vocabulary;
  }
  await setFile(new File([blob], "sample.png", { type: "image/png" }));
}

function offerDownload(id, blob, name) {
  const a = $(id);
  if (a.href) URL.revokeObjectURL(a.href);
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.hidden = false;
}

function showResult(r) {
  state.result = r;
  const rows = $("table").tBodies[0];
  rows.replaceChildren();
  r.instances.forEach((inst, k) => {
    const tr = rows.insertRow();
    const cells = [String(k + 1), inst.text, inst.score == null ? "–" : inst.score.toFixed(2),
      inst.box ? inst.box.map((v) => v.toFixed(0)).join(", ") : "–", inst.area == null ? "–" : String(inst.area)];
    cells.forEach((text, j) => {
      const td = tr.insertCell();
      td.textContent = text;
      if (j !== 1) td.className = "num";
    });
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = inst.color;
    tr.cells[1].prepend(swatch);
  });
  $("table").hidden = r.instances.length === 0;
  $("empty").hidden = r.instances.length > 0;
  $("empty").textContent = "No instance above the minimum score.";
  $("count").textContent = `· ${r.instances.length} instance(s)`;
  const stem = (state.file.name || "image").replace(/\.[^.]*$/, "");
  offerDownload("download-coco", new Blob([JSON.stringify(r.coco, null, 1)], { type: "application/json" }), `${stem}.coco.json`);
  const png = Uint8Array.from(atob(r.overlay_png), (ch) => ch.charCodeAt(0));
  offerDownload("download-png", new Blob([png], { type: "image/png" }), `${stem}_overlay.png`);
  const img = $("overlay");
  const s = fitScale(r.width, r.height, img.parentElement, 470);
  img.style.width = `${Math.round(r.width * s)}px`;
  img.className = s > 1 ? "pixelated" : "";
  return new Promise((resolve) => {
    img.onload = img.onerror = resolve;
    img.src = "data:image/png;base64," + r.overlay_png;
    img.hidden = false;
  });
}

// the Segment button: post the form, show the answer or its error; true when it worked
async function segment() {
  if (!state.file) { setStatus("choose an image first", true); return false; }
  const form = new FormData();
  form.append("image", state.file, state.file.name || "image");
  form.append("vocabulary", $("vocabulary").value);
  form.append("boxes", $("boxes").value);
  form.append("min_score", $("min-score").value);
  $("segment").disabled = true;
  setStatus("segmenting…");
  try {
    const res = await fetch("/segment", { method: "POST", body: form });
    const body = await res.json().catch(() => ({ error: res.statusText }));
    if (!res.ok) { setStatus(`${res.status}: ${body.error}`, true); return false; }
    await showResult(body);
    setStatus(`done: ${body.instances.length} instance(s)`);
    return true;
  } catch (e) {
    setStatus(`no answer from the server (${e.message})`, true);
    return false;
  } finally {
    $("segment").disabled = false;
  }
}

function canvasPoint(e) {
  const r = $("preview").getBoundingClientRect();
  return [Math.max(0, Math.min(e.clientX - r.left, r.width)), Math.max(0, Math.min(e.clientY - r.top, r.height))];
}

function wire() {
  $("file").addEventListener("change", (e) => { if (e.target.files[0]) setFile(e.target.files[0]); });
  $("sample").addEventListener("click", () => useSample().catch((e) => setStatus(String(e), true)));
  $("segment").addEventListener("click", segment);
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) setFile(e.dataTransfer.files[0]);
  });
  $("boxes").addEventListener("input", drawPreview);
  $("clear-boxes").addEventListener("click", () => { $("boxes").value = ""; drawPreview(); });
  const c = $("preview");
  c.addEventListener("mousedown", (e) => {
    if (!state.image) return;
    const [x, y] = canvasPoint(e);
    state.drag = { x0: x, y0: y, x1: x, y1: y };
  });
  window.addEventListener("mousemove", (e) => {
    if (!state.drag) return;
    [state.drag.x1, state.drag.y1] = canvasPoint(e);
    drawPreview();
  });
  window.addEventListener("mouseup", () => {
    const d = state.drag;
    state.drag = null;
    if (!d) return;
    const s = state.scale;
    const b = [Math.min(d.x0, d.x1), Math.min(d.y0, d.y1), Math.max(d.x0, d.x1), Math.max(d.y0, d.y1)].map((v) => Math.round(v / s));
    if (b[2] - b[0] >= 2 && b[3] - b[1] >= 2) {
      const text = $("boxes").value.trim().replace(/;$/, "");
      $("boxes").value = (text ? text + "; " : "") + b.join(",");
    }
    drawPreview();
  });
  window.addEventListener("resize", drawPreview);
}

async function selftest() {
  let report;
  try {
    await useSample();
    for (const k of ["vocabulary", "boxes"]) if (params.has(k)) $(k).value = params.get(k);
    if (params.has("min_score")) $("min-score").value = params.get("min_score");
    drawPreview();
    if (await segment()) {
      const r = state.result;
      report = { status: "done", count: r.instances.length, texts: r.instances.map((i) => i.text),
        overlay: [$("overlay").naturalWidth, $("overlay").naturalHeight], rows: $("table").tBodies[0].rows.length };
    } else {
      report = { status: "error", message: $("status").textContent };
    }
  } catch (e) {
    report = { status: "error", message: String(e) };
  }
  $("selftest").textContent = JSON.stringify(report);
  $("selftest").dataset.status = report.status;
}

async function start() {
  wire();
  try {
    await loadModel();
  } catch (e) {
    setStatus(`cannot reach the server (${e.message})`, true);
  }
  for (const k of ["vocabulary", "boxes"]) if (params.has(k)) $(k).value = params.get(k);
  if (params.has("min_score")) $("min-score").value = params.get("min_score");
  if (params.get("selftest")) await selftest();
}

start();
</script>
</body>
</html>
"""
