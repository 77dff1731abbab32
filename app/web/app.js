// The page's only logic. It talks to the documented API alone (GET /model, POST /explain),
// one request per file, so one bad file cannot hide the answers for the others.
"use strict";

const TOP_K = 3;
const MAX_IN_FLIGHT = 4; // each /explain is ~50 model inputs: do not flood the batcher
const results = document.getElementById("results");
const template = document.getElementById("card-template");
const fileInput = document.getElementById("file-input");
const dropZone = document.getElementById("drop-zone");
const clearButton = document.getElementById("clear");

function percent(probability) {
  return `${(probability * 100).toFixed(1)} %`;
}

async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return null; // not JSON (a proxy's error page, a cut connection)
  }
}

// The API's error messages already say what went wrong in words and start with the file's
// name; this makes sure every message names the file, whatever answered.
function errorText(name, response, body) {
  const message = body && body.error && body.error.message;
  if (message) {
    return message.startsWith(`${name}:`) ? message : `${name}: ${message}`;
  }
  return `${name}: the service answered ${response.status} ${response.statusText}`.trim();
}

async function describeModel() {
  const line = document.getElementById("model");
  try {
    const response = await fetch("/model");
    const body = await readJson(response);
    if (!response.ok) {
      line.textContent = `Model details are unavailable: ${errorText("/model", response, body)}`;
      return;
    }
    // The accuracy of what is served: the precision's own record where the version has one.
    const runtime = body.runtime || {};
    const served = (body.precisions || {})[runtime.precision] || {};
    const accuracy =
      typeof served.test_accuracy === "number"
        ? served.test_accuracy
        : body.metrics && body.metrics.test_accuracy;
    line.textContent =
      `Answers come from model ${body.name}, version ${body.version}` +
      (typeof accuracy === "number"
        ? `, which named ${percent(accuracy)} of the CIFAR-10 test pictures right`
        : "") +
      (runtime.backend ? `, computed by ${runtime.backend} in ${runtime.precision}.` : ".");
  } catch (error) {
    line.textContent = `Model details are unavailable: ${error.message}`;
  }
}

// A tiny queue: at most MAX_IN_FLIGHT requests at once, the rest wait their turn.
let inFlight = 0;
const waiting = [];
function schedule(task) {
  waiting.push(task);
  pump();
}
function pump() {
  while (inFlight < MAX_IN_FLIGHT && waiting.length > 0) {
    const task = waiting.shift();
    inFlight += 1;
    task().finally(() => {
      inFlight -= 1;
      pump();
    });
  }
}

function addCard(file, name, before) {
  const card = template.content.firstElementChild.cloneNode(true);
  card.querySelector(".filename").textContent = name;
  const thumbnail = card.querySelector(".thumbnail");
  const noPreview = () => {
    thumbnail.hidden = true;
    card.querySelector(".no-preview").hidden = false;
  };
  if (file.type.startsWith("image/")) {
    const url = URL.createObjectURL(file);
    thumbnail.alt = `Your picture: ${name}`;
    thumbnail.addEventListener("load", () => URL.revokeObjectURL(url), { once: true });
    thumbnail.addEventListener("error", noPreview, { once: true });
    thumbnail.src = url;
  } else {
    noPreview();
  }
  results.insertBefore(card, before);
  return card;
}

function showError(card, text) {
  card.classList.add("failed");
  card.querySelector(".seen").closest("figure").hidden = true;
  const status = card.querySelector(".status");
  status.setAttribute("role", "alert");
  status.textContent = text;
}

function showExplanation(card, name, body) {
  const explanation = body.explanations[0];
  const status = card.querySelector(".status");
  if (explanation.uncertain) {
    // Below the service's threshold: its calibrated confidence says the guess is often wrong,
    // and photos of things outside the ten labels land here.
    card.classList.add("uncertain");
    status.textContent = `Not sure, maybe none of the ten. Best guess ${explanation.label}, ${percent(explanation.confidence)}.`;
  } else {
    status.textContent = `Most likely ${explanation.label}, ${percent(explanation.confidence)}.`;
  }

  const labels = card.querySelector(".labels");
  labels.setAttribute("aria-label", `Top ${explanation.top_k.length} labels for ${name}`);
  for (const { label, probability } of explanation.top_k) {
    const item = document.createElement("li");
    const text = document.createElement("span");
    text.className = "label";
    text.textContent = label;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("aria-hidden", "true"); // the percentage says it in words
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${Math.max(probability * 100, 0.5)}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "percent";
    value.textContent = percent(probability);
    item.append(text, bar, value);
    labels.append(item);
  }
  labels.hidden = false;

  // The 32x32 input exactly as the model classified it (the server's PNG, not a resize made
  // here), drawn pixel for pixel; CSS scales the canvas up with nearest-neighbour.
  const canvas = card.querySelector(".model-input");
  const input = new Image();
  input.addEventListener("load", () => {
    canvas.width = input.naturalWidth;
    canvas.height = input.naturalHeight;
    canvas.getContext("2d").drawImage(input, 0, 0);
    canvas.setAttribute(
      "aria-label",
      `The ${canvas.width} by ${canvas.height} pixel picture the model classified for ${name}`,
    );
  });
  input.src = explanation.input_png;

  const heatmap = card.querySelector(".heatmap");
  const toggle = card.querySelector(".toggle");
  const legend = card.querySelector(".legend");
  if (explanation.heatmap_png) {
    heatmap.src = explanation.heatmap_png;
    heatmap.alt =
      `Where the model looked in ${name}: the parts that, hidden, ` +
      `lowered the probability of ${explanation.label} most are red`;
    toggle.hidden = false;
    toggle.addEventListener("click", () => {
      const show = toggle.getAttribute("aria-pressed") !== "true";
      toggle.setAttribute("aria-pressed", String(show)); // the state; the name stays the same
      heatmap.hidden = !show;
      legend.hidden = !show;
    });
  }

  const answeredBy = card.querySelector(".answered-by");
  answeredBy.textContent = `Answered by model ${body.model}, version ${body.version}.`;
  answeredBy.hidden = false;
}

async function explain(file, name, card) {
  const form = new FormData();
  form.append("files", file, name);
  let response;
  try {
    response = await fetch(`/explain?top_k=${TOP_K}&heatmap=true`, { method: "POST", body: form });
  } catch (error) {
    showError(card, `${name}: the service could not be reached (${error.message}).`);
    return;
  } finally {
    card.setAttribute("aria-busy", "false");
  }
  const body = await readJson(response);
  if (!response.ok || !body || !Array.isArray(body.explanations)) {
    showError(card, errorText(name, response, body));
    return;
  }
  showExplanation(card, name, body);
}

clearButton.addEventListener("click", () => {
  results.replaceChildren(); // answers still on their way land in cards no longer shown
  clearButton.hidden = true;
});

function handleFiles(files) {
  clearButton.hidden = false;
  const before = results.firstElementChild; // newest choice on top, in the order chosen
  for (const file of files) {
    const name = file.name || "pasted image";
    const card = addCard(file, name, before);
    schedule(() => explain(file, name, card));
  }
}

fileInput.addEventListener("change", () => {
  handleFiles([...fileInput.files]);
  fileInput.value = ""; // choosing the same file again is a new request
});

// Drop anywhere on the page; the drop zone lights up while something is dragged over it.
document.addEventListener("dragover", (event) => {
  event.preventDefault();
  dropZone.classList.add("dragging");
});
document.addEventListener("dragleave", (event) => {
  if (event.relatedTarget === null) {
    dropZone.classList.remove("dragging");
  }
});
document.addEventListener("drop", (event) => {
  event.preventDefault();
  dropZone.classList.remove("dragging");
  const files = [...(event.dataTransfer ? event.dataTransfer.files : [])];
  if (files.length > 0) {
    handleFiles(files);
  }
});

document.addEventListener("paste", (event) => {
  const files = [...(event.clipboardData ? event.clipboardData.files : [])];
  if (files.length > 0) {
    event.preventDefault();
    handleFiles(files);
  }
});

describeModel();
