// LogTriage dashboard: plain JavaScript over the service's own API (no framework, nothing fetched
// from elsewhere). Data goes into the page as text nodes only, never as HTML.
"use strict";

(() => {
  const AUTH_REQUIRED = document.querySelector('meta[name="logtriage-auth-required"]').content === "true";
  const params = new URLSearchParams(location.search);
  const REFRESH_MS = Math.max(1, Number(params.get("refresh")) || 5) * 1000;
  const PAGE_SIZE = Math.min(200, Math.max(5, Number(params.get("page_size")) || 20));
  const KEY_NAME = "logtriage.apiKey";
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = {
    timeout: "#d1495b", database_error: "#8d5a97", connection_failure: "#edae49", permission_error: "#00798c",
    resource_exhaustion: "#e76f51", service_call_failure: "#30638e", missing_step: "#6a994e", out_of_order: "#bc6c25",
    retry_storm: "#9c6644", latency_spike: "#f28482", other: "#7f8c8d", unexplained: "#b8bec9",
  };
  const PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d"];

  const state = {
    offset: 0, total: 0, signature: "", known: new Set(), loadedOnce: false,
    selected: null, detailTimer: null, busy: false, keyPromise: null, explainer: null,
  };
  const $ = (id) => document.getElementById(id);

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") el.className = value;
      else if (name === "text") el.textContent = value;
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  function svg(tag, attrs, text) {
    const el = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) el.setAttribute(name, String(value));
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function colorOf(category, index) {
    return COLORS[category] || PALETTE[index % PALETTE.length];
  }

  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    const today = new Date().toDateString() === d.toDateString();
    return today
      ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" })
      : d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  }

  // ---- errors and the API -------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function showError(where, err) {
    const banner = $("banner");
    banner.textContent = `${where}: ${err && err.message ? err.message : String(err)}`;
    banner.hidden = false;
  }

  function clearError() {
    $("banner").hidden = true;
  }

  async function api(path, { method = "GET", json, accept = [] } = {}) {
    const headers = new Headers();
    const key = sessionStorage.getItem(KEY_NAME);
    if (key) headers.set("X-API-Key", key);
    let body;
    if (json !== undefined) {
      headers.set("Content-Type", "application/json");
      body = JSON.stringify(json);
    }
    let response;
    try {
      response = await fetch(path, { method, headers, body });
    } catch (err) {
      throw new ApiError(0, "the service cannot be reached");
    }
    let data = null;
    const type = response.headers.get("content-type") || "";
    try {
      data = type.includes("json") ? await response.json() : await response.text();
    } catch (err) {
      data = null;
    }
    if (response.ok || accept.includes(response.status)) return { status: response.status, body: data };
    const detail = data && typeof data === "object" && data.detail ? String(data.detail) : `HTTP ${response.status}`;
    if (response.status === 401) {
      sessionStorage.removeItem(KEY_NAME);
      askForKey(detail);
    }
    throw new ApiError(response.status, detail);
  }

  // ---- the API key --------------------------------------------------------------------------

  function askForKey(message) {
    const dialog = $("key-dialog");
    $("key-error").textContent = message || "";
    $("key-error").hidden = !message;
    if (!dialog.open) dialog.showModal();
    $("key-input").focus();
    if (!state.keyPromise) {
      state.keyPromise = new Promise((resolve) => {
        state.resolveKey = resolve;
      });
    }
    return state.keyPromise;
  }

  function wireKeyDialog() {
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("key-input").value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY_NAME, key);
      $("key-input").value = "";
      $("key-dialog").close();
      updateKeyButton();
      if (state.resolveKey) state.resolveKey();
      state.keyPromise = null;
      state.resolveKey = null;
      refreshAll();
    });
    $("key-forget").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_NAME);
      updateKeyButton();
      $("key-error").textContent = "The key is forgotten; enter one to go on.";
      $("key-error").hidden = false;
    });
    $("key-dialog").addEventListener("cancel", (event) => {
      if (AUTH_REQUIRED && !sessionStorage.getItem(KEY_NAME)) event.preventDefault();
    });
    $("key-button").addEventListener("click", () => askForKey(""));
    updateKeyButton();
  }

  function updateKeyButton() {
    const button = $("key-button");
    button.hidden = !AUTH_REQUIRED;
    button.textContent = sessionStorage.getItem(KEY_NAME) ? "API key ✓" : "API key";
  }

  // ---- filters ------------------------------------------------------------------------------

  function rangeParams(p) {
    const range = $("f-range").value;
    if (range === "custom") {
      const since = $("f-since").value;
      const until = $("f-until").value;
      if (since) p.set("since", new Date(since).toISOString());
      if (until) p.set("until", new Date(until).toISOString());
    } else if (range) {
      p.set("since", new Date(Date.now() - Number(range) * 1000).toISOString());
    }
  }

  function filterParams() {
    const p = new URLSearchParams();
    for (const level of $("f-risk").value.split(",").filter(Boolean)) p.append("risk", level);
    rangeParams(p);
    if ($("f-service").value) p.set("service", $("f-service").value);
    if ($("f-category").value) p.set("category", $("f-category").value);
    if ($("f-anomalous").checked) p.set("anomalous_only", "true");
    return p;
  }

  function wireFilters() {
    const changed = () => {
      state.offset = 0;
      state.signature = "";
      state.loadedOnce = false; // rows that a filter brings in are not new ones
      refreshAll();
    };
    for (const id of ["f-risk", "f-category", "f-service", "f-anomalous", "f-since", "f-until"]) {
      $(id).addEventListener("change", changed);
    }
    $("f-range").addEventListener("change", () => {
      const custom = $("f-range").value === "custom";
      for (const el of document.querySelectorAll(".custom-range")) el.hidden = !custom;
      changed();
    });
    $("filters").addEventListener("submit", (event) => event.preventDefault());
    $("newer").addEventListener("click", () => {
      state.offset = Math.max(0, state.offset - PAGE_SIZE);
      state.loadedOnce = false;
      refreshList().catch((err) => showError("detections", err));
    });
    $("older").addEventListener("click", () => {
      if (state.offset + PAGE_SIZE < state.total) state.offset += PAGE_SIZE;
      state.loadedOnce = false;
      refreshList().catch((err) => showError("detections", err));
    });
  }

  function fillSelect(select, values) {
    const current = select.value;
    const have = Array.from(select.options).slice(1).map((o) => o.value);
    const wanted = Array.from(new Set([...values, ...(current ? [current] : [])]));
    if (have.join("\n") === wanted.join("\n")) return;
    select.replaceChildren(select.options[0], ...wanted.map((v) => h("option", { value: v, text: v })));
    select.value = current;
  }

  async function refreshFacets() {
    const { body } = await api("/detections/facets");
    fillSelect($("f-category"), body.categories);
    fillSelect($("f-service"), body.services);
  }

  // ---- the list -----------------------------------------------------------------------------

  function row(item, fresh) {
    const meta = [when(item.created_at)];
    if (item.service) meta.push(item.service);
    if (item.category) meta.push(item.category);
    else if (item.is_anomaly) meta.push("not explained");
    if (item.cluster_id !== null && item.cluster_id !== undefined) meta.push(`cluster ${item.cluster_id}`);
    const li = h(
      "li",
      {
        role: "option", tabindex: "-1", "data-id": item.id, "data-risk": item.risk_level,
        "aria-selected": item.id === state.selected ? "true" : "false",
        class: fresh ? "fresh" : null,
      },
      h("span", { class: `badge ${item.risk_level}`, text: item.risk_level }),
      h("span", { class: "seq", text: item.sequence_id, title: item.sequence_id }),
      h("span", { class: "score", text: item.score.toFixed(3), title: `threshold ${item.threshold.toFixed(3)}` }),
      h("span", { class: "meta", text: meta.join(" · ") }),
    );
    li.addEventListener("click", () => openDetection(item.id));
    return li;
  }

  function setTabStop(list) {
    const rows = Array.from(list.children);
    const chosen = rows.find((r) => r.getAttribute("aria-selected") === "true") || rows[0];
    for (const r of rows) r.tabIndex = r === chosen ? 0 : -1;
  }

  async function refreshList() {
    const p = filterParams();
    p.set("limit", String(PAGE_SIZE));
    p.set("offset", String(state.offset));
    const { body } = await api(`/detections?${p}`);
    state.total = body.total;
    if (state.offset > 0 && state.offset >= body.total) {
      state.offset = Math.max(0, Math.floor((body.total - 1) / PAGE_SIZE) * PAGE_SIZE);
      return refreshList();
    }
    const signature = body.items.map((i) => `${i.id}:${i.category}`).join(",") + `|${state.selected}`;
    const list = $("list");
    if (signature !== state.signature) {
      const focused = document.activeElement && document.activeElement.closest && document.activeElement.closest("#list li");
      const focusedId = focused ? focused.dataset.id : null;
      const rows = body.items.map((item) => row(item, state.loadedOnce && !state.known.has(item.id)));
      list.replaceChildren(...rows);
      setTabStop(list);
      if (focusedId) {
        const again = list.querySelector(`li[data-id="${CSS.escape(focusedId)}"]`);
        if (again) again.focus();
      }
      state.signature = signature;
    }
    if (state.known.size > 10_000) state.known.clear(); // a tab left open for days stays small
    for (const item of body.items) state.known.add(item.id);
    state.loadedOnce = true;
    const first = body.total ? state.offset + 1 : 0;
    const last = state.offset + body.items.length;
    $("page-info").textContent = `${first}–${last} of ${body.total}`;
    $("list-summary").textContent = body.total
      ? `${body.total} detection${body.total === 1 ? " matches" : "s match"}`
      : "No detection matches these filters.";
    $("newer").disabled = state.offset === 0;
    $("older").disabled = last >= body.total;
  }

  function wireListKeys() {
    $("list").addEventListener("keydown", (event) => {
      const rows = Array.from($("list").children);
      const current = event.target.closest("li");
      if (!current || !rows.length) return;
      let index = rows.indexOf(current);
      if (event.key === "ArrowDown") index = Math.min(rows.length - 1, index + 1);
      else if (event.key === "ArrowUp") index = Math.max(0, index - 1);
      else if (event.key === "Home") index = 0;
      else if (event.key === "End") index = rows.length - 1;
      else if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        openDetection(current.dataset.id);
        return;
      } else return;
      event.preventDefault();
      for (const r of rows) r.tabIndex = -1;
      rows[index].tabIndex = 0;
      rows[index].focus();
    });
  }

  // ---- one detection ------------------------------------------------------------------------

  function explanationView(e) {
    const confidence = e.confidence === null || e.confidence === undefined ? "" : ` (confidence ${(100 * e.confidence).toFixed(0)}%)`;
    const made = `${e.model} on ${e.base}` + (e.latency_ms ? `, ${(e.latency_ms / 1000).toFixed(1)} s` : "");
    const dl = h("dl", { class: "explanation", lang: e.lang || "en" });
    const add = (label, value, id) => dl.append(h("dt", { text: label }), h("dd", { text: value, id }));
    add("Category", e.category + confidence, "e-category");
    add("Severity", e.severity, "e-severity");
    add("Summary", e.summary, "e-summary");
    add("Root cause", e.root_cause, "e-root-cause");
    add("Suggested response", e.suggested_response, "e-response");
    add("Explained by", made, "e-model");
    return dl;
  }

  function renderDetail(d) {
    $("detail-empty").hidden = true;
    $("detail-body").hidden = false;
    $("detail-close").hidden = false;
    $("detail").dataset.id = d.id;
    $("d-sequence").textContent = d.sequence_id;
    $("d-sequence").title = `detection ${d.id}`;
    $("d-time").textContent = d.created_at ? new Date(d.created_at).toLocaleString() : "";
    $("d-service").textContent = d.service || "not named";
    $("d-cluster").textContent =
      d.cluster_id === null || d.cluster_id === undefined
        ? "none"
        : `#${d.cluster_id}${d.cluster_description ? ` · ${d.cluster_description}` : ""}`;
    $("d-model").textContent = d.model_version;

    const pct = (x) => `${Math.max(0, Math.min(100, 100 * x)).toFixed(1)}%`;
    $("d-fill").style.width = pct(d.score);
    $("d-fill").classList.toggle("anomaly", d.is_anomaly);
    $("d-mark").style.left = pct(d.threshold);
    $("d-score-text").textContent = d.is_anomaly
      ? `score ${d.score.toFixed(4)} ≥ threshold ${d.threshold.toFixed(4)}: anomalous, ${d.risk_level} risk`
      : `score ${d.score.toFixed(4)} < threshold ${d.threshold.toFixed(4)}: normal`;

    const status = d.explanation && (d.job_status === null || d.job_status === "done") ? "done" : d.job_status;
    const chip = $("d-status");
    chip.className = `status ${status || "none"}`;
    chip.textContent = status ? status : "not requested";
    const box = $("d-explanation");
    if (d.explanation) box.replaceChildren(explanationView(d.explanation));
    else if (status === "queued" || status === "running")
      box.replaceChildren(h("p", { class: "muted", text: `The explanation is ${status}; this view updates when it is done.` }));
    else if (status === "failed")
      box.replaceChildren(h("p", { class: "error", text: "The explainer failed on this detection; ask again below." }));
    else box.replaceChildren(h("p", { class: "muted", text: "No explanation yet." }));
    const canAsk = !d.explanation && status !== "queued" && status !== "running";
    $("d-explain-now").hidden = !canAsk;
    $("d-explain").disabled = false;

    const contributions = new Map((d.top_lines || []).map((t) => [t.index, t.contribution]));
    const largest = Math.max(0, ...contributions.values());
    const lines = d.log_entries.map((text, i) => {
      const li = h("li", { text });
      const c = contributions.get(i);
      if (c !== undefined) {
        li.classList.add("top");
        li.dataset.contribution = String(c);
        li.title = `raised the score by ${c.toFixed(4)}`;
        const strength = largest > 0 && c > 0 ? c / largest : 0;
        li.style.backgroundColor = `rgba(var(--shade), ${(0.1 + 0.4 * strength).toFixed(3)})`;
      }
      return li;
    });
    $("d-lines").replaceChildren(...lines);
    $("d-lines-note").textContent = contributions.size
      ? `(${d.log_entries.length}; shaded: the ${contributions.size} that raised the score most)`
      : `(${d.log_entries.length})`;

    clearTimeout(state.detailTimer);
    if (status === "queued" || status === "running") {
      state.detailTimer = setTimeout(() => loadDetail(d.id), 1000);
    }
  }

  async function loadDetail(id) {
    try {
      const { body } = await api(`/detections/${encodeURIComponent(id)}`);
      if (state.selected === id) renderDetail(body);
    } catch (err) {
      showError("detection", err);
    }
  }

  async function openDetection(id) {
    state.selected = id;
    for (const r of $("list").children) {
      const mine = r.dataset.id === id;
      r.setAttribute("aria-selected", mine ? "true" : "false");
    }
    setTabStop($("list"));
    await loadDetail(id);
    if (window.matchMedia("(max-width: 820px)").matches) $("detail").scrollIntoView({ block: "start" });
  }

  function wireDetail() {
    $("detail-close").addEventListener("click", () => {
      const id = state.selected;
      state.selected = null;
      clearTimeout(state.detailTimer);
      $("detail-body").hidden = true;
      $("detail-empty").hidden = false;
      $("detail-close").hidden = true;
      for (const r of $("list").children) r.setAttribute("aria-selected", "false");
      const back = id && $("list").querySelector(`li[data-id="${CSS.escape(id)}"]`);
      if (back) back.focus();
    });
    $("d-explain").addEventListener("click", async () => {
      const id = state.selected;
      if (!id) return;
      $("d-explain").disabled = true;
      $("d-status").className = "status queued";
      $("d-status").textContent = "queued";
      try {
        const { body } = await api("/explain", {
          method: "POST",
          json: { detection_id: id, lang: $("d-lang").value, wait_seconds: 0 },
          accept: [202],
        });
        if (body.status === "failed") showError("explain", new Error(body.error || "the explainer failed"));
        await loadDetail(id);
      } catch (err) {
        $("d-explain").disabled = false;
        showError("explain", err);
        await loadDetail(id);
      }
    });
  }

  // ---- the chart ----------------------------------------------------------------------------

  async function refreshChart() {
    const p = new URLSearchParams();
    rangeParams(p);
    const since = p.has("since") ? Date.parse(p.get("since")) : null;
    const until = p.has("until") ? Date.parse(p.get("until")) : Date.now();
    if (since !== null && since >= until) {
      state.timeline = null;
      $("chart").replaceChildren(h("p", { class: "muted", text: "The time range is empty: its start is not before its end." }));
      $("chart").dataset.total = "0";
      $("legend").replaceChildren();
      $("chart-range").textContent = "";
      return;
    }
    for (const level of $("f-risk").value.split(",").filter(Boolean)) p.append("risk", level);
    if ($("f-service").value) p.set("service", $("f-service").value);
    const { body } = await api(`/detections/timeline?${p}`);
    drawChart(body);
  }

  function drawChart(t) {
    state.timeline = t;
    const box = $("chart");
    const W = Math.max(240, Math.round(box.clientWidth || 800));
    const H = box.clientWidth && box.clientWidth < 500 ? 130 : 160;
    const left = 34, right = 8, top = 8, bottom = 22;
    const n = t.buckets.length;
    const peak = Math.max(1, ...t.buckets.map((b) => b.total));
    const slot = (W - left - right) / Math.max(1, n);
    const barW = Math.max(1, slot * 0.8);
    const y = (v) => top + (H - top - bottom) * (1 - v / peak);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
      "aria-label": `anomalies per ${t.bucket_seconds} s by category` });
    root.append(svg("line", { class: "axis", x1: left, x2: W - right, y1: y(0), y2: y(0) }));
    root.append(svg("text", { x: left - 4, y: y(peak) + 4, "text-anchor": "end" }, String(peak)));
    root.append(svg("text", { x: left - 4, y: y(0), "text-anchor": "end" }, "0"));
    const order = t.categories;
    t.buckets.forEach((b, i) => {
      let base = 0;
      order.forEach((category, ci) => {
        const count = b.counts[category] || 0;
        if (!count) return;
        const rect = svg("rect", {
          x: (left + i * slot + (slot - barW) / 2).toFixed(2), width: barW.toFixed(2),
          y: y(base + count).toFixed(2), height: (y(base) - y(base + count)).toFixed(2),
          fill: colorOf(category, ci), "data-category": category, "data-count": count,
        });
        rect.append(svg("title", {}, `${new Date(b.start).toLocaleString()}: ${count} ${category}`));
        root.append(rect);
        base += count;
      });
    });
    const ticks = n > 1 ? [0, Math.floor(n / 2), n - 1] : [0];
    ticks.forEach((i, k) => {
      const last = k === ticks.length - 1 && k > 0;
      const anchor = k === 0 ? "start" : last ? "end" : "middle";
      const x = k === 0 ? left : last ? W - right : left + i * slot + slot / 2;
      root.append(svg("text", { x, y: H - 6, "text-anchor": anchor }, when(last ? t.until : t.buckets[i].start)));
    });
    const total = t.buckets.reduce((s, b) => s + b.total, 0);
    if (!total) root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no anomalies in this range"));
    $("chart").replaceChildren(root);
    $("chart").dataset.total = String(total);
    const per = Object.fromEntries(order.map((c) => [c, 0]));
    for (const b of t.buckets) for (const [c, v] of Object.entries(b.counts)) per[c] = (per[c] || 0) + v;
    $("legend").replaceChildren(
      ...order.map((c, ci) =>
        h("li", { "data-category": c }, h("span", { class: "swatch", style: null }), `${c} ${per[c]}`),
      ),
    );
    Array.from($("legend").children).forEach((li, ci) => {
      li.firstChild.style.backgroundColor = colorOf(order[ci], ci);
    });
    const minutes = t.bucket_seconds >= 60 ? `${t.bucket_seconds / 60} min` : `${t.bucket_seconds} s`;
    $("chart-range").textContent = `${when(t.since)} – ${when(t.until)}, bars of ${minutes}, ${total} anomalies`;
  }

  // ---- health -------------------------------------------------------------------------------

  function chip(id, text, ok) {
    const el = $(id);
    el.textContent = text;
    el.title = text; // a long model path is cut short on a narrow screen; the whole of it on hover
    el.className = `chip ${ok === true ? "ok" : ok === false ? "bad" : ""}`;
  }

  async function refreshHealth() {
    const ready = (await api("/ready", { accept: [503] })).body;
    chip("h-ready", ready.ready ? "ready" : "not ready", ready.ready);
    chip("h-detector", ready.detector ? `detector ${ready.detector_version}` : "no detector", ready.detector);
    state.explainer = ready.explainer;
    chip("h-explainer", ready.explainer ? `explainer ${ready.explainer_model}` : "no explainer", ready.explainer ? true : null);
    const metrics = (await api("/metrics")).body || "";
    const depth = {};
    for (const m of String(metrics).matchAll(/^logtriage_explain_queue\{status="(\w+)"\} ([0-9.eE+-]+)$/gm)) {
      depth[m[1]] = Number(m[2]);
    }
    chip("h-queue", `queue: ${depth.queued || 0} queued, ${depth.running || 0} running`, null);
    const since = new Date(Date.now() - 60_000).toISOString();
    const recent = (await api(`/detections?since=${encodeURIComponent(since)}&limit=1`)).body;
    chip("h-rate", `${recent.total} detections/min`, null);
  }

  // ---- detect pasted lines ------------------------------------------------------------------

  function wireDetect() {
    $("detect-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const out = $("detect-result");
      const lines = $("detect-lines").value.split(/\r?\n/).filter((l) => l.trim());
      if (!lines.length) {
        out.replaceChildren(h("p", { class: "error", text: "Paste at least one non-empty line." }));
        return;
      }
      const mode = $("detect-mode").value;
      const size = Math.max(1, Number($("detect-size").value) || 10);
      const service = $("detect-service").value.trim() || undefined;
      const request = { explain: $("detect-explain").value, lang: $("detect-lang").value, service };
      if (mode === "one") request.sequences = [{ log_entries: lines }];
      else {
        request.lines = lines;
        request.window = { type: mode, size, step: mode === "sliding" ? Math.max(1, Math.floor(size / 2)) : undefined };
      }
      $("detect-submit").disabled = true;
      out.replaceChildren(h("p", { class: "muted", text: "Scoring…" }));
      try {
        const { body } = await api("/detect", { method: "POST", json: request });
        const flagged = body.detections.filter((d) => d.is_anomaly).length;
        const items = body.detections.map((d) => {
          const open = h("button", { type: "button", class: "secondary", text: "open" });
          open.addEventListener("click", () => openDetection(d.id));
          return h("li", { "data-id": d.id },
            h("span", { class: `badge ${d.risk_level}`, text: d.risk_level }), " ",
            `${d.sequence_id}: score ${d.score.toFixed(3)}${d.queued_for_explanation ? ", queued for explanation" : ""} `,
            open);
        });
        out.replaceChildren(
          h("p", { id: "detect-summary", text: `${body.detections.length} scored, ${flagged} anomalous, ${body.queued.length} queued for explanation.` }),
          h("ul", {}, ...items),
        );
        refreshAll();
      } catch (err) {
        out.replaceChildren(h("p", { class: "error", text: `Not scored: ${err.message}` }));
      } finally {
        $("detect-submit").disabled = false;
      }
    });
  }

  // ---- refresh loop -------------------------------------------------------------------------

  async function refreshAll() {
    if (AUTH_REQUIRED && !sessionStorage.getItem(KEY_NAME)) return;
    if (state.busy) {
      state.again = true; // filters changed while a refresh runs: one more after it
      return;
    }
    state.busy = true;
    state.again = false;
    try {
      await refreshList();
      clearError();
      await Promise.all([
        refreshFacets().catch((err) => showError("filters", err)),
        refreshChart().catch((err) => showError("chart", err)),
        refreshHealth().catch((err) => showError("health", err)),
      ]);
      $("live").classList.remove("paused");
    } catch (err) {
      $("live").classList.add("paused");
      showError("detections", err);
    } finally {
      state.busy = false;
      if (state.again) refreshAll();
    }
  }

  function start() {
    wireKeyDialog();
    wireFilters();
    wireListKeys();
    wireDetail();
    wireDetect();
    if (AUTH_REQUIRED && !sessionStorage.getItem(KEY_NAME)) askForKey("");
    else refreshAll();
    setInterval(refreshAll, REFRESH_MS);
    let resizing = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(() => state.timeline && drawChart(state.timeline), 150);
    });
  }

  document.addEventListener("DOMContentLoaded", start);
})();
