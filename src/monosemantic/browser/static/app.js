// The feature browser's front end: hash routes rendered from the JSON API (or, in an exported
// site, from data scripts written by `monosemantic export-html`). Plain DOM, no framework.
"use strict";

const EXPORT = Boolean(window.MONOSEMANTIC_EXPORT);
const view = document.getElementById("view");
const tooltip = document.getElementById("tooltip");
const PAGE_SIZE = 50;
let overviewCache = null;

// ---- data access ------------------------------------------------------------------------------

class ApiError extends Error {}

async function api(path, body) {
  if (EXPORT) return exported(path);
  const response = await fetch("api/" + path, body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const data = await response.json();
  if (!response.ok) throw new ApiError(data.error || response.statusText);
  return data;
}

// An exported site loads `data/<path>.js`, which stores its object in window.MONOSEMANTIC_DATA
// (a <script> works from file://, where fetch() of a local file does not).
function exported(path) {
  window.MONOSEMANTIC_DATA = window.MONOSEMANTIC_DATA || {};
  const key = decodeURIComponent(path);  // stored under the plain name (an extra hook point's SAE has an "@")
  if (key in window.MONOSEMANTIC_DATA) return Promise.resolve(window.MONOSEMANTIC_DATA[key]);
  return new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = "data/" + path + ".js";
    script.onload = () => resolve(window.MONOSEMANTIC_DATA[key]);
    script.onerror = () => reject(new ApiError(`not in this export: ${path}`));
    document.head.appendChild(script);
  });
}

function pictureUrl(rel) { return (EXPORT ? "files/" : "api/files/") + rel; }

async function overview() {
  if (!overviewCache) overviewCache = await api("overview");
  return overviewCache;
}

async function listUnits(dict, p) {
  if (!EXPORT) {
    const query = new URLSearchParams();
    for (const [k, v] of Object.entries(p)) if (v !== "" && v !== undefined && v !== null) query.set(k, v);
    return api(`dicts/${encodeURIComponent(dict)}/units?${query}`);
  }
  const all = await api(`units/${dict}`);
  const q = sqlLower(p.q || "");
  let rows = all.rows.filter(r => r.density >= (+p.min_density || 0) && r.density <= (p.max_density === "" || p.max_density === undefined ? 1 : +p.max_density)
    && (!q || sqlLower(r.explanation || "").includes(q))
    && (p.min_score === "" || p.min_score === undefined || (r.simulation_score !== null && r.simulation_score >= +p.min_score)));
  let matched = [];
  if (p.token) {
    const index = await api(`tokens/${dict}`);
    matched = p.token in index ? [p.token] : Object.keys(index).filter(t => sqlTrimLower(t) === sqlTrimLower(p.token));
    const f1 = new Map();
    for (const [unit, value] of matched.flatMap(t => index[t])) f1.set(unit, Math.max(value, f1.get(unit) ?? -Infinity));
    rows = rows.filter(r => f1.has(r.unit)).map(r => ({...r, f1: f1.get(r.unit)}));
  }
  const sort = p.sort, sign = p.order === "asc" ? 1 : -1;
  rows.sort((a, b) => (a[sort] === null) - (b[sort] === null) || sign * (a[sort] - b[sort]) || a.unit - b.unit);
  return {dict, total: rows.length, offset: +p.offset, rows: rows.slice(+p.offset, +p.offset + PAGE_SIZE), matched_tokens: matched};
}

// SQLite's lower() and trim(), which the server's search uses: ASCII letters only, spaces only.
const sqlLower = s => s.replace(/[A-Z]/g, c => c.toLowerCase());
const sqlTrimLower = s => sqlLower(s.replace(/^ +| +$/g, ""));

// ---- small rendering helpers ------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "style" && typeof v === "object") Object.assign(el.style, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}

const fmt = (x, digits = 3) => x === null || x === undefined ? "–" : Number(x).toFixed(digits);
const pct = x => x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%";
const sci = x => x === null || x === undefined ? "–" : x === 0 ? "0" : x >= 0.01 ? x.toFixed(3) : x.toExponential(1);
const showToken = t => t.replace(/\n/g, "↵").replace(/\t/g, "⇥");
const chip = t => h("span", {class: "tokchip"}, showToken(t));
const unitHref = (dict, unit) => dict === "neurons" ? `#/neuron/${unit}` : `#/feature/${encodeURIComponent(dict)}/${unit}`;
const unitLink = (dict, unit, label) => h("a", {href: unitHref(dict, unit)}, `${dict === "neurons" ? "neuron" : "feature"} ${unit}`,
  label && label.length ? h("span", {class: "muted"}, " ", label.map(showToken).join(" · ")) : null);

function heat(act, max) {
  const a = max > 0 ? Math.max(0, Math.min(1, act / max)) : 0;
  return a > 0 ? `rgba(234, 88, 12, ${(0.08 + 0.8 * a).toFixed(3)})` : "transparent";
}

function hover(el, text) {
  el.addEventListener("mouseenter", () => { tooltip.textContent = text; tooltip.hidden = false; });
  el.addEventListener("mousemove", e => { tooltip.style.left = e.clientX + 12 + "px"; tooltip.style.top = e.clientY + 12 + "px"; });
  el.addEventListener("mouseleave", () => { tooltip.hidden = true; });
  return el;
}

function tokenSpan(text, act, max, extra = "") {
  const span = h("span", {class: "tok " + extra, style: {background: heat(act, max)}, "data-act": act.toFixed(3)}, showToken(text));
  return hover(span, `${JSON.stringify(text)}  activation ${act.toFixed(3)}`);
}

function context(example, max) {
  const line = h("div", {class: "ctx"}, h("span", {class: "act"}, fmt(example.activation)));
  example.texts.forEach((t, i) => line.append(tokenSpan(t, example.acts[i], max, i === example.center ? "center" : "")));
  return line;
}

function histogram(counts, [xmin, xmax], {width = 520, height = 120, label = "activation"} = {}) {
  const ns = "http://www.w3.org/2000/svg", svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", width); svg.setAttribute("height", height + 18);
  const peak = Math.max(1, ...counts), bw = width / counts.length;
  counts.forEach((c, i) => {
    const r = document.createElementNS(ns, "rect"), bh = c ? Math.max(1, height * c / peak) : 0;
    r.setAttribute("x", i * bw + 0.5); r.setAttribute("width", Math.max(1, bw - 1));
    r.setAttribute("y", height - bh); r.setAttribute("height", bh); r.setAttribute("fill", "#ea580c");
    const title = document.createElementNS(ns, "title");
    title.textContent = `${label} bin ${i}: ${c}`; r.append(title); svg.append(r);
  });
  for (const [x, text, anchor] of [[0, xmin, "start"], [width, xmax, "end"]]) {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", x); t.setAttribute("y", height + 13); t.setAttribute("text-anchor", anchor); t.textContent = text; svg.append(t);
  }
  return svg;
}

function bars(rows, cls) {
  const peak = Math.max(1e-9, ...rows.map(r => Math.abs(r[1])));
  return h("div", {class: "bars"}, rows.map(([label, value, extra]) => h("div", {class: "bar-row"},
    h("span", {class: "label"}, extra || showToken(label)),
    h("div", {}, h("div", {class: "bar " + cls, style: {width: (100 * Math.abs(value) / peak).toFixed(1) + "%"}})),
    h("span", {class: "num"}, fmt(value)))));
}

function table(headers, rows) {
  return h("table", {}, h("thead", {}, h("tr", {}, headers.map(([text, cls]) => h("th", {class: cls}, text)))),
    h("tbody", {}, rows.map(cells => h("tr", {}, cells.map(([v, cls]) => h("td", {class: cls}, v))))));
}

function render(...nodes) { view.replaceChildren(...nodes); window.scrollTo(0, 0); }

// ---- overview ---------------------------------------------------------------------------------

async function showOverview() {
  const o = await overview();
  const lm = o.lm, interp = o.interpretability, s = lm.shape;
  // grouped by the hook point they read, the main one (the neurons') first, then by name; by size within a group
  const main = lm.shape.hook_name, hookOf = d => d.hook_name || main;
  const hookKey = d => hookOf(d) === main ? "" : hookOf(d);
  const saes = o.dictionaries.filter(d => d.unit_kind === "feature").sort((a, b) => hookKey(a).localeCompare(hookKey(b)));
  const neurons = o.dictionaries.find(d => d.unit_kind === "neuron");
  const hooks = [...new Set([...(neurons ? [main] : []), ...saes.map(hookOf)])];
  const out = [h("h1", {}, `Run ${o.run}`)];
  out.push(h("div", {class: "grid"},
    h("div", {class: "card", id: "lm-card"}, h("h3", {}, "Language model"),
      h("p", {}, `${s.n_layers}-layer transformer, d_model ${s.d_model}, ${s.d_mlp} MLP neurons, context ${s.n_ctx}` +
        (lm.n_params ? `, ${lm.n_params.toLocaleString()} parameters` : "")),
      h("p", {}, "validation loss ", h("b", {}, fmt(lm.val_loss)), ` nats/token (unigram ${fmt(lm.unigram_loss)}, bigram ${fmt(lm.bigram_loss)})`),
      h("p", {class: "muted"}, hooks.length > 1 ? `SAEs read ${hooks.join(", ")}` : `SAEs read ${s.hook_name}`)),
    h("div", {class: "card"}, h("h3", {}, "Neurons vs features: interpretability"),
      interp.neuron_score_mean === null || interp.neuron_score_mean === undefined ? h("p", {class: "muted"}, "not scored") :
      table([["unit"], ["mean score", "num"], ["median", "num"], ["detection", "num"]], [
        [["neurons"], [fmt(interp.neuron_score_mean), "num"], [fmt(interp.neuron_score_median), "num"], [fmt(interp.neuron_detection_mean), "num"]],
        [[`features (${interp.feature_dictionary})`], [fmt(interp.feature_score_mean), "num"], [fmt(interp.feature_score_median), "num"], [fmt(interp.feature_detection_mean), "num"]]]),
      h("p", {class: "muted"}, `explanations by ${interp.backend || "–"}, ${interp.n_scored_units || 0} units scored per dictionary`))));
  out.push(h("h2", {}, "Dictionaries"));
  const dictRow = d => h("tr", {}, [[[h("a", {href: `#/features/${encodeURIComponent(d.name)}`}, d.name), ...originBadge(d)]],
      [d.n_units.toLocaleString(), "num"], [fmt(d.l0, 1), "num"], [fmt(d.fvu), "num"], [pct(d.loss_recovered), "num"],
      [pct(d.dead_frac), "num"], [pct(d.dense_frac), "num"], [sci(d.mean_density), "num"], [fmt(d.score_mean), "num"],
      [h("a", {href: `#/features/${encodeURIComponent(d.name)}`}, "browse →")]].map(([v, cls]) => h("td", {class: cls}, v)));
  // with several hook points, each group of rows under a row naming its hook point
  const dictHeaders = [["dictionary"], ["units", "num"], ["L0", "num"], ["FVU", "num"], ["loss recovered", "num"], ["dead", "num"],
    ["dense", "num"], ["mean density", "num"], ["mean score", "num"], [""]];
  out.push(h("table", {id: "dictionaries"}, h("thead", {}, h("tr", {}, dictHeaders.map(([text, cls]) => h("th", {class: cls}, text)))),
    h("tbody", {}, hooks.flatMap(hook => [
      hooks.length > 1 ? h("tr", {class: "hook-group"}, h("th", {colspan: dictHeaders.length}, `at ${hook}`)) : null,
      ...[...(neurons && hook === main ? [neurons] : []), ...saes.filter(d => hookOf(d) === hook)].map(dictRow)]))));
  const withHist = saes.filter(d => d.density_log10_hist);
  if (withHist.length) {
    out.push(h("h2", {}, "Feature density (log10 of firing frequency, −8 … 0)"));
    out.push(h("div", {class: "grid"}, withHist.map(d => h("div", {class: "card"}, h("h3", {}, d.name),
      histogram(d.density_log10_hist, ["10⁻⁸", "1"], {width: 320, height: 80, label: "log10 density"})))));
  }
  if (o.splitting.length) {
    out.push(h("h2", {}, "Feature splitting"));
    out.push(table([["size → next"], ["live", "num"], ["split into ≥ 2", "num"], ["one child", "num"], ["no child", "num"]],
      o.splitting.map(r => [[`${r.size} → ${r.next_size}` + (r.hook_name ? ` at ${r.hook_name}` : "")], [r.live, "num"], [r.split_2plus, "num"], [r.one_child, "num"], [r.no_child, "num"]])));
  }
  if (o.universality.median_feature_corr !== null && o.universality.median_feature_corr !== undefined) {
    const u = o.universality;
    out.push(h("h2", {}, "Universality"), h("p", {}, `median max-correlation with a second model: features ${fmt(u.median_feature_corr, 2)}, ` +
      `neurons ${fmt(u.median_neuron_corr, 2)} (paper ${fmt(u.paper_median_feature_corr, 2)} vs ${fmt(u.paper_median_neuron_corr, 2)})`));
  }
  for (const [folder, files] of Object.entries(o.pictures)) {
    out.push(h("h2", {}, {plots: "Density plots", toy: "Toy models of superposition", splitting: "Split families",
      feature_map: "Feature map", analysis: "Interpretability scores", universality: "Universality"}[folder] || folder));
    out.push(h("div", {class: "grid pictures"}, files.map(f => h("figure", {},
      h("a", {href: pictureUrl(f), target: "_blank"}, h("img", {src: pictureUrl(f), alt: f, loading: "lazy"})), h("figcaption", {}, f)))));
  }
  render(...out);
}

// ---- feature list -----------------------------------------------------------------------------

async function showFeatures(dict, params) {
  const o = await overview();
  const dicts = o.dictionaries.map(d => d.name);
  dict = dict || (o.dictionaries.filter(d => d.unit_kind === "feature").pop() || o.dictionaries[0]).name;
  const p = {sort: params.get("sort") || (params.get("token") ? "f1" : "simulation_score"), order: params.get("order") || "desc",
    offset: Math.max(0, parseInt(params.get("offset") || "0", 10) || 0), limit: PAGE_SIZE, q: params.get("q") || "",
    token: params.get("token") || "", min_density: params.get("min_density") || "", max_density: params.get("max_density") || "",
    min_score: params.get("min_score") || ""};
  const go = changes => {
    const next = {...p, offset: 0, ...changes}; delete next.limit;
    location.hash = `#/features/${encodeURIComponent(next.dict || dict)}?` +
      new URLSearchParams(Object.entries(next).filter(([k, v]) => v !== "" && k !== "dict"));
  };
  const input = (name, placeholder, width) => h("input", {name, value: p[name], placeholder, style: {width}});
  const form = h("form", {class: "controls", id: "search-form", onsubmit: e => {
    e.preventDefault();
    const f = new FormData(e.target);
    go({dict: f.get("dict"), q: f.get("q"), token: f.get("token"), min_density: f.get("min_density"), max_density: f.get("max_density"),
      min_score: f.get("min_score"), sort: f.get("token") ? (p.sort === "simulation_score" ? "f1" : p.sort) : (p.sort === "f1" ? "simulation_score" : p.sort)});
  }},
    h("label", {}, "dictionary", h("select", {name: "dict"}, dicts.map(n => h("option", {value: n, selected: n === dict}, n)))),
    h("label", {}, "explanation contains", input("q", "e.g. God", "160px")),
    h("label", {}, "fires on token", input("token", 'e.g. " God"', "120px")),
    h("label", {}, "min density", input("min_density", "0", "80px")),
    h("label", {}, "max density", input("max_density", "1", "80px")),
    h("label", {}, "min score", input("min_score", "-1", "70px")),
    h("button", {type: "submit"}, "Search"));
  let data;
  try { data = await listUnits(dict, p); } catch (err) { return render(h("h1", {}, dict), form, h("p", {class: "error"}, err.message)); }
  const columns = [["unit", "unit"], ["density", "density"], ["max act", "max_act"], ["score", "simulation_score"], ["detection", "detection_score"]];
  if (p.token) columns.push(["F1 (token)", "f1"]);
  const header = columns.map(([label, key]) => h("th", {class: "sortable num", "data-sort": key,
    onclick: () => go({sort: key, order: p.sort === key && p.order === "desc" ? "asc" : "desc", offset: p.offset})},
    label + (p.sort === key ? (p.order === "desc" ? " ▼" : " ▲") : "")));
  const rows = data.rows.map(r => h("tr", {},
    h("td", {class: "num"}, h("a", {href: unitHref(dict, r.unit)}, r.unit)), h("td", {class: "num"}, sci(r.density)),
    h("td", {class: "num"}, fmt(r.max_act, 2)), h("td", {class: "num"}, fmt(r.simulation_score, 2)),
    h("td", {class: "num"}, fmt(r.detection_score, 2)), p.token ? h("td", {class: "num"}, fmt(r.f1, 3)) : null,
    h("td", {}, r.top_tokens.map(chip).flatMap((c, i) => i ? [" ", c] : [c])), h("td", {}, r.explanation || "")));
  const last = Math.min(data.total, p.offset + data.rows.length);
  const pager = () => h("div", {class: "pager"},
    h("button", {disabled: p.offset === 0, onclick: () => go({offset: Math.max(0, p.offset - PAGE_SIZE), sort: p.sort, order: p.order})}, "← previous"),
    h("span", {class: "list-count"}, data.total ? `${p.offset + 1}–${last} of ${data.total.toLocaleString()}` : "no units match"),
    h("button", {disabled: last >= data.total, onclick: () => go({offset: p.offset + PAGE_SIZE, sort: p.sort, order: p.order})}, "next →"));
  render(h("h1", {}, `${dict}: ${o.dictionaries.find(d => d.name === dict)?.unit_kind || "unit"}s`), form,
    p.token && data.matched_tokens.length ? h("p", {class: "muted"}, "token ", data.matched_tokens.map(chip), ", ranked by F1 of precision and recall") : null,
    pager(), h("table", {id: "unit-table"}, h("thead", {}, h("tr", {}, header, h("th", {}, "top tokens"), h("th", {}, "explanation"))), h("tbody", {}, rows)), pager());
}

// ---- one unit ---------------------------------------------------------------------------------

// A dictionary trained elsewhere says so wherever it is named: its source and the hook point it reads.
function originBadge(d) {
  if (!d || !d.foreign) return [];
  return [" ", h("span", {class: "badge foreign", title: `from ${d.foreign.from}`}, `foreign: ${d.foreign.source} at ${d.hook_name}`)];
}

async function showUnit(dict, unit) {
  const page = await api(dict === "neurons" ? `neurons/${unit}` : `saes/${encodeURIComponent(dict)}/features/${unit}`);
  const kind = page.unit_kind, max = page.max_act;
  const out = [h("p", {class: "muted"}, h("a", {href: `#/features/${encodeURIComponent(dict)}`}, dict), ` · ${kind} ${unit} of ${page.dictionary.n_units}`),
    h("h1", {}, `${dict === "neurons" ? "Neuron" : "Feature"} ${unit}`, h("span", {class: "muted"}, ` — ${dict}`), ...originBadge(page.dictionary))];
  out.push(h("div", {class: "card", id: "explanation"},
    h("p", {}, h("b", {}, "Explanation: "), page.explanation || h("span", {class: "muted"}, "none")),
    h("p", {}, "simulation score ", h("b", {id: "score"}, fmt(page.simulation_score, 3)), " · detection score ", fmt(page.detection_score, 3),
      " · by ", h("span", {class: "tag"}, page.score_backend || page.dictionary.scored_backend || "–")),
    h("p", {class: "muted"}, `fires on ${page.fire_count.toLocaleString()} of ${page.dictionary.n_tokens.toLocaleString()} tokens ` +
      `(density ${sci(page.density)}), max activation ${fmt(max)}, mean ${fmt(page.mean_act)}`),
    !EXPORT && kind === "feature" ? h("p", {}, h("a", {href: `#/steer?sae=${encodeURIComponent(dict)}&feature=${unit}&value=${(2 * max).toFixed(2)}`}, "steer with this feature →")) : null));
  const left = h("div", {}), right = h("div", {});
  left.append(h("h2", {}, "Activation histogram (when firing)"), histogram(page.hist, ["0", fmt(page.hist_max, 2)]));
  left.append(h("h2", {}, "Top activating contexts"), h("div", {id: "top-examples"}, page.top_examples.map(e => context(e, max))));
  if (page.intervals.length) {
    left.append(h("h2", {}, "Samples across activation intervals"));
    for (const iv of page.intervals) left.append(h("h3", {}, `interval ${iv.bucket}: ${fmt(iv.low, 2)} – ${fmt(iv.high, 2)}`), ...iv.examples.map(e => context(e, max)));
  }
  if (page.random_examples.length) left.append(h("h2", {}, "Random firing contexts"), ...page.random_examples.map(e => context(e, max)));
  right.append(h("h2", {}, "Tokens it fires on"), table([["token"], ["fires", "num"], ["mean act", "num"]],
    page.top_tokens.map(t => [[chip(t.token)], [t.fires, "num"], [fmt(t.mean_act, 2), "num"]])));
  right.append(h("h2", {}, "Logit effects"), h("h3", {}, "promoted"), bars(page.logits.top, "pos"),
    h("h3", {}, "suppressed"), bars(page.logits.bottom, "neg"));
  const neighbourList = (title, rows, d, valueLabel) => rows.length ? [h("h3", {}, title),
    h("ul", {}, rows.map(r => h("li", {}, unitLink(d, r.unit, r.label), h("span", {class: "muted"}, ` ${valueLabel} ${fmt(r.value, 3)}`))))] : [];
  right.append(h("h2", {}, "Nearest units"), ...neighbourList("by decoder cosine", page.decoder_neighbours, dict, "cos"),
    ...neighbourList("by co-firing (Jaccard)", page.cofiring_neighbours, dict, "J"));
  if (page.constituents) right.append(h("h2", {}, "Constituent neurons"), ...neighbourList("largest decoder weights", page.constituents, "neurons", "w"));
  if (page.used_by) {
    right.append(h("h2", {}, "Features using this neuron"));
    for (const [name, rows] of Object.entries(page.used_by)) right.append(...neighbourList(name, rows, name, "w"));
  }
  if (page.family) {
    const f = page.family;
    // each member's context: where its activation comes from (source shares) and the tokens it follows
    const where = n => [n.sources.length ? h("div", {class: "family-sources"}, "sources: ", n.sources.map(([s, v]) => `${s} ${fmt(100 * v, 0)} %`).join(" · ")) : null,
      n.after.length ? h("div", {class: "family-after"}, "after: ", ...n.after.map(([t, v]) => h("span", {}, chip(t), ` ${fmt(100 * v, 0)} % `))) : null];
    const node = (n, link = true) => h("li", {}, link ? unitLink(n.sae, n.feature) : h("b", {}, `feature ${n.feature}`), h("span", {class: "muted"}, ` ${n.label}`, n.similarity === null ? "" : ` (sim ${fmt(n.similarity, 2)})`,
      n.parent_coverage == null ? "" : ` · covers ${fmt(100 * n.parent_coverage, 0)} % of its parent`), ...where(n));
    right.append(h("h2", {}, "Split family across sizes"), h("div", {class: "family", id: "family"},
      f.ancestors.length ? [h("h3", {}, "ancestors"), h("ul", {}, f.ancestors.map(n => node(n)))] : h("p", {class: "muted"}, "no parent in a smaller SAE"),
      h("h3", {}, "this feature"), h("ul", {}, node(f.self, false)),
      f.descendants.filter(l => l.total).map(l => [h("h3", {}, `${l.sae}: ${l.total} descendant${l.total === 1 ? "" : "s"}`),
        h("ul", {}, l.features.map(n => node(n)))])));
  }
  out.push(h("div", {style: {display: "grid", gridTemplateColumns: "minmax(0, 3fr) minmax(0, 2fr)", gap: "24px"}}, left, right));
  render(...out);
}

// ---- live text and steering -------------------------------------------------------------------

async function showLive(params) {
  const o = await overview();
  const dicts = o.dictionaries.map(d => d.name);
  const fallback = (o.dictionaries.filter(d => d.unit_kind === "feature").pop() || o.dictionaries[0]).name;
  const text = h("textarea", {id: "live-text", placeholder: "Type some text…"}, params.get("text") || "In the beginning God created the heaven and the earth.");
  const select = h("select", {id: "live-dict"}, dicts.map(n => h("option", {value: n, selected: n === (params.get("dict") || fallback)}, n)));
  const result = h("div", {id: "live-result"});
  const run = async () => {
    result.replaceChildren(h("p", {class: "muted"}, "running the model…"));
    let data;
    try { data = await api("live", {text: text.value, dictionary: select.value}); }
    catch (err) { return result.replaceChildren(h("p", {class: "error", id: "live-error"}, err.message)); }
    const detail = h("div", {id: "live-detail"}, h("p", {class: "muted"}, "Click a token to list its units; click a unit to highlight where it fires."));
    const tokens = h("div", {class: "live-tokens", id: "live-tokens"});
    const paint = unit => {
      const u = data.units.find(x => x.unit === unit), peak = u ? u.max_act : 0;
      tokens.querySelectorAll(".tok").forEach((el, i) => { el.style.background = heat(u ? u.acts[i] : 0, peak); });
    };
    data.tokens.forEach((t, i) => {
      const el = hover(h("span", {class: "tok", "data-index": i}, showToken(t.text)),
        t.units.length ? t.units.map(u => `${data.dict === "neurons" ? "neuron" : "feature"} ${u.unit}: ${u.act.toFixed(3)}`).join("\n") : "no unit fires");
      el.addEventListener("click", () => {
        tokens.querySelectorAll(".tok").forEach(x => x.classList.remove("selected")); el.classList.add("selected");
        detail.replaceChildren(h("h3", {}, "strongest units on ", chip(t.text)),
          t.units.length ? table([["unit"], ["activation", "num"]], t.units.map(u => [[unitLink(data.dict, u.unit)], [fmt(u.act), "num"]])) : h("p", {class: "muted"}, "none"));
      });
      tokens.append(el);
    });
    const unitTable = table([["unit"], ["max activation", "num"], [""]], data.units.map(u => [[unitLink(data.dict, u.unit)], [fmt(u.max_act), "num"],
      [h("button", {type: "button", onclick: () => paint(u.unit)}, "highlight")]]));
    unitTable.id = "live-units";
    result.replaceChildren(h("h2", {}, `${data.tokens.length} tokens`), tokens, detail,
      h("h2", {}, "Units firing most on this text"), unitTable);
    if (data.units.length) paint(data.units[0].unit);
  };
  render(h("h1", {}, "Live text"), h("p", {class: "muted"}, "The server runs the LM and the chosen SAE on your text (at most one context window)."),
    text, h("div", {class: "controls"}, h("label", {}, "dictionary", select), h("button", {id: "live-run", onclick: run}, "Run")), result);
}

async function showSteer(params) {
  const o = await overview();
  const saes = o.dictionaries.filter(d => d.unit_kind === "feature").map(d => d.name);
  const field = (name, value, width) => h("input", {name, id: "steer-" + name, value, style: {width}});
  const form = h("form", {class: "controls", id: "steer-form"},
    h("label", {}, "SAE", h("select", {name: "sae", id: "steer-sae"}, saes.map(n => h("option", {value: n, selected: n === params.get("sae")}, n)))),
    h("label", {}, "feature", field("feature", params.get("feature") || "0", "80px")),
    h("label", {}, "mode", h("select", {name: "mode"}, ["clamp", "add", "ablate"].map(m => h("option", {value: m}, m)))),
    h("label", {}, "value", field("value", params.get("value") || "10", "80px")),
    h("label", {style: {flex: "1"}}, "prompt", field("prompt", params.get("prompt") || "In the beginning", "100%")),
    h("button", {type: "submit"}, "Steer"));
  const result = h("div", {id: "steer-result"});
  form.addEventListener("submit", async e => {
    e.preventDefault();
    const f = new FormData(form);
    result.replaceChildren(h("p", {class: "muted"}, "running…"));
    let d;
    try {
      d = await api("steer", {sae: f.get("sae"), feature: parseInt(f.get("feature"), 10), value: parseFloat(f.get("value")),
        mode: f.get("mode"), prompt: f.get("prompt"), n_tokens: 20});
    } catch (err) { return result.replaceChildren(h("p", {class: "error"}, err.message)); }
    const list = (title, rows, key) => h("div", {class: "card"}, h("h3", {}, title),
      table([["token"], ["p before", "num"], ["p after", "num"]], rows.map(r => [[chip(r.text)], [fmt(r.p_before, 4), "num"], [fmt(r.p_after, 4), "num"]])));
    result.replaceChildren(h("h2", {}, `Next token after “${d.prompt}” with `, unitLink(d.sae, d.feature), ` ${d.mode === "ablate" ? "ablated" : d.mode + " " + fmt(d.value, 2)}`),
      h("div", {class: "grid", id: "steer-tables"}, list("before (top)", d.before), list("after (top)", d.after), list("largest gains", d.gains)),
      h("h2", {}, "Continuations (same seed)"), h("p", {}, h("b", {}, "plain: "), d.prompt, h("span", {class: "muted"}, d.continuation)),
      h("p", {}, h("b", {}, "steered: "), d.prompt, h("span", {style: {color: "#15803d"}}, d.steered_continuation)));
  });
  render(h("h1", {}, "Steering"), h("p", {class: "muted"}, "Clamp a feature at every position (x' = x + (v − a_f(x))·W_dec[f]) and compare the next-token distribution."), form, result);
}

// ---- routing ----------------------------------------------------------------------------------

async function route() {
  const [path, query] = location.hash.slice(1).split("?");
  const parts = (path || "/").split("/").filter(Boolean).map(decodeURIComponent), params = new URLSearchParams(query || "");
  document.querySelectorAll("header nav a").forEach(a => a.classList.toggle("active", a.dataset.nav === (parts[0] === "feature" || parts[0] === "neuron" ? "features" : parts[0] || "overview")));
  try {
    if (!parts.length) await showOverview();
    else if (parts[0] === "features") await showFeatures(parts[1], params);
    else if (parts[0] === "feature" && parts.length === 3) await showUnit(parts[1], parts[2]);
    else if (parts[0] === "neuron" && parts.length === 2) await showUnit("neurons", parts[1]);
    else if (parts[0] === "live" && !EXPORT) await showLive(params);
    else if (parts[0] === "steer" && !EXPORT) await showSteer(params);
    else render(h("p", {class: "error"}, `no page ${location.hash}`));
  } catch (err) {
    render(h("p", {class: "error", id: "page-error"}, err.message));
  }
}

if (EXPORT) document.body.classList.add("export");
window.addEventListener("hashchange", route);
overview().then(o => { document.getElementById("run-name").textContent = `run: ${o.run}`; }).catch(() => {});
route();
