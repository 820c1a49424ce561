// The playground: each tab builds one API request, shows it as curl, sends it, and draws the
// answer. No framework and no network fetch beyond this server's API.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "siglip-playground-api-key";

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// ---- API --------------------------------------------------------------------------------

function apiHeaders() {
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

async function readAnswer(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: said below by the status alone
  }
  if (!response.ok) {
    const message = body && body.error && body.error.message;
    throw new ApiError(response.status, message || `the server answered HTTP ${response.status}`);
  }
  return body;
}

async function post(path, body) {
  return readAnswer(await fetch(path, { method: "POST", headers: apiHeaders(), body: JSON.stringify(body) }));
}

// The request as a shell command: the body exactly as sent, the key as a variable.
function curlCommand(path, body) {
  const url = new URL(path, document.baseURI).href;
  const quoted = JSON.stringify(body).replaceAll("'", "'\\''");
  const lines = [`curl ${url}`, "-H 'Content-Type: application/json'"];
  if ($("api-key").value.trim()) lines.push('-H "Authorization: Bearer $SIGLIP_API_KEY"');
  lines.push(`-d '${quoted}'`);
  return lines.join(" \\\n  ");
}

// ---- drawing ----------------------------------------------------------------------------

function percent(score) {
  return `${(score * 100).toPrecision(3)}%`;
}

// rows: [{name, score, image?}], drawn highest first as they come.
function drawBars(container, rows) {
  const list = document.createElement("ol");
  list.className = "bars";
  for (const row of rows) {
    const item = document.createElement("li");
    item.dataset.score = String(row.score);
    const name = document.createElement("span");
    name.className = "name";
    if (row.image) {
      const thumbnail = document.createElement("img");
      thumbnail.src = row.image;
      thumbnail.alt = "";
      name.append(thumbnail);
    }
    name.append(row.name);
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.style.width = `${Math.max(0, Math.min(1, row.score)) * 100}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = percent(row.score);
    item.append(name, bar, value);
    list.append(item);
  }
  container.replaceChildren(list);
}

// Runs one tab's request: clears the old answer, shows the curl, then the answer or the error.
async function run(tab, path, body, draw) {
  const error = $(`${tab}-error`);
  const result = $(`${tab}-result`);
  error.textContent = "";
  result.replaceChildren();
  $(`${tab}-curl`).textContent = curlCommand(path, body);
  result.setAttribute("aria-busy", "true");
  try {
    draw(result, await post(path, body));
  } catch (problem) {
    error.textContent = problem instanceof ApiError
      ? `${problem.status}: ${problem.message}`
      : `The request failed: ${problem.message}`;
  } finally {
    result.removeAttribute("aria-busy");
  }
}

// ---- inputs -----------------------------------------------------------------------------

function readAsDataUri(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function lines(text) {
  return text.split("\n").map((line) => line.trim()).filter(Boolean);
}

// ---- Classify ---------------------------------------------------------------------------

let classifyImage = null; // a data URI from a chosen, dropped or pasted file

async function takeClassifyFile(file) {
  if (!file) return;
  classifyImage = await readAsDataUri(file);
  $("classify-url").value = "";
  showPreview(classifyImage);
}

function showPreview(source) {
  const preview = $("classify-preview");
  preview.src = source;
  preview.hidden = false;
}

function setUpClassify() {
  $("classify-file").addEventListener("change", (event) => takeClassifyFile(event.target.files[0]));
  $("classify-url").addEventListener("input", (event) => {
    classifyImage = null;
    if (event.target.value.trim()) showPreview(event.target.value.trim());
  });
  const drop = $("classify-drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    takeClassifyFile(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const file = [...event.clipboardData.files].find((item) => item.type.startsWith("image/"));
    if (file && !$("panel-classify").hidden) takeClassifyFile(file);
  });
  $("classify-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const image = classifyImage || $("classify-url").value.trim();
    if (!image) {
      $("classify-error").textContent = "Choose, drop or paste an image, or give its URL.";
      return;
    }
    const body = { input: [image], labels: lines($("classify-labels").value) };
    const templates = lines($("classify-templates").value);
    if (templates.length) body.hypothesis_template = templates.length === 1 ? templates[0] : templates;
    run("classify", "v1/classify", body, (container, answer) => drawBars(container,
      answer.data[0].predictions.map((prediction) => ({ name: prediction.label, score: prediction.score }))));
  });
}

// ---- Compare ----------------------------------------------------------------------------

function compareMode() {
  return document.querySelector("input[name=compare-mode]:checked").value;
}

function setUpCompare() {
  for (const radio of document.querySelectorAll("input[name=compare-mode]")) {
    radio.addEventListener("change", () => {
      $("compare-image-texts").hidden = compareMode() !== "image-texts";
      $("compare-text-images").hidden = compareMode() !== "text-images";
    });
  }
  $("compare-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    let body;
    let names;
    let thumbnails = [];
    if (compareMode() === "image-texts") {
      const file = $("compare-image").files[0];
      if (!file) {
        $("compare-error").textContent = "Choose an image.";
        return;
      }
      names = lines($("compare-texts").value);
      body = { query: { image: await readAsDataUri(file) }, documents: names };
    } else {
      const files = [...$("compare-images").files];
      if (!files.length) {
        $("compare-error").textContent = "Choose one or more images.";
        return;
      }
      thumbnails = await Promise.all(files.map(readAsDataUri));
      names = files.map((file) => file.name);
      body = { query: $("compare-text").value, documents: thumbnails.map((image) => ({ image })) };
    }
    run("compare", "v1/rerank", body, (container, answer) => drawBars(container,
      answer.results.map((result) => ({ name: names[result.index], score: result.relevance_score,
                                         image: thumbnails[result.index] }))));
  });
}

// ---- tabs, key, model -------------------------------------------------------------------

function setUpTabs() {
  const tabs = [...document.querySelectorAll("[role=tab]")];
  const select = (tab) => {
    for (const other of tabs) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      $(other.getAttribute("aria-controls")).hidden = !selected;
    }
    tab.focus();
  };
  for (const tab of tabs) {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (step) select(tabs[(tabs.indexOf(tab) + step + tabs.length) % tabs.length]);
    });
  }
}

async function showModel() {
  try {
    const answer = await readAnswer(await fetch("v1/models", { headers: apiHeaders() }));
    $("model").textContent = `Model: ${answer.data[0].id}`;
  } catch (problem) {
    $("model").textContent = problem.status === 401 ? "This server asks for an API key." : "";
  }
}

function setUpKey() {
  const field = $("api-key");
  field.value = sessionStorage.getItem(KEY_STORAGE) || "";
  field.addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORAGE, field.value.trim());
    showModel();
  });
}

function setUpCopyButtons() {
  for (const button of document.querySelectorAll("button.copy")) {
    button.addEventListener("click", () => navigator.clipboard.writeText($(button.dataset.copy).textContent));
  }
}

setUpKey();
setUpTabs();
setUpClassify();
setUpCompare();
setUpCopyButtons();
showModel();
