// tfrec's page: a customer's recommendations, a product's similar products and a search,
// each the answer of a served model through the REST API any client uses.
//
// State lives in the URL (/?history=ID1,ID2&k=10&exclude=1&category=..&q=..&item=..), so a
// view can be shared. Product text is only ever set as textContent, never parsed as HTML.
"use strict";

const MODELS = {retrieve: ["tfrec_retrieve", "tfrec_retrieve_scann"], similar: ["tfrec_similar"],
                search: ["tfrec_search"]};
const K_DEFAULT = 10, K_MAX = 100, SHOWN_EXCLUDED = -1e29;
const URL_BUDGET = 8000;  // characters of ids in one titles lookup: well within any server's or proxy's line

const state = {history: [], k: K_DEFAULT, exclude: false, category: "", q: "", item: ""};
const titles = new Map();  // item id -> product text, or null for an id the catalogue lacks
const pitches = new Map();  // item id -> {pitch, source} from `tfrec serve --copy`, for the ids that have one
let info = {models: {}, samples: [], max_titles: 100, category_field: null};
let generation = 0;        // drops the answers of views the person has already left

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- requests

async function getJson(url, options) {
  const response = await fetch(url, options);
  let body;
  try {
    body = await response.json();
  } catch (e) {
    throw new Error(`${response.status} ${response.statusText}: the answer is not JSON`);
  }
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function modelFor(kind) {
  return MODELS[kind].find((name) => Object.hasOwn(info.models, name)) || null;
}

async function predict(model, inputs) {
  const body = await getJson(`/v1/models/${model}:predict`, {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({inputs}),
  });
  return body.outputs;
}

// The titles of ids not seen yet, asked for in lists of at most info.max_titles ids and
// URL_BUDGET characters of query.
async function lookUpTitles(ids) {
  const wanted = [...new Set(ids)].filter((id) => id && !titles.has(id));
  while (wanted.length) {
    const chunk = [];
    let length = 0;
    while (wanted.length && chunk.length < info.max_titles &&
           (!chunk.length || length + encodeURIComponent(wanted[0]).length + 4 <= URL_BUDGET)) {
      length += encodeURIComponent(wanted[0]).length + 4;
      chunk.push(wanted.shift());
    }
    const query = new URLSearchParams(chunk.map((id) => ["id", id]));
    const answer = await getJson(`/page/titles?${query}`);
    const found = answer.titles;
    // Own keys only: ids such as "constructor" or "__proto__" name what every object inherits.
    for (const id of chunk) {
      titles.set(id, Object.hasOwn(found, id) && typeof found[id] === "string" ? found[id] : null);
    }
    for (const [id, pitch] of Object.entries(answer.pitches || {})) pitches.set(id, pitch);
  }
}

// ---------------------------------------------------------------- the URL

function readUrl() {
  const params = new URLSearchParams(window.location.search);
  state.history = (params.get("history") || "").split(",").map((id) => id.trim()).filter(Boolean);
  const k = parseInt(params.get("k") || "", 10);
  state.k = Number.isFinite(k) ? Math.min(Math.max(k, 1), K_MAX) : K_DEFAULT;
  state.exclude = ["1", "true", "yes"].includes(params.get("exclude") || "");
  state.category = params.get("category") || "";
  state.q = params.get("q") || "";
  state.item = params.get("item") || "";
}

function writeUrl() {
  const parts = [];
  if (state.history.length) parts.push("history=" + state.history.map(encodeURIComponent).join(","));
  if (state.k !== K_DEFAULT) parts.push(`k=${state.k}`);
  if (state.exclude) parts.push("exclude=1");
  for (const key of ["category", "q", "item"]) {
    if (state[key]) parts.push(`${key}=${encodeURIComponent(state[key])}`);
  }
  const url = parts.length ? `/?${parts.join("&")}` : "/";
  if (url !== window.location.pathname + window.location.search) window.history.pushState(null, "", url);
}

// ---------------------------------------------------------------- building blocks

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "data") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);  // strings become text nodes
  }
  return node;
}

function titleOf(id) {
  const text = titles.get(id);
  return text === null || text === undefined ? null : text;
}

// A product: its title (a button that opens it) and its id.
function product(id) {
  const text = titleOf(id);
  const open = el("button", {type: "button", class: "link title", title: "Show similar products",
                             onclick: () => update({item: id})}, text ?? "(not in this catalogue)");
  if (text === null) open.classList.add("unknown");
  return el("span", {class: "product"}, open, el("span", {class: "id"}, id));
}

// The product's pitch (`tfrec serve --copy`), marked when it is the template sentence.
function pitchOf(id) {
  const found = pitches.get(id);
  if (!found) return null;
  return el("p", {class: `pitch ${found.source}`, title: found.source === "generated" ?
    "Written by the copy model; it passed the guard" : "The template sentence: no sample passed the guard"},
  found.pitch);
}

function addButton(id) {
  const inHistory = state.history.includes(id);
  return el("button", {type: "button", class: "add", disabled: inHistory,
                       title: inHistory ? "Already in the history" : "Add to the history",
                       onclick: () => update({history: [...state.history, id]})}, inHistory ? "in history" : "+ history");
}

function score(value) {
  return value <= SHOWN_EXCLUDED ? "excluded" : value.toFixed(3);
}

function fillTable(table, rows) {
  const body = table.tBodies[0];
  body.replaceChildren(...rows);
  table.hidden = rows.length === 0;
}

function say(id, text, isError = false) {
  const node = $(id);
  node.textContent = text;
  node.classList.toggle("error", isError);
  node.hidden = !text;
}

// ---------------------------------------------------------------- the views

function nextBasket() {
  const key = state.history.join(",");
  const sample = info.samples.find((s) => s.history.join(",") === key);
  return sample ? new Set(sample.next_basket) : null;
}

function renderHistory() {
  const list = $("history");
  list.replaceChildren(...state.history.map((id, position) => el("li", {data: {itemId: id}},
    product(id),
    el("button", {type: "button", class: "remove", title: "Remove from the history", "aria-label": `Remove ${id}`,
                  onclick: () => update({history: state.history.filter((_, i) => i !== position)})}, "\u00d7"))));
  $("history-empty").hidden = state.history.length > 0;
  $("history-meta").textContent = state.history.length ? `${state.history.length} items, oldest first` : "";
}

async function showRecommendations(run) {
  const model = modelFor("retrieve");
  $("recs-meta").textContent = model ? `by ${model}` : "";
  if (!state.history.length || !model) {
    fillTable($("recs"), []);
    say("recs-status", model ? "Recommendations appear here for a history." : "No retrieval model is served.");
    return;
  }
  say("recs-status", "Asking the model\u2026");
  const inputs = {history: [state.history], k: state.k, exclude_history: state.exclude};
  if (state.category) inputs.category = state.category;
  const out = await predict(model, inputs);
  const ids = out.item_ids[0], because = out.because_ids ? out.because_ids[0] : [];
  await lookUpTitles([...ids, ...because]);
  if (run !== generation) return;
  const next = nextBasket();
  fillTable($("recs"), ids.map((id, i) => el("tr", {data: {itemId: id}, class: next && next.has(id) ? "hit" : null},
    el("td", {class: "num"}, String(i + 1)),
    el("td", {}, product(id), next && next.has(id) ? el("span", {class: "badge"}, "bought next") : null,
      pitchOf(id)),
    el("td", {class: "num"}, score(out.scores[0][i])),
    el("td", {class: "because"}, because[i] ? product(because[i]) : ""),
    el("td", {}, addButton(id)))));
  const hits = next ? ids.filter((id) => next.has(id)).length : null;
  say("recs-status", hits === null ? "" :
    `${hits} of these ${ids.length} ${hits === 1 ? "was" : "were"} in this customer's next basket.`);
}

async function showSearch(run) {
  const model = modelFor("search");
  $("search").hidden = !model;
  $("q").value = state.q;
  if (!state.q || !model) {
    fillTable($("search-results"), []);
    say("search-status", "");
    return;
  }
  say("search-status", "Searching\u2026");
  const inputs = {query: [state.q], k: state.k, history: [state.history.length ? state.history : [""]]};
  if (state.category) inputs.category = state.category;
  const out = await predict(model, inputs);
  const ids = out.item_ids[0];
  await lookUpTitles(ids);
  if (run !== generation) return;
  fillTable($("search-results"), ids.map((id, i) => el("tr", {data: {itemId: id}},
    el("td", {class: "num"}, String(i + 1)), el("td", {}, product(id)),
    el("td", {class: "num"}, score(out.scores[0][i])), el("td", {}, addButton(id)))));
  say("search-status", state.history.length ? `By ${model}, blended with the history.` : `By ${model}.`);
}

async function showProduct(run) {
  const model = modelFor("similar");
  $("product").hidden = !state.item;
  if (!state.item) return;
  await lookUpTitles([state.item]);
  $("product-title").textContent = titleOf(state.item) ?? "(not in this catalogue)";
  $("product-id").textContent = state.item;
  const add = $("product-add");
  add.disabled = state.history.includes(state.item);
  add.textContent = add.disabled ? "In the history" : "Add to history";
  if (!model) {
    say("similar-status", "No similar-items model is served.");
    return;
  }
  say("similar-status", "Asking the model\u2026");
  const inputs = {item_id: [state.item], k: state.k};
  if (state.category) inputs.category = state.category;
  const out = await predict(model, inputs);
  const ids = out.item_ids[0];
  await lookUpTitles(ids);
  if (run !== generation) return;
  fillTable($("similar"), ids.map((id, i) => el("tr", {data: {itemId: id}},
    el("td", {class: "num"}, String(i + 1)), el("td", {}, product(id)),
    el("td", {class: "num"}, score(out.scores[0][i])), el("td", {}, addButton(id)))));
  say("similar-status", `By ${model}.`);
}

// Each view fails on its own: its error shows in its place, the others still render.
async function guarded(view, statusId, run) {
  try {
    await view(run);
  } catch (error) {
    if (run === generation) say(statusId, error.message, true);
  }
}

async function render() {
  const run = ++generation;
  $("k").value = state.k;
  $("exclude").checked = state.exclude;
  $("category").value = state.category;
  const sample = info.samples.findIndex((s) => s.history.join(",") === state.history.join(","));
  $("sample").value = sample >= 0 ? String(sample) : "";
  try {
    await lookUpTitles(state.history);
  } catch (error) {
    say("recs-status", error.message, true);
  }
  if (run !== generation) return;
  renderHistory();
  await Promise.all([guarded(showRecommendations, "recs-status", run), guarded(showSearch, "search-status", run),
                     guarded(showProduct, "similar-status", run)]);
  if (run === generation) document.body.dataset.ready = String(run);
}

function update(changes) {
  Object.assign(state, changes);
  writeUrl();
  render();
}

// ---------------------------------------------------------------- start

function showServed() {
  const models = Object.entries(info.models).map(([name, version]) => `${name} v${version}`);
  const items = info.items ? `${info.items.toLocaleString("en")} items \u00b7 ` : "";
  $("served").textContent = items + (models.length ? models.join(" \u00b7 ") : "no models served yet");
  if (info.category_field) {
    $("category-name").textContent = info.category_field;
    $("category-label").hidden = false;
  }
  if (info.samples.length) {
    $("sample").append(...info.samples.map((sample, i) => el("option", {value: String(i)},
      `${sample.user_id} (${sample.history.length} items)`)));
    $("sample-label").hidden = false;
  }
}

function wire() {
  $("history-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const ids = $("history-input").value.split(/[\s,]+/).filter(Boolean);
    $("history-input").value = "";
    if (ids.length) update({history: [...state.history, ...ids]});
  });
  $("history-clear").addEventListener("click", () => update({history: []}));
  $("sample").addEventListener("change", (event) => {
    const sample = info.samples[Number(event.target.value)];
    if (sample) update({history: [...sample.history]});
  });
  $("k").addEventListener("change", (event) => {
    const k = parseInt(event.target.value, 10);
    update({k: Number.isFinite(k) ? Math.min(Math.max(k, 1), K_MAX) : K_DEFAULT});
  });
  $("exclude").addEventListener("change", (event) => update({exclude: event.target.checked}));
  $("category").addEventListener("change", (event) => update({category: event.target.value.trim()}));
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    update({q: $("q").value.trim()});
  });
  $("product-add").addEventListener("click", () => update({history: [...state.history, state.item]}));
  $("product-close").addEventListener("click", () => update({item: ""}));
  window.addEventListener("popstate", () => {
    readUrl();
    render();
  });
}

async function start() {
  wire();
  readUrl();
  try {
    info = await getJson("/page/info");
  } catch (error) {
    say("page-error", `The server did not describe itself: ${error.message}`, true);
  }
  showServed();
  await render();
}

start();
