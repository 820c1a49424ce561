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

async function get(path) {
  return readAnswer(await fetch(path, { headers: apiHeaders() }));
}

function describe(problem) {
  return problem instanceof ApiError ? `${problem.status}: ${problem.message}` : `The request failed: ${problem.message}`;
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

// rows: [{name, score, image?, detail?}], drawn highest first as they come; layout "grid" draws
// cards instead of one row each.
function drawBars(container, rows, layout = "rows") {
  const list = document.createElement("ol");
  list.className = layout === "grid" ? "bars grid" : "bars";
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
    if (row.detail) {
      const detail = document.createElement("small");
      detail.textContent = row.detail;
      name.append(detail);
    }
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
    error.textContent = describe(problem);
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

// A tab's radio buttons (named `${tab}-mode`) each show the inputs `${tab}-${value}` alone.
function setUpModes(tab) {
  const radios = [...document.querySelectorAll(`input[name=${tab}-mode]`)];
  for (const radio of radios) {
    radio.addEventListener("change", () => {
      for (const other of radios) $(`${tab}-${other.value}`).hidden = !other.checked;
    });
  }
}

function chosenMode(tab) {
  return document.querySelector(`input[name=${tab}-mode]:checked`).value;
}

// ---- Compare ----------------------------------------------------------------------------

function setUpCompare() {
  setUpModes("compare");
  $("compare-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    let body;
    let names;
    let thumbnails = [];
    if (chosenMode("compare") === "image-texts") {
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

// ---- Search -----------------------------------------------------------------------------

const THUMBNAIL_PIXELS = 96; // the longer side: about 4 KB of JPEG, well inside the metadata limit

// A small JPEG of the image as a data URI, or null where this browser cannot decode it (the API
// then says what is wrong with the image).
async function thumbnail(file) {
  try {
    const bitmap = await createImageBitmap(file);
    const scale = Math.min(1, THUMBNAIL_PIXELS / Math.max(bitmap.width, bitmap.height));
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(bitmap.width * scale));
    canvas.height = Math.max(1, Math.round(bitmap.height * scale));
    canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    return canvas.toDataURL("image/jpeg", 0.8);
  } catch {
    return null;
  }
}

function collectionPath(name, rest = "") {
  return `v1/collections/${encodeURIComponent(name)}${rest}`;
}

// Fills the collection list; keeps `chosen` (or the current choice) selected where it exists.
async function listCollections(chosen) {
  const select = $("search-collection");
  const note = $("search-collections-note");
  const keep = chosen || select.value;
  let collections = [];
  try {
    collections = (await get("v1/collections")).data;
    note.textContent = collections.length ? "" : "No collections yet: add images below, or through the API.";
  } catch (problem) {
    note.textContent = describe(problem);
  }
  select.replaceChildren(...collections.map((collection) =>
    new Option(`${collection.name} (${collection.count} items)`, collection.name)));
  if (collections.some((collection) => collection.name === keep)) select.value = keep;
}

function drawMatches(container, answer) {
  drawBars(container, answer.data.map((match) => {
    const { thumbnail: image, ...rest } = match.metadata || {};
    const detail = Object.keys(rest).length ? JSON.stringify(rest) : "";
    return { name: match.id, score: match.score, detail,
             image: typeof image === "string" && image.startsWith("data:image/") ? image : null };
  }), "grid");
}

async function addImages(event) {
  event.preventDefault();
  const name = $("add-name").value.trim();
  const files = [...$("add-images").files];
  $("add-error").textContent = "";
  $("add-result").textContent = "";
  if (!files.length) {
    $("add-error").textContent = "Choose one or more images.";
    return;
  }
  try {
    const items = await Promise.all(files.map(async (file) => {
      const small = await thumbnail(file);
      return { id: file.name, image: await readAsDataUri(file), ...(small && { metadata: { thumbnail: small } }) };
    }));
    try {
      await post("v1/collections", { name });
    } catch (problem) {
      if (!(problem instanceof ApiError && problem.status === 409)) throw problem; // 409: it exists
    }
    await post(collectionPath(name, "/items"), { items });
    const { count } = await get(collectionPath(name));
    $("add-result").textContent = `Added ${items.length} images to '${name}', which now holds ${count} items.`;
    await listCollections(name);
  } catch (problem) {
    $("add-error").textContent = describe(problem);
  }
}

function setUpSearch() {
  setUpModes("search");
  $("tab-search").addEventListener("tabshown", () => listCollections());
  $("add-form").addEventListener("submit", addImages);
  $("search-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = $("search-collection").value;
    if (!name) {
      $("search-error").textContent = "Choose a collection, or add images to one below.";
      return;
    }
    let query = $("search-text").value;
    if (chosenMode("search") === "by-image") {
      const file = $("search-image").files[0];
      if (!file) {
        $("search-error").textContent = "Choose an image.";
        return;
      }
      query = { image: await readAsDataUri(file) };
    }
    run("search", collectionPath(name, "/search"), { query, top_k: Number($("search-top-k").value) }, drawMatches);
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
    tab.dispatchEvent(new Event("tabshown"));
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
    const answer = await get("v1/models");
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
    if (!$("panel-search").hidden) listCollections();
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
setUpSearch();
setUpCopyButtons();
showModel();
