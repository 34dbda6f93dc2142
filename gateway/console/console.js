// The gateway's console: batches, one batch, providers and spend, from the gateway's API.
//
// Every string from the API (ids, metadata, error messages, provider names) goes into
// the page as text (textContent, createTextNode, setAttribute), never as markup, so a
// metadata value like <img src=x onerror=...> shows as those characters. The key lives
// in this tab's session storage and travels only in the Authorization header.
"use strict";

(() => {
  const STORAGE_KEY = "batch-gateway-console-key";
  const REFRESH_MS = 2000;
  const ACTIVE = new Set(["validating", "in_progress", "finalizing", "cancelling"]);
  const TIMESTAMPS = [
    ["created_at", "created"],
    ["in_progress_at", "in_progress"],
    ["finalizing_at", "finalizing"],
    ["completed_at", "completed"],
    ["failed_at", "failed"],
    ["expired_at", "expired"],
    ["cancelling_at", "cancelling"],
    ["cancelled_at", "cancelled"],
  ];

  const state = {
    key: null,
    admin: false,
    view: "batches",
    rows: [], // {batch, tenant, provider}
    detailId: null,
    timer: null,
    generation: 0, // bumped on every view change and logout: stale answers are dropped
  };

  const $ = (id) => document.getElementById(id);

  // An element with text or child nodes; strings always become text nodes.
  function el(tag, options, ...children) {
    const node = document.createElement(tag);
    const opts = options || {};
    if (opts.className) node.className = opts.className;
    if (opts.text !== undefined && opts.text !== null) node.textContent = String(opts.text);
    if (opts.attrs) {
      for (const [name, value] of Object.entries(opts.attrs)) node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function setText(id, text) {
    $(id).textContent = text || "";
  }

  function fmtTime(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const iso = new Date(seconds * 1000).toISOString();
    return iso.slice(0, 10) + " " + iso.slice(11, 19) + " UTC";
  }

  function fmtNumber(value, digits) {
    if (value === null || value === undefined) return "—";
    return Number(value).toLocaleString("en-US", { maximumFractionDigits: digits || 0 });
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // One API call with the key in the Authorization header (and, for the admin key acting
  // on one tenant's objects, that tenant in X-Gateway-Tenant).
  async function api(path, options) {
    const opts = options || {};
    const headers = { Authorization: "Bearer " + state.key };
    if (opts.tenant) headers["X-Gateway-Tenant"] = opts.tenant;
    const response = await fetch(path, {
      method: opts.method || "GET",
      headers,
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
    if (!response.ok) {
      let message = "HTTP " + response.status;
      try {
        const body = await response.json();
        if (body && body.error && typeof body.error.message === "string") {
          message = body.error.message;
        }
      } catch (_) {
        // not JSON: keep the status
      }
      if (response.status === 401 && !opts.probe) logout("The key is no longer accepted.");
      throw new ApiError(response.status, message);
    }
    return opts.raw ? response : response.json();
  }

  // Login, logout, role

  async function login(key) {
    state.key = key;
    let admin;
    try {
      await api("/v1/gateway/admin/providers", { probe: true });
      admin = true;
    } catch (err) {
      if (err instanceof ApiError && err.status === 403) {
        admin = false;
      } else {
        state.key = null;
        sessionStorage.removeItem(STORAGE_KEY);
        setText("login-error", err instanceof ApiError ? err.message : "The gateway did not answer.");
        return;
      }
    }
    sessionStorage.setItem(STORAGE_KEY, key);
    state.admin = admin;
    document.body.classList.toggle("is-admin", admin);
    document.body.classList.toggle("is-tenant", !admin);
    setText("login-error", "");
    setText("role", admin ? "admin key: every tenant" : "tenant key: your batches");
    $("login-view").hidden = true;
    $("nav").hidden = false;
    $("who").hidden = false;
    $("tab-providers").hidden = !admin;
    for (const node of document.querySelectorAll(".admin-only")) node.hidden = !admin;
    renderBatchHead();
    show("batches");
  }

  function logout(message) {
    sessionStorage.removeItem(STORAGE_KEY);
    state.key = null;
    state.admin = false;
    state.rows = [];
    state.detailId = null;
    state.generation += 1;
    stopTimer();
    document.body.classList.remove("is-admin", "is-tenant");
    for (const id of ["batches-body", "detail", "providers-body", "routes"]) $(id).replaceChildren();
    for (const id of ["spend-provider", "spend-model"]) {
      for (const part of $(id).children) part.replaceChildren();
    }
    for (const id of ["batches-view", "detail-view", "providers-view", "spend-view", "nav", "who"]) {
      $(id).hidden = true;
    }
    $("login-view").hidden = false;
    setText("login-error", message || "");
    $("key").focus();
  }

  // Views

  function show(view) {
    state.view = view;
    state.generation += 1;
    stopTimer();
    for (const name of ["batches", "detail", "providers", "spend"]) {
      $(name + "-view").hidden = name !== view;
    }
    for (const tab of document.querySelectorAll(".tab")) {
      tab.classList.toggle("active", tab.dataset.view === (view === "detail" ? "batches" : view));
    }
    const load = { batches: loadBatches, detail: loadDetail, providers: loadProviders, spend: loadSpend };
    load[view](state.generation);
  }

  function stopTimer() {
    if (state.timer !== null) clearTimeout(state.timer);
    state.timer = null;
  }

  function again(generation, reload) {
    stopTimer();
    state.timer = setTimeout(() => {
      if (generation === state.generation) reload(generation);
    }, REFRESH_MS);
  }

  // Status badge and progress bar

  function badge(status) {
    return el("span", { className: "badge " + String(status).replace(/[^a-z_]/g, ""), text: status });
  }

  function progress(batch) {
    const counts = batch.request_counts || { total: 0, completed: 0, failed: 0 };
    const total = counts.total || 0;
    const done = counts.completed || 0;
    const failed = counts.failed || 0;
    const bar = el("div", { className: "bar", attrs: { role: "progressbar" } });
    const doneBar = el("div", { className: "done" });
    const failedBar = el("div", { className: "failed" });
    // CSSOM writes are not inline style attributes: the CSP allows them.
    doneBar.style.width = total ? (100 * done) / total + "%" : "0%";
    failedBar.style.width = total ? (100 * failed) / total + "%" : "0%";
    bar.append(doneBar, failedBar);
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", String(total));
    bar.setAttribute("aria-valuenow", String(done + failed));
    let label = fmtNumber(done) + " / " + fmtNumber(total);
    if (failed) label += " · " + fmtNumber(failed) + " failed";
    return el(
      "div",
      { className: "progress", attrs: { "data-completed": done, "data-failed": failed, "data-total": total } },
      bar,
      el("span", { className: "count", text: label }),
    );
  }

  function metadataText(metadata) {
    if (!metadata) return "";
    const text = Object.entries(metadata)
      .map(([k, v]) => k + "=" + v)
      .join(", ");
    return text.length > 80 ? text.slice(0, 79) + "…" : text;
  }

  // Batches table

  function renderBatchHead() {
    const names = state.admin
      ? ["Batch", "Tenant", "Provider", "Status", "Progress", "Created", "Metadata"]
      : ["Batch", "Status", "Progress", "Created", "Metadata"];
    $("batches-head").replaceChildren(...names.map((name) => el("th", { text: name })));
  }

  function batchesQuery() {
    const params = new URLSearchParams({ limit: "50" });
    const fields = [
      ["status", "filter-status"],
      ["provider", "filter-provider"],
      ["tenant", "filter-tenant"],
    ];
    for (const [name, id] of fields) {
      const value = $(id).value.trim();
      if (value) params.set(name, value);
    }
    const metaKey = $("filter-meta-key").value.trim();
    if (metaKey) {
      params.set("metadata_key", metaKey);
      params.set("metadata_value", $("filter-meta-value").value);
    }
    return params;
  }

  async function fetchRows() {
    if (state.admin) {
      const page = await api("/v1/gateway/admin/batches?" + batchesQuery().toString());
      return page.data.map((d) => ({ batch: d.batch, tenant: d.tenant, provider: d.provider }));
    }
    const page = await api("/v1/batches?limit=100");
    const wanted = $("filter-status").value;
    return page.data.filter((b) => !wanted || b.status === wanted).map((b) => ({ batch: b }));
  }

  // A batch still running is retrieved one by one, which asks its provider: the list
  // alone shows what the poller saw last.
  async function live(row) {
    if (!ACTIVE.has(row.batch.status)) return row;
    try {
      const tenant = state.admin ? row.tenant : null;
      const batch = await api("/v1/batches/" + encodeURIComponent(row.batch.id), { tenant });
      return { ...row, batch };
    } catch (_) {
      return row; // keep what the list said
    }
  }

  async function loadBatches(generation) {
    try {
      const rows = await Promise.all((await fetchRows()).map(live));
      if (generation !== state.generation) return;
      state.rows = rows;
      setText("batches-error", "");
      renderBatches();
    } catch (err) {
      if (generation !== state.generation) return;
      setText("batches-error", err.message);
    }
    if (generation !== state.generation) return;
    const running = state.rows.some((row) => ACTIVE.has(row.batch.status));
    setText(
      "refresh-note",
      running ? "Refreshing every 2 s while a batch runs." : "Updated " + new Date().toLocaleTimeString(),
    );
    if (running) again(generation, loadBatches);
  }

  function renderBatches() {
    const body = $("batches-body");
    body.replaceChildren(
      ...state.rows.map((row) => {
        const batch = row.batch;
        const open = el("button", { className: "link", text: batch.id, attrs: { type: "button" } });
        open.addEventListener("click", () => openDetail(batch.id));
        const cells = [el("td", {}, open)];
        if (state.admin) {
          cells.push(el("td", { text: row.tenant }), el("td", { text: row.provider }));
        }
        cells.push(
          el("td", {}, badge(batch.status)),
          el("td", {}, progress(batch)),
          el("td", { className: "meta time", text: fmtTime(batch.created_at) }),
          el("td", { className: "meta", text: metadataText(batch.metadata) }),
        );
        return el("tr", { attrs: { "data-batch-id": batch.id, "data-status": batch.status } }, ...cells);
      }),
    );
    $("batches-empty").hidden = state.rows.length > 0;
  }

  // One batch

  function openDetail(batchId) {
    state.detailId = batchId;
    $("detail").replaceChildren();
    show("detail");
  }

  async function fetchDetail() {
    const id = encodeURIComponent(state.detailId);
    if (!state.admin) return { batch: await api("/v1/batches/" + id) };
    const detail = await api("/v1/gateway/admin/batches/" + id);
    const fresh = await live({ batch: detail.batch, tenant: detail.tenant });
    return { ...detail, batch: fresh.batch };
  }

  async function loadDetail(generation) {
    try {
      const detail = await fetchDetail();
      if (generation !== state.generation) return;
      setText("detail-error", "");
      renderDetail(detail);
      if (ACTIVE.has(detail.batch.status)) again(generation, loadDetail);
    } catch (err) {
      if (generation !== state.generation) return;
      setText("detail-error", err.message);
    }
  }

  function card(title, ...children) {
    return el("div", { className: "card" }, el("h3", { text: title }), ...children);
  }

  function fields(pairs) {
    const list = el("dl", { className: "fields" });
    for (const [name, value] of pairs) {
      list.append(el("dt", { text: name }), el("dd", {}, value));
    }
    return list;
  }

  function timeline(detail) {
    const entries = detail.history
      ? detail.history.map((h) => [h.status, h.at])
      : TIMESTAMPS.filter(([field]) => detail.batch[field] !== null && detail.batch[field] !== undefined)
          .map(([field, status]) => [status, detail.batch[field]])
          .sort((a, b) => a[1] - b[1]);
    const list = el("ol", { className: "timeline", attrs: { id: "timeline" } });
    for (const [status, at] of entries) {
      list.append(el("li", {}, badge(status), el("time", { text: fmtTime(at) })));
    }
    if (!entries.length) list.append(el("li", { className: "muted", text: "No status recorded yet." }));
    return list;
  }

  function downloads(batch) {
    if (state.admin) {
      // The admin key reads batches, not their contents: the tenant's key downloads.
      return el("p", {
        className: "muted",
        text: "Output and error files are downloaded with the tenant's key.",
      });
    }
    const box = el("div", { className: "downloads" });
    const status = el("p", { className: "muted", attrs: { id: "download-status" } });
    const files = [
      ["Download output", batch.output_file_id, "download-output"],
      ["Download errors", batch.error_file_id, "download-errors"],
    ];
    for (const [label, fileId, id] of files) {
      if (!fileId) continue;
      const button = el("button", { text: label, attrs: { type: "button", id } });
      button.addEventListener("click", () => download(fileId, status));
      box.append(button);
    }
    if (!box.children.length) box.append(el("span", { className: "muted", text: "No files yet." }));
    return el("div", {}, box, status);
  }

  // Fetched with the key in a header, then saved from a Blob URL: the key never
  // becomes part of a link.
  async function download(fileId, status) {
    status.textContent = "Downloading…";
    try {
      const path = "/v1/files/" + encodeURIComponent(fileId) + "/content";
      const response = await api(path, { raw: true });
      const blob = await response.blob();
      const url = URL.createObjectURL(blob);
      const name = String(fileId).replace(/[^A-Za-z0-9._-]/g, "_") + ".jsonl";
      const link = el("a", { attrs: { href: url, download: name } });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      status.textContent = "Saved " + name + " (" + fmtNumber(blob.size) + " bytes).";
    } catch (err) {
      status.textContent = "Download failed: " + err.message;
    }
  }

  function renderDetail(detail) {
    const batch = detail.batch;
    const rows = [
      ["Batch", el("span", { className: "mono", text: batch.id })],
      ["Status", badge(batch.status)],
      ["Progress", progress(batch)],
      ["Endpoint", batch.endpoint],
      ["Model", batch.model || "—"],
      ["Input file", el("span", { className: "mono", text: batch.input_file_id })],
      ["Output file", el("span", { className: "mono", text: batch.output_file_id || "—" })],
      ["Error file", el("span", { className: "mono", text: batch.error_file_id || "—" })],
      ["Created", fmtTime(batch.created_at)],
      ["Expires", fmtTime(batch.expires_at)],
    ];
    if (state.admin) {
      rows.splice(
        2,
        0,
        ["Tenant", detail.tenant],
        ["Provider", detail.provider],
        ["Upstream id", el("span", { className: "mono", text: detail.upstream_id || "—" })],
        ["Routing rule", detail.rule || "—"],
      );
    }
    const metadata = Object.entries(batch.metadata || {});
    const metaList = el("dl", { className: "fields", attrs: { id: "metadata" } });
    for (const [k, v] of metadata) metaList.append(el("dt", { text: k }), el("dd", { text: v }));
    const left = [card("Batch", fields(rows), downloads(batch))];
    const right = [card("Status timeline", timeline(detail))];
    right.push(card("Metadata", metadata.length ? metaList : el("p", { className: "muted", text: "None." })));
    const errors = (batch.errors && batch.errors.data) || [];
    if (errors.length) {
      const list = el("ul", { attrs: { id: "errors" } });
      for (const e of errors) {
        const where = e.line !== null && e.line !== undefined ? " (line " + e.line + ")" : "";
        list.append(el("li", { text: (e.code || "error") + where + ": " + (e.message || "") }));
      }
      right.push(card("Errors", list));
    }
    if (state.admin && detail.attempts && detail.attempts.length) {
      right.push(
        card(
          "Create attempts",
          table(
            ["Provider", "When", "Outcome", "Error"],
            detail.attempts.map((a) => [a.provider, fmtTime(a.at), a.outcome, a.error || ""]),
          ),
        ),
      );
    }
    if (state.admin && detail.children && detail.children.length) {
      left.push(
        card(
          "Shards",
          table(
            ["Batch", "Provider", "Status", "Upstream id"],
            detail.children.map((c) => [c.batch.id, c.provider, c.batch.status, c.upstream_id || "—"]),
          ),
        ),
      );
    }
    $("detail").replaceChildren(
      el("div", { className: "detail-grid" }, el("div", {}, ...left), el("div", {}, ...right)),
    );
  }

  function table(head, rows) {
    return el(
      "table",
      { className: "grid" },
      el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { text: h })))),
      el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", { text: c }))))),
    );
  }

  async function refreshNow() {
    if (!state.detailId) return;
    const generation = state.generation;
    try {
      await api("/v1/gateway/admin/batches/" + encodeURIComponent(state.detailId) + "/refresh", {
        method: "POST",
      });
      if (generation === state.generation) show("detail");
    } catch (err) {
      if (generation === state.generation) setText("detail-error", err.message);
    }
  }

  // Providers (admin)

  async function loadProviders(generation) {
    try {
      const answer = await api("/v1/gateway/admin/providers");
      if (generation !== state.generation) return;
      setText("providers-error", "");
      const pct = (v) => (v === null || v === undefined ? "—" : fmtNumber(100 * v, 1) + " %");
      $("providers-body").replaceChildren(
        ...answer.data.map((p) =>
          el(
            "tr",
            { attrs: { "data-provider": p.name } },
            el("td", { text: p.name }),
            el("td", { text: p.type }),
            el("td", { text: p.enabled ? "yes" : "no" }),
            el("td", { text: p.breaker || "—" }),
            el("td", { className: "num", text: fmtNumber(p.calls) }),
            el("td", { className: "num", text: pct(p.error_rate) }),
            el("td", { className: "num", text: fmtNumber(p.latency_p50_ms, 1) }),
            el("td", { className: "num", text: fmtNumber(p.latency_p95_ms, 1) }),
            el("td", { className: "num", text: fmtNumber(p.active_batches) }),
          ),
        ),
      );
      $("routes").textContent = answer.routes.join("\n");
    } catch (err) {
      if (generation === state.generation) setText("providers-error", err.message);
    }
  }

  // Spend

  async function loadSpend(generation) {
    try {
      const [byProvider, byModel] = await Promise.all([
        api("/v1/gateway/usage?group_by=provider"),
        api("/v1/gateway/usage?group_by=model"),
      ]);
      if (generation !== state.generation) return;
      setText("spend-error", "");
      setText("spend-period", "From " + fmtTime(byProvider.start) + " to " + fmtTime(byProvider.end) + ".");
      spendTable("spend-provider", "Provider", "provider", byProvider);
      spendTable("spend-model", "Model", "model", byModel);
    } catch (err) {
      if (generation === state.generation) setText("spend-error", err.message);
    }
  }

  function spendTable(id, title, field, report) {
    const [head, body] = $(id).children;
    const names = [title, "Batches", "Lines ok", "Lines failed", "Tokens", "Unpriced tokens", "Cost (USD)"];
    head.replaceChildren(el("tr", {}, ...names.map((n, i) => el("th", { className: i ? "num" : "", text: n }))));
    const cost = (v) => (v === null || v === undefined ? "—" : "$" + Number(v).toFixed(4));
    const line = (name, r, className) =>
      el(
        "tr",
        { className },
        el("td", { text: name }),
        ...[r.batches, r.lines_succeeded, r.lines_failed, r.total_tokens, r.unpriced_tokens].map((v) =>
          el("td", { className: "num", text: fmtNumber(v) }),
        ),
        el("td", { className: "num", text: cost(r.cost_usd) }),
      );
    const rows = report.data.map((r) => line(r[field] === null ? "—" : r[field], r, ""));
    if (!rows.length) {
      rows.push(el("tr", {}, el("td", { className: "muted", text: "No usage recorded in this period." })));
    } else {
      rows.push(line("Total", report.total, "spend-total"));
    }
    body.replaceChildren(...rows);
  }

  // Wiring

  function start() {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("key");
      const key = input.value.trim();
      input.value = "";
      if (key) login(key);
    });
    $("logout").addEventListener("click", () => logout(""));
    $("filters").addEventListener("submit", (event) => {
      event.preventDefault();
      show("batches");
    });
    $("filter-status").addEventListener("change", () => show("batches"));
    $("back").addEventListener("click", () => show("batches"));
    $("refresh-now").addEventListener("click", refreshNow);
    for (const tab of document.querySelectorAll(".tab")) {
      tab.addEventListener("click", () => show(tab.dataset.view));
    }
    const saved = sessionStorage.getItem(STORAGE_KEY);
    if (saved) login(saved);
    else $("key").focus();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
