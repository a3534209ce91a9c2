// cnnkit classifier page: choose, drop or paste images; each is sent to POST v1/predict on its own
// (the server batches concurrent requests), shown as a preview with its top classes as bars; a
// multi-label model's answer ("task": "multi_label") shows its label set as chips instead. A
// checkpoint's service (not an ONNX model's) also explains: a card's "Explain" button asks
// POST v1/explain and shows the Grad-CAM overlay of the decided class below the answer.
"use strict";

const MAX_PARALLEL_REQUESTS = 4;

const page = {
  modelInfo: document.getElementById("model-info"),
  dropZone: document.getElementById("drop-zone"),
  fileInput: document.getElementById("file-input"),
  topK: document.getElementById("top-k"),
  topKLabel: document.querySelector("label[for=top-k]"),
  clear: document.getElementById("clear"),
  status: document.getElementById("status"),
  results: document.getElementById("results"),
};

// A job is one image sent once; "generation" changes when results are cleared or recomputed, so
// answers to older requests still in flight are dropped instead of counted or shown.
const state = {
  maxUploadBytes: Infinity,
  explainable: false,
  queue: [],
  running: 0,
  done: 0,
  total: 0,
  generation: 0,
};

async function loadModelDescription() {
  try {
    const response = await fetch("v1/model");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const model = await response.json();
    state.maxUploadBytes = model.limits.max_upload_bytes;
    state.explainable = model.format === "checkpoint"; // an ONNX model holds no gradients
    page.topK.max = String(model.classes.length);
    page.topK.value = String(Math.min(Number(page.topK.value), model.classes.length));
    const multiLabel = model.task === "multi_label";
    // A multi-label model answers with every label at or above its threshold: no top-k to choose.
    page.topK.hidden = page.topKLabel.hidden = multiLabel;
    const parts = [
      `Model ${model.name}`,
      multiLabel ? `${model.classes.length} labels (multi-label)` : `${model.classes.length} classes`,
      `${model.input_size}×${model.input_size} input`,
      `test-time augmentation ${model.tta}`,
      model.backend,
    ];
    parts.push(...accuracyLabels(model.metrics));
    page.modelInfo.textContent = parts.join(" · ");
  } catch (error) {
    page.modelInfo.textContent = `Could not load the model description (${error.message}).`;
  }
}

function percent(value) {
  return `${(value * 100).toFixed(1)} %`;
}

// A split's headline figure: accuracy, or a multi-label model's mean average precision.
function headline(figures) {
  if (typeof figures?.accuracy === "number") return ["accuracy", figures.accuracy];
  if (typeof figures?.map === "number") return ["mAP", figures.map];
  return null;
}

// Each figure says what data it was measured on; a training figure is never shown as a validation one.
function accuracyLabels(metrics) {
  const labels = [];
  for (const [split, name] of [["validation", "validation"], ["test", "test"]]) {
    const figure = headline(metrics[split]);
    if (figure) labels.push(`${name} ${figure[0]} ${percent(figure[1])}`);
  }
  const training = headline(metrics.train);
  if (labels.length === 0 && training) {
    labels.push(`training ${training[0]} ${percent(training[1])} (no held-out data measured)`);
  }
  return labels;
}

function topK() {
  const value = Math.round(Number(page.topK.value));
  const limit = Number(page.topK.max) || 1000;
  return Number.isFinite(value) && value >= 1 ? Math.min(value, limit) : 5;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function addFiles(files) {
  for (const file of files) {
    const card = createCard(file);
    page.results.append(card);
    enqueue(file, card);
  }
}

function createCard(file) {
  const card = element("li", "result");
  card.dataset.state = "pending";
  const figure = element("figure");
  const preview = element("img");
  preview.alt = `Preview of ${file.name}`;
  preview.src = URL.createObjectURL(file);
  // Browsers cannot show every format the server reads (TIFF): say so instead of a broken image.
  preview.addEventListener("error", () => preview.replaceWith(element("div", "no-preview", "No preview")));
  figure.append(preview, element("figcaption", "", file.name));
  const outcome = element("div", "outcome");
  outcome.setAttribute("aria-live", "polite");
  card.append(figure, outcome);
  card.file = file;
  card.preview = preview;
  return card;
}

function enqueue(file, card) {
  const job = { file, card, generation: state.generation };
  card.job = job;
  showPending(card);
  state.total += 1;
  state.queue.push(job);
  updateStatus();
  pump();
}

function pump() {
  while (state.running < MAX_PARALLEL_REQUESTS && state.queue.length) {
    const job = state.queue.shift();
    state.running += 1;
    classify(job).finally(() => {
      state.running -= 1;
      if (job.generation === state.generation) state.done += 1;
      updateStatus();
      pump();
    });
  }
}

function updateStatus() {
  if (state.total === 0) {
    page.status.textContent = "No images yet.";
  } else if (state.done < state.total) {
    page.status.textContent = `Classifying… ${state.done} of ${state.total} done.`;
  } else {
    page.status.textContent = `Classified ${state.total} image${state.total === 1 ? "" : "s"}.`;
  }
}

async function classify(job) {
  const { file, card } = job;
  const current = () => card.job === job && card.isConnected;
  if (file.size > state.maxUploadBytes) {
    const limit = (state.maxUploadBytes / 2 ** 20).toFixed(1);
    showError(card, `This file is larger than the server's upload limit (${limit} MiB).`);
    return;
  }
  const form = new FormData();
  form.append("files", file, file.name);
  try {
    const response = await fetch(`v1/predict?top_k=${topK()}`, { method: "POST", body: form });
    const answer = await response.json().catch(() => null);
    if (!current()) return;
    if (!response.ok) {
      showError(card, describeError(answer) || `The server answered HTTP ${response.status}.`);
      return;
    }
    const result = answer.results[0];
    if (result.error) showError(card, result.error);
    else if (answer.task === "multi_label") showLabelSet(card, result.labels, result.probabilities);
    else showPredictions(card, result.predictions, result.uncertain);
  } catch (error) {
    if (current()) showError(card, `The request failed: ${error.message}`);
  }
}

function describeError(answer) {
  if (!answer || answer.detail === undefined) return "";
  if (typeof answer.detail === "string") return answer.detail;
  return answer.detail.map((item) => item.msg).join("; ");
}

function showPending(card) {
  forgetExplanation(card);
  card.dataset.state = "pending";
  card.setAttribute("aria-busy", "true");
  card.querySelector(".outcome").replaceChildren(element("p", "pending", "Classifying…"));
}

// Probabilities as bars, in the order given: [[name, probability], ...].
function bars(entries, description) {
  const list = element("ol", "bars");
  list.setAttribute("aria-label", description);
  for (const [name, probability] of entries) {
    const row = element("li");
    const label = element("span", "label", name);
    label.title = name;
    const bar = element("span", "bar");
    bar.setAttribute("aria-hidden", "true");
    const fill = element("span", "fill");
    bar.append(fill);
    row.append(label, bar, element("span", "value", percent(probability)));
    list.append(row);
    // Set after insertion so the width animates; CSSOM, which the page's CSP allows.
    requestAnimationFrame(() => {
      fill.style.width = `${Math.max(probability * 100, 0.5)}%`;
    });
  }
  return list;
}

// The top classes as bars; below the service's minimum confidence, said first: they are guesses.
function showPredictions(card, predictions, uncertain) {
  const entries = predictions.map(({ class: name, probability }) => [name, probability]);
  const ranked = bars(entries, `Top ${predictions.length} classes for ${card.file.name}`);
  if (!uncertain) {
    showOutcome(card, ranked);
    return;
  }
  const note = element("p", "uncertain", "Uncertain: no class is probable enough. Best guesses:");
  const both = element("div");
  both.append(note, ranked);
  showOutcome(card, both);
}

// A multi-label answer: the labels at or above their thresholds as chips (or a line saying there
// are none), then every label's probability as bars, folded away.
function showLabelSet(card, labels, probabilities) {
  let chosen;
  if (labels.length) {
    chosen = element("ul", "chips");
    chosen.setAttribute("aria-label", `Labels of ${card.file.name}`);
    for (const { label, probability } of labels) {
      const chip = element("li", "chip");
      chip.title = label;
      chip.append(element("span", "label", label), element("span", "value", percent(probability)));
      chosen.append(chip);
    }
  } else {
    chosen = element("p", "no-labels", "No label reaches its threshold.");
  }
  const everything = element("details", "all-labels");
  const ranked = Object.entries(probabilities).sort((one, other) => other[1] - one[1]);
  everything.append(
    element("summary", "", "All labels"),
    bars(ranked, `Every label's probability for ${card.file.name}`),
  );
  showOutcome(card, chosen, everything);
}

function showOutcome(card, ...nodes) {
  if (state.explainable) nodes.push(explainButton(card));
  card.querySelector(".outcome").replaceChildren(...nodes);
  card.dataset.state = "done";
  card.removeAttribute("aria-busy");
}

function explainButton(card) {
  const button = element("button", "button secondary explain", "Explain");
  button.type = "button";
  button.title = "Show where in the image the model found its answer (Grad-CAM)";
  button.addEventListener("click", () => explain(card, button));
  return button;
}

async function explain(card, button) {
  const job = card.job;
  const current = () => card.job === job && card.isConnected;
  button.disabled = true;
  button.textContent = "Explaining…";
  const form = new FormData();
  form.append("files", card.file, card.file.name);
  try {
    const response = await fetch("v1/explain", { method: "POST", body: form });
    const answer = await response.json().catch(() => null);
    if (!current()) return;
    if (response.ok) showExplanation(card, answer);
    else showExplanationError(card, describeError(answer) || `The server answered HTTP ${response.status}.`);
  } catch (error) {
    if (current()) showExplanationError(card, `The request failed: ${error.message}`);
  } finally {
    button.disabled = false;
    button.textContent = "Explain";
  }
}

// The overlay arrives as base64 PNG; shown through a blob: URL, which the page's CSP allows.
function pngUrl(base64) {
  const bytes = Uint8Array.from(atob(base64), (character) => character.charCodeAt(0));
  return URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
}

function showExplanation(card, answer) {
  forgetExplanation(card);
  const figure = element("figure", "explanation");
  const overlay = element("img");
  card.overlayUrl = pngUrl(answer.overlay_png_base64);
  overlay.src = card.overlayUrl;
  overlay.alt = `Where the model found ${answer.explained_class} in ${card.file.name} (the part it saw)`;
  figure.append(overlay, element("figcaption", "", `Where it found “${answer.explained_class}”`));
  card.querySelector(".outcome").append(figure);
}

function showExplanationError(card, message) {
  forgetExplanation(card);
  const error = element("p", "error explanation", message);
  error.setAttribute("role", "alert");
  card.querySelector(".outcome").append(error);
}

function forgetExplanation(card) {
  card.querySelector(".explanation")?.remove();
  if (card.overlayUrl) URL.revokeObjectURL(card.overlayUrl);
  card.overlayUrl = null;
}

function showError(card, message) {
  const error = element("p", "error", message);
  error.setAttribute("role", "alert");
  card.querySelector(".outcome").replaceChildren(error);
  card.dataset.state = "error";
  card.removeAttribute("aria-busy");
}

function clearResults() {
  for (const card of page.results.children) {
    if (card.preview && card.preview.src) URL.revokeObjectURL(card.preview.src);
    forgetExplanation(card);
  }
  page.results.replaceChildren();
  state.queue = [];
  state.done = state.total = 0;
  state.generation += 1;
  updateStatus();
}

function reclassifyAll() {
  state.queue = [];
  state.done = state.total = 0;
  state.generation += 1;
  for (const card of page.results.children) enqueue(card.file, card);
}

function setUpDragAndDrop() {
  // Dropping a file anywhere else would make the browser open it and leave the page.
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (event) => event.preventDefault());
  }
  page.dropZone.addEventListener("dragenter", () => page.dropZone.classList.add("dragging"));
  page.dropZone.addEventListener("dragover", (event) => {
    event.dataTransfer.dropEffect = "copy";
    page.dropZone.classList.add("dragging");
  });
  page.dropZone.addEventListener("dragleave", (event) => {
    if (!page.dropZone.contains(event.relatedTarget)) page.dropZone.classList.remove("dragging");
  });
  page.dropZone.addEventListener("drop", (event) => {
    page.dropZone.classList.remove("dragging");
    addFiles(event.dataTransfer.files);
  });
}

page.fileInput.addEventListener("change", () => {
  addFiles(page.fileInput.files);
  page.fileInput.value = ""; // choosing the same file again fires "change" again
});
page.topK.addEventListener("change", reclassifyAll);
page.clear.addEventListener("click", clearResults);
document.addEventListener("paste", (event) => {
  const files = [...event.clipboardData.files];
  if (files.length) addFiles(files);
});
setUpDragAndDrop();
loadModelDescription();
