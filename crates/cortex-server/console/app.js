// Cortex console. Talks to the admin API with the session cookie; builds every element with
// DOM calls (never innerHTML with data), so nothing from the server can become markup.
"use strict";

let me = null;

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function svg(tag, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
  return el;
}

function toast(text) {
  const el = document.getElementById("toast");
  el.textContent = text;
  el.classList.add("show");
  setTimeout(() => el.classList.remove("show"), 2500);
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const options = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const answer = await response.json().catch(() => ({}));
  if (response.status === 401 && path !== "/admin/auth/password") {
    window.location.assign("/ui/login");
    throw new ApiError(401, "unauthenticated", "Log in again.");
  }
  if (!response.ok) {
    const error = answer.error || {};
    if (error.code === "password_change_required") location.hash = "#/password";
    throw new ApiError(response.status, error.code, error.message || "Request failed");
  }
  return answer;
}

const can = (...permissions) => !!me && permissions.some((p) => me.permissions.includes(p));
const fmt = (time) => (time ? new Date(time).toLocaleString() : "—");
const money = (usd) => "$" + Number(usd || 0).toFixed(4);

function errorBox() {
  return h("p", { class: "error", role: "alert" });
}

function show(box, error) {
  box.textContent = error instanceof ApiError ? error.message : "Something went wrong.";
}

function table(headers, rows) {
  return h("div", { class: "scroll" },
    h("table", {},
      h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col", text: t })))),
      h("tbody", {}, rows)));
}

// ---- views -----------------------------------------------------------------------------

const views = {
  keys: { title: "API keys", visible: () => can("keys:read_own", "keys:read_all"), render: renderKeys },
  usage: { title: "Usage", visible: () => can("usage:read_own", "usage:read_all"), render: renderUsage },
  providers: { title: "Providers & models", visible: () => can("models:read"), render: renderCatalog },
  health: { title: "Health", visible: () => can("providers:read"), render: renderHealth },
  users: { title: "Users", visible: () => can("users:read"), render: renderUsers },
  audit: { title: "Audit log", visible: () => can("audit:read"), render: renderAudit },
  check: { title: "Production check", visible: () => can("check:read"), render: renderCheck },
  account: { title: "Account", visible: () => true, render: renderAccount },
};

async function renderKeys(main) {
  const writable = can("keys:write_own", "keys:write_all");
  const list = h("div", { class: "card" }, h("h2", { text: "Keys" }));
  const error = errorBox();
  main.append(list);
  if (writable) main.prepend(createKeyCard(() => route()));
  list.append(error);
  try {
    const keys = (await api("GET", "/admin/keys")).data;
    const rows = keys.map((key) => {
      const actions = h("td", {});
      if (writable && key.status === "active") {
        // A rotated secret acts as the key's owner: only the owner or an admin receives one.
        if (!key.rotated_to && (key.owner === me.id || can("keys:rotate_all"))) {
          actions.append(
            h("button", { type: "button", class: "secondary", "data-action": "rotate", onclick: () => rotateKey(key) }, "Rotate"),
            " ");
        }
        actions.append(
          h("button", { type: "button", class: "danger", "data-action": "revoke", onclick: () => revokeKey(key) }, "Revoke"));
      }
      return h("tr", { "data-key": key.name },
        h("td", { text: key.name }), h("td", { class: "muted", text: key.prefix + "…" }),
        h("td", { text: key.scopes.join(", ") }), h("td", { "data-status": key.status, text: key.status }),
        h("td", { text: fmt(key.created_at) }), h("td", { text: fmt(key.last_used_at) }), actions);
    });
    list.append(keys.length ? table(["Name", "Key", "Scopes", "Status", "Created", "Last used", ""], rows) : h("p", { class: "muted", text: "No keys yet." }));
  } catch (e) {
    show(error, e);
  }
}

function showSecret(title, key) {
  const box = h("div", { class: "card", id: "new-key" },
    h("h2", { text: title }),
    h("p", { text: "Copy it now: it is shown once and cannot be retrieved later." }),
    h("p", { class: "secret", id: "new-key-value", text: key }),
    h("button", {
      type: "button", id: "copy-key",
      onclick: async () => {
        try {
          await navigator.clipboard.writeText(key);
          toast("Copied to the clipboard");
        } catch (_) {
          const range = document.createRange();
          range.selectNodeContents(document.getElementById("new-key-value"));
          getSelection().removeAllRanges();
          getSelection().addRange(range);
          toast("Press Ctrl+C to copy");
        }
      },
    }, "Copy"));
  document.getElementById("main").prepend(box);
  box.scrollIntoView();
}

function createKeyCard(done) {
  const error = errorBox();
  const form = h("form", { id: "create-key" },
    h("label", { for: "key-name" }, "Name"), h("input", { id: "key-name", required: true, maxlength: 128 }),
    h("fieldset", {}, h("legend", { text: "Scopes" }),
      ["chat", "completions", "embeddings"].map((scope) =>
        h("label", { class: "inline" }, h("input", { type: "checkbox", name: "scope", value: scope, checked: scope === "chat" }), scope))),
    h("div", { class: "grid" },
      h("div", {}, h("label", { for: "key-models" }, "Models (comma-separated, empty = all)"), h("input", { id: "key-models" })),
      h("div", {}, h("label", { for: "key-expires" }, "Expires"), h("input", { id: "key-expires", type: "datetime-local" })),
      h("div", {}, h("label", { for: "key-rps" }, "Requests/s"), h("input", { id: "key-rps", type: "number", min: "0.01", step: "any" })),
      h("div", {}, h("label", { for: "key-burst" }, "Burst"), h("input", { id: "key-burst", type: "number", min: "1" })),
      h("div", {}, h("label", { for: "key-streams" }, "Concurrent streams"), h("input", { id: "key-streams", type: "number", min: "1" })),
      h("div", {}, h("label", { for: "key-tpm" }, "Tokens/minute"), h("input", { id: "key-tpm", type: "number", min: "1" })),
      h("div", {}, h("label", { for: "key-budget" }, "Budget (USD)"), h("input", { id: "key-budget", type: "number", min: "0", step: "any" })),
      h("div", {}, h("label", { for: "key-period" }, "Budget period (UTC)"),
        h("select", { id: "key-period" }, ["total", "monthly", "daily"].map((p) => h("option", { value: p, text: p })))),
      h("div", {}, h("label", { for: "key-ips" }, "Allowed client addresses (CIDRs, comma-separated, empty = anywhere)"), h("input", { id: "key-ips" }))),
    error,
    h("button", { type: "submit", id: "create-key-submit" }, "Create key"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const value = (id) => document.getElementById(id).value.trim();
    const number = (id) => (value(id) === "" ? undefined : Number(value(id)));
    const limits = {
      requests_per_second: number("key-rps"), burst: number("key-burst"),
      max_concurrent_streams: number("key-streams"), tokens_per_minute: number("key-tpm"), budget_usd: number("key-budget"),
    };
    if (limits.budget_usd !== undefined) limits.budget_period = value("key-period");
    Object.keys(limits).forEach((k) => limits[k] === undefined && delete limits[k]);
    const body = {
      name: value("key-name"),
      scopes: [...form.querySelectorAll("input[name=scope]:checked")].map((i) => i.value),
      limits,
    };
    if (value("key-models")) body.models = value("key-models").split(",").map((m) => m.trim()).filter(Boolean);
    if (value("key-expires")) body.expires_at = new Date(value("key-expires")).toISOString();
    if (value("key-ips")) body.allowed_ips = value("key-ips").split(",").map((m) => m.trim()).filter(Boolean);
    try {
      const created = await api("POST", "/admin/keys", body);
      await done();
      showSecret("New key “" + created.name + "”", created.key);
    } catch (e) {
      show(error, e);
    }
  });
  return h("div", { class: "card" }, h("h2", { text: "Create a key" }), form);
}

async function revokeKey(key) {
  if (!confirm("Revoke “" + key.name + "”? Requests with it will be refused at once.")) return;
  try {
    await api("DELETE", "/admin/keys/" + encodeURIComponent(key.id));
    toast("Key revoked");
    await route();
  } catch (e) {
    toast(e.message);
  }
}

async function rotateKey(key) {
  const grace = prompt("Keep the old key working for how many seconds?", "3600");
  if (grace === null) return;
  try {
    const created = await api("POST", "/admin/keys/" + encodeURIComponent(key.id) + "/rotate", { grace_period_seconds: Math.max(0, parseInt(grace, 10) || 0) });
    await route();
    showSecret("Replacement for “" + key.name + "”", created.key);
  } catch (e) {
    toast(e.message);
  }
}

function barChart(id, label, buckets, valueOf) {
  const width = 640, height = 200, pad = 30;
  const max = Math.max(1, ...buckets.map(valueOf));
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": label, id });
  const barWidth = buckets.length ? Math.min(56, (width - pad) / buckets.length) : 0;
  buckets.forEach((b, i) => {
    const barHeight = ((height - pad) * valueOf(b)) / max;
    const rect = svg("rect", { x: pad + i * barWidth + 2, y: height - pad - barHeight, width: Math.max(2, barWidth - 4), height: barHeight });
    const title = svg("title", {});
    title.textContent = `${b.group}: ${valueOf(b)}`;
    rect.append(title);
    chart.append(rect);
    const text = svg("text", { x: pad + i * barWidth + 2, y: height - 10 });
    text.textContent = String(b.group).slice(0, 12);
    chart.append(text);
  });
  return chart;
}

async function renderUsage(main) {
  const error = errorBox();
  main.append(error);
  try {
    const [days, keys, models] = await Promise.all(["day", "key", "model"].map((g) => api("GET", "/admin/usage/summary?group_by=" + g)));
    // Show key names instead of ids where the caller may list the keys.
    const listed = can("keys:read_own", "keys:read_all") ? (await api("GET", "/admin/keys")).data : [];
    const names = new Map(listed.map((k) => [k.id, k.name]));
    keys.data.forEach((b) => { b.group = names.get(b.group) || b.group; });
    const section = (title, id, summary) => h("div", { class: "card" },
      h("h2", { text: title }),
      barChart(id, title, summary.data, (b) => b.requests),
      table(["Group", "Requests", "Prompt tokens", "Completion tokens", "Cost"],
        summary.data.map((b) => h("tr", {}, h("td", { text: b.group }), h("td", { text: b.requests }), h("td", { text: b.prompt_tokens }),
          h("td", { text: b.completion_tokens }), h("td", { text: money(b.cost_usd) })))));
    main.append(
      h("div", { class: "card" }, h("h2", { text: "Total" }),
        h("p", { id: "usage-total", text: `${days.total.requests} requests, ${money(days.total.cost_usd)}` })),
      section("Requests per day", "chart-day", days),
      section("By key", "chart-key", keys),
      section("By model", "chart-model", models));
  } catch (e) {
    show(error, e);
  }
}

async function renderCatalog(main) {
  const error = errorBox();
  main.append(error);
  const writeProviders = can("providers:write"), writeModels = can("models:write");
  try {
    const providers = can("providers:read") ? (await api("GET", "/admin/providers")).data : [];
    const models = (await api("GET", "/admin/models")).data;
    if (can("providers:read")) {
      // The kind says which header carries the key and where the endpoints are; the version
      // is Anthropic's or Azure's, and only an OpenAI provider can serve /responses itself.
      const kindText = (p) => p.kind + (p.api_version ? " (" + p.api_version + ")" : "") + (p.responses_api ? ", Responses API" : "");
      // The weight counts only for models with the weighted strategy; the health check asks
      // base_url + "/" + path, "models" unless the provider sets another.
      const card = h("div", { class: "card" }, h("h2", { text: "Providers" }),
        table(["Name", "Kind", "Base URL", "Weight", "Health check", "API key", "Source", ""], providers.map((p) => h("tr", { "data-provider": p.name },
          h("td", { text: p.name }), h("td", { "data-kind": p.kind, text: kindText(p) }), h("td", { text: p.base_url }),
          h("td", { "data-weight": p.weight, text: p.weight }), h("td", { "data-health-path": p.health_check_path || "", text: p.health_check_path || "models (default)" }),
          h("td", { text: p.has_api_key ? "set" : "none" }), h("td", { text: p.source }),
          h("td", {}, writeProviders ? h("button", { type: "button", class: "danger", onclick: () => remove("/admin/providers/", p) }, "Delete") : null)))));
      if (writeProviders) {
        const placeholders = { openai: "http://127.0.0.1:8000/v1", anthropic: "https://api.anthropic.com/v1", azure: "https://NAME.openai.azure.com" };
        const versions = { anthropic: "2023-06-01", azure: "2024-10-21" };
        const form = h("form", {},
          h("div", { class: "grid" },
            h("div", {}, h("label", { for: "p-name" }, "Name"), h("input", { id: "p-name", required: true })),
            h("div", {}, h("label", { for: "p-kind" }, "Kind"), h("select", { id: "p-kind" },
              h("option", { value: "openai", text: "OpenAI-compatible" }), h("option", { value: "anthropic", text: "Anthropic" }), h("option", { value: "azure", text: "Azure OpenAI" }))),
            h("div", {}, h("label", { for: "p-url" }, "Base URL"), h("input", { id: "p-url", required: true, placeholder: placeholders.openai })),
            h("div", {}, h("label", { for: "p-key" }, "API key (write-only)"), h("input", { id: "p-key", type: "password", autocomplete: "off" })),
            h("div", {}, h("label", { for: "p-version" }, "API version"), h("input", { id: "p-version", disabled: true, placeholder: "—" })),
            h("div", {}, h("label", { for: "p-weight" }, "Weight (weighted models)"), h("input", { id: "p-weight", type: "number", min: "1", max: "1000", step: "1", placeholder: "1" })),
            h("div", {}, h("label", { for: "p-health" }, "Health check path"), h("input", { id: "p-health", maxlength: "200", placeholder: "models" }))),
          h("div", {}, h("label", { class: "inline" }, h("input", { id: "p-responses", type: "checkbox" }), "Serves the Responses API itself")),
          h("button", { type: "submit" }, "Add provider"));
        const field = (id) => form.querySelector(id);
        // Fields that do not apply to the chosen kind are disabled, so they are never sent.
        field("#p-kind").addEventListener("change", () => {
          const kind = field("#p-kind").value;
          field("#p-url").placeholder = placeholders[kind];
          field("#p-version").disabled = kind === "openai";
          field("#p-version").placeholder = versions[kind] || "—";
          if (kind === "openai") field("#p-version").value = "";
          field("#p-responses").disabled = kind !== "openai";
          if (kind !== "openai") field("#p-responses").checked = false;
        });
        form.addEventListener("submit", async (event) => {
          event.preventDefault();
          const kind = field("#p-kind").value;
          const body = { name: field("#p-name").value.trim(), base_url: field("#p-url").value.trim(), kind };
          if (field("#p-key").value) body.api_key = field("#p-key").value;
          if (kind !== "openai" && field("#p-version").value.trim()) body.api_version = field("#p-version").value.trim();
          if (kind === "openai" && field("#p-responses").checked) body.responses_api = true;
          // Empty fields are not sent, so the server's defaults apply (weight 1, path models).
          if (field("#p-weight").value.trim()) body.weight = Number(field("#p-weight").value.trim());
          if (field("#p-health").value.trim()) body.health_check_path = field("#p-health").value.trim();
          try { await api("POST", "/admin/providers", body); toast("Provider added"); await route(); } catch (e) { show(error, e); }
        });
        card.append(form);
      }
      main.append(card);
    }
    // Provider names come only to roles that may read providers; the column goes with them.
    const showProviders = can("providers:read");
    // How a model spreads its requests over its providers (SPEC §16).
    const strategies = { round_robin: "Round robin", weighted: "Weighted", least_latency: "Least latency", priority: "Priority (in order)" };
    const card = h("div", { class: "card" }, h("h2", { text: "Models" }),
      table(["Name", ...(showProviders ? ["Providers"] : []), "Strategy", "Upstream name", "Input $/Mtok", "Output $/Mtok", ""], models.map((m) => h("tr", { "data-model": m.name },
        h("td", { text: m.name }), ...(showProviders ? [h("td", { text: (m.providers || []).join(", ") })] : []),
        h("td", { "data-strategy": m.strategy, text: strategies[m.strategy] || m.strategy }), h("td", { text: m.upstream_name || "—" }),
        h("td", { text: m.input_price_per_mtok }), h("td", { text: m.output_price_per_mtok }),
        h("td", {}, writeModels ? h("button", { type: "button", class: "danger", onclick: () => remove("/admin/models/", m) }, "Delete") : null)))));
    if (writeModels && providers.length) {
      const form = h("form", {},
        h("div", { class: "grid" },
          h("div", {}, h("label", { for: "m-name" }, "Name"), h("input", { id: "m-name", required: true })),
          h("div", {}, h("label", { for: "m-provider" }, "Provider"), h("select", { id: "m-provider" }, providers.map((p) => h("option", { value: p.id, text: p.name })))),
          h("div", {}, h("label", { for: "m-strategy" }, "Strategy"), h("select", { id: "m-strategy" }, Object.entries(strategies).map(([value, text]) => h("option", { value, text })))),
          h("div", {}, h("label", { for: "m-upstream" }, "Upstream name"), h("input", { id: "m-upstream" })),
          h("div", {}, h("label", { for: "m-in" }, "Input $/Mtok"), h("input", { id: "m-in", type: "number", min: "0", step: "any" })),
          h("div", {}, h("label", { for: "m-out" }, "Output $/Mtok"), h("input", { id: "m-out", type: "number", min: "0", step: "any" }))),
        h("button", { type: "submit" }, "Add model"));
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        const v = (id) => form.querySelector(id).value.trim();
        const body = { name: v("#m-name"), provider: v("#m-provider"), strategy: v("#m-strategy") };
        if (v("#m-upstream")) body.upstream_name = v("#m-upstream");
        if (v("#m-in")) body.input_price_per_mtok = Number(v("#m-in"));
        if (v("#m-out")) body.output_price_per_mtok = Number(v("#m-out"));
        try { await api("POST", "/admin/models", body); toast("Model added"); await route(); } catch (e) { show(error, e); }
      });
      card.append(form);
    }
    main.append(card);
  } catch (e) {
    show(error, e);
  }
}

async function remove(prefix, item) {
  if (!confirm("Delete “" + item.name + "”?")) return;
  try { await api("DELETE", prefix + encodeURIComponent(item.id)); toast("Deleted"); await route(); } catch (e) { toast(e.message); }
}

async function renderUsers(main) {
  const error = errorBox();
  main.append(error);
  const writable = can("users:write");
  try {
    const users = (await api("GET", "/admin/users")).data;
    const roles = ["admin", "operator", "developer", "viewer", "billing"];
    const card = h("div", { class: "card" }, h("h2", { text: "Users" }),
      table(["Username", "Role", "Sign-in", "MFA", "Status", ""], users.map((u) => {
        const role = writable
          ? h("select", { "aria-label": "Role of " + u.username, onchange: async (event) => {
              try { await api("PATCH", "/admin/users/" + u.id, { role: event.target.value }); toast("Role changed"); } catch (e) { toast(e.message); await route(); }
            } }, roles.map((r) => h("option", { value: r, selected: r === u.role, text: r })))
          : u.role;
        return h("tr", { "data-user": u.username }, h("td", { text: u.username }), h("td", {}, role),
          h("td", { "data-col": "kind", text: u.kind === "sso" ? "single sign-on" : "password" }), h("td", { text: u.mfa_enabled ? "on" : "off" }),
          h("td", { text: u.disabled ? "disabled" : u.must_change_password ? "must change password" : "active" }),
          h("td", {}, writable && u.id !== me.id ? h("button", { type: "button", class: "danger", onclick: () => remove("/admin/users/", { id: u.id, name: u.username }) }, "Delete") : null));
      })));
    if (writable) {
      const form = h("form", { id: "create-user" },
        h("div", { class: "grid" },
          h("div", {}, h("label", { for: "u-name" }, "Username"), h("input", { id: "u-name", required: true })),
          h("div", {}, h("label", { for: "u-password" }, "First password (they must change it)"), h("input", { id: "u-password", type: "password", required: true, autocomplete: "new-password" })),
          h("div", {}, h("label", { for: "u-role" }, "Role"), h("select", { id: "u-role" }, roles.map((r) => h("option", { value: r, text: r })))),
          await userOrgField()),
        h("button", { type: "submit", id: "create-user-submit" }, "Add user"));
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        const body = { username: form.querySelector("#u-name").value.trim(), password: form.querySelector("#u-password").value, role: form.querySelector("#u-role").value };
        if (form.querySelector("#u-org")) body.org_id = form.querySelector("#u-org").value;
        try { await api("POST", "/admin/users", body); toast("User added"); await route(); } catch (e) { show(error, e); }
      });
      card.append(form);
    }
    main.append(card);
  } catch (e) {
    show(error, e);
  }
}

async function renderAudit(main) {
  const error = errorBox();
  const result = h("p", { id: "verify-result", role: "status" });
  const filters = h("form", { class: "grid" },
    h("div", {}, h("label", { for: "a-action" }, "Action"), h("input", { id: "a-action", placeholder: "key.create" })),
    h("div", {}, h("label", { for: "a-actor" }, "Actor"), h("input", { id: "a-actor" })),
    h("div", {}, h("button", { type: "submit" }, "Filter")));
  const list = h("div", {});
  const load = async () => {
    const params = new URLSearchParams({ limit: "200" });
    if (filters.querySelector("#a-action").value.trim()) params.set("action", filters.querySelector("#a-action").value.trim());
    if (filters.querySelector("#a-actor").value.trim()) params.set("actor", filters.querySelector("#a-actor").value.trim());
    try {
      const events = (await api("GET", "/admin/audit?" + params)).data;
      list.replaceChildren(table(["#", "Time", "Actor", "Action", "Target", "IP"], events.map((e) => h("tr", {},
        h("td", { text: e.seq }), h("td", { text: fmt(e.at) }), h("td", { text: e.actor }), h("td", { text: e.action }),
        h("td", { text: e.target }), h("td", { text: e.client_ip })))));
    } catch (e) {
      show(error, e);
    }
  };
  filters.addEventListener("submit", (event) => { event.preventDefault(); load(); });
  main.append(h("div", { class: "card" }, h("h2", { text: "Integrity" }),
    h("button", { type: "button", id: "verify-audit", onclick: async () => {
      result.textContent = "Verifying…";
      try {
        const report = await api("GET", "/admin/audit/verify");
        result.className = report.ok ? "ok" : "error";
        result.textContent = report.ok ? `Chain intact: ${report.events_checked} events verified.` : `Verification failed at event #${report.first_bad_seq} (${String(report.problem).replaceAll("_", " ")}).`;
      } catch (e) { show(result, e); }
    } }, "Verify the audit chain"), result),
    h("div", { class: "card" }, h("h2", { text: "Events" }), filters, error, list));
  await load();
}

async function renderCheck(main) {
  const error = errorBox();
  main.append(error);
  try {
    const report = await api("GET", "/admin/check");
    main.append(h("div", { class: "card" }, h("h2", { text: report.ok ? "All checks pass" : "Some checks fail" }),
      table(["Check", "Result", "How to fix"], report.checks.map((c) => h("tr", {},
        h("td", { text: c.name }), h("td", { class: c.status === "PASS" ? "pass" : "fail", text: c.status }), h("td", { text: c.hint || "" }))))));
  } catch (e) {
    show(error, e);
  }
}

// ---- health page -----------------------------------------------------------------------
// Each provider's state as this instance sees it, from GET /admin/providers/health, redrawn
// every 2 s while the page is shown. One refresh chain at a time: leaving the page (or a new
// render of it) stops the previous one, and a chain whose page is gone ends at its next tick.

const HEALTH_REFRESH_MS = 2000;
const HEALTH_STATES = {
  healthy: { label: "Healthy", meaning: "Serving normally." },
  degraded: { label: "Degraded", meaning: "Failed a request or its last check recently: tried after healthy providers." },
  open: { label: "Open", meaning: "Circuit breaker open: passed over while other providers can serve." },
};
let stopHealthRefresh = () => {};

// The state in words inside a coloured badge: the colour only repeats what the text says.
function healthBadge(provider) {
  const state = HEALTH_STATES[provider.state] || { label: String(provider.state), meaning: "" };
  const probing = provider.breaker === "half_open" ? " The next request probes it." : "";
  return h("span", { class: "badge badge-" + provider.state, "data-state": provider.state, title: state.meaning + probing, text: state.label });
}

function healthRow(p) {
  const check = p.last_check_at
    ? [fmt(p.last_check_at), " · ", h("span", { class: p.last_check_ok ? "pass" : "fail", text: p.last_check_ok ? "passed" : "failed" })]
    : [h("span", { class: "muted", text: "never" })];
  return h("tr", { "data-provider": p.name },
    h("td", { text: p.name }),
    h("td", { "data-col": "state" }, healthBadge(p)),
    h("td", { "data-col": "latency", text: p.latency_ms_p50 === null ? "—" : p.latency_ms_p50 + " ms" }),
    h("td", { "data-col": "error-rate", text: (p.error_rate * 100).toFixed(1) + " %" }),
    h("td", { "data-col": "in-flight", text: p.in_flight }),
    h("td", { "data-col": "last-check" }, check));
}

async function renderHealth(main) {
  stopHealthRefresh();
  let timer = null;
  let stopped = false;
  const stop = () => {
    stopped = true;
    clearTimeout(timer);
    window.removeEventListener("hashchange", stop);
  };
  stopHealthRefresh = stop;
  window.addEventListener("hashchange", stop);

  const error = errorBox();
  const updated = h("p", { class: "muted", id: "health-updated" });
  const list = h("div", { id: "health-list" });
  const card = h("div", { class: "card" }, h("h2", { text: "Providers" }),
    h("p", { class: "muted", text: "As this gateway instance sees them; refreshed every 2 seconds." }),
    h("dl", { class: "legend" }, Object.entries(HEALTH_STATES).flatMap(([state, s]) =>
      [h("dt", {}, healthBadge({ state })), h("dd", { text: s.meaning })])),
    updated, error, list);
  main.append(card);

  const refresh = async () => {
    try {
      const providers = (await api("GET", "/admin/providers/health")).data;
      if (stopped) return;
      list.replaceChildren(providers.length
        ? table(["Provider", "State", "Latency (p50)", "Error rate", "In flight", "Last check"], providers.map(healthRow))
        : h("p", { class: "muted", text: "No providers yet." }));
      updated.textContent = "Updated " + new Date().toLocaleTimeString();
      error.textContent = "";
    } catch (e) {
      if (!stopped) show(error, e);
    }
  };
  const tick = async () => {
    if (stopped || !card.isConnected) return stop();
    // A hidden tab skips the request but keeps the rhythm, so it is fresh when shown again.
    if (!document.hidden) await refresh();
    if (!stopped) timer = setTimeout(tick, HEALTH_REFRESH_MS);
  };
  await refresh();
  if (!stopped) timer = setTimeout(tick, HEALTH_REFRESH_MS);
}

function passwordForm(forced) {
  const error = errorBox();
  const form = h("form", { id: "password-form" },
    forced ? h("p", { text: "Choose a new password before you continue." }) : null,
    h("label", { for: "pw-current" }, "Current password"), h("input", { id: "pw-current", type: "password", required: true, autocomplete: "current-password" }),
    h("label", { for: "pw-new" }, "New password (12+ characters, not common)"), h("input", { id: "pw-new", type: "password", required: true, autocomplete: "new-password" }),
    error, h("button", { type: "submit", id: "pw-submit" }, "Change password"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api("POST", "/admin/auth/password", { current_password: form.querySelector("#pw-current").value, new_password: form.querySelector("#pw-new").value });
      toast("Password changed");
      me = await api("GET", "/admin/me");
      location.hash = "#/keys";
      await route();
    } catch (e) {
      show(error, e);
    }
  });
  return h("div", { class: "card" }, h("h2", { text: "Password" }), form);
}

async function renderAccount(main) {
  const error = errorBox();
  const mfa = h("div", { class: "card", id: "mfa-card" }, h("h2", { text: "Two-factor authentication" }), error);
  if (me.totp_enabled) {
    mfa.append(h("p", { id: "mfa-status", text: `On. ${me.recovery_codes_left} recovery codes left.` }));
  } else {
    mfa.append(h("p", { id: "mfa-status", text: me.mfa_required && !me.mfa_enabled ? "Required for your role: set it up now (or add a passkey)." : "Off." }),
      h("button", { type: "button", id: "mfa-enrol", onclick: async () => {
        try {
          const enrol = await api("POST", "/admin/me/totp");
          const code = h("input", { id: "mfa-code", inputmode: "numeric", maxlength: 6, required: true });
          const form = h("form", { id: "mfa-confirm" },
            h("p", { text: "Scan the code with your authenticator app, or type the secret." }),
            h("img", { class: "qr", alt: "QR code for the authenticator app", src: "data:image/svg+xml;base64," + btoa(enrol.qr_svg) }),
            h("p", { class: "secret", id: "mfa-secret", text: enrol.secret }),
            h("label", { for: "mfa-code" }, "Code from the app"), code,
            h("button", { type: "submit", id: "mfa-confirm-submit" }, "Turn on"));
          form.addEventListener("submit", async (event) => {
            event.preventDefault();
            try {
              const confirmed = await api("POST", "/admin/me/totp/confirm", { code: code.value.trim() });
              me = await api("GET", "/admin/me");
              form.replaceWith(h("div", { id: "recovery-codes" },
                h("p", { class: "ok", text: "Two-factor authentication is on. Keep these single-use recovery codes somewhere safe:" }),
                h("ul", {}, confirmed.recovery_codes.map((c) => h("li", { class: "secret", text: c })))));
            } catch (e) { show(error, e); }
          });
          mfa.querySelector("#mfa-enrol").replaceWith(form);
        } catch (e) { show(error, e); }
      } }, "Set up an authenticator"));
  }
  const you = h("div", { class: "card" }, h("h2", { text: "You" }), h("p", { text: `${me.username} · ${me.role}` }));
  // A single sign-on user's password and second factor are the identity provider's business.
  if (me.kind !== "local") {
    you.append(h("p", { class: "muted", id: "sso-account", text: "You sign in with single sign-on: your password and second factor are managed by your identity provider." }));
    main.append(you);
    return;
  }
  main.append(you, mfa);
  if (me.passkeys_enabled) main.append(await passkeysCard());
  main.append(passwordForm(false));
}

// ---- passkeys ------------------------------------------------------------------------------
// SPEC §19. WebAuthn credentials of the signed-in user: several, named, removable; a second
// factor after the password, or the only factor when "passkey only" is on. The browser's
// JSON forms of the options and credentials (WebAuthn Level 3) go to and from the server as is.

async function passkeysCard() {
  const error = errorBox();
  const card = h("div", { class: "card", id: "passkeys-card" }, h("h2", { text: "Passkeys" }), error);
  const passkeys = (await api("GET", "/admin/me/passkeys")).data;
  card.append(passkeys.length
    ? table(["Name", "Added", "Last used", ""], passkeys.map((p) => h("tr", { "data-passkey": p.name },
        h("td", { text: p.name }), h("td", { text: fmt(p.created_at) }), h("td", { text: fmt(p.last_used_at) }),
        h("td", {}, h("button", { type: "button", class: "danger", "data-action": "remove", onclick: async () => {
          if (!confirm("Remove the passkey “" + p.name + "”?")) return;
          try { await api("DELETE", "/admin/me/passkeys/" + encodeURIComponent(p.id)); toast("Passkey removed"); me = await api("GET", "/admin/me"); await route(); } catch (e) { show(error, e); }
        } }, "Remove")))))
    : h("p", { class: "muted", id: "no-passkeys", text: "No passkeys yet. A passkey is a second factor after your password, or your only one if you choose." }));
  const name = h("input", { id: "passkey-name", required: true, maxlength: 64, placeholder: "e.g. laptop, security key" });
  const form = h("form", { id: "passkey-add" }, h("label", { for: "passkey-name" }, "Name"), name,
    h("button", { type: "submit", id: "passkey-add-submit" }, "Add a passkey"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    try {
      const start = await api("POST", "/admin/me/webauthn/register/start", { name: name.value.trim() });
      const credential = await navigator.credentials.create({ publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(start.options.publicKey) });
      await api("POST", "/admin/me/webauthn/register/finish", { challenge_id: start.challenge_id, credential: credential.toJSON() });
      toast("Passkey added");
      me = await api("GET", "/admin/me");
      await route();
    } catch (e) {
      if (e instanceof ApiError) show(error, e);
      else error.textContent = "The passkey was not created (" + (e.name || "error") + ").";
    }
  });
  const only = h("input", { type: "checkbox", id: "passkey-only", checked: me.passkey_only, disabled: !passkeys.length });
  only.addEventListener("change", async () => {
    try {
      await api("PUT", "/admin/me/passkey-only", { enabled: only.checked });
      toast(only.checked ? "You now sign in with a passkey alone" : "Your password works again");
      me = await api("GET", "/admin/me");
    } catch (e) { only.checked = !only.checked; show(error, e); }
  });
  card.append(form, h("label", { class: "inline" }, only, "Sign in with a passkey alone (your password stops working)"));
  return card;
}

// ---- organizations and teams -------------------------------------------------------------
// SPEC §18. Organizations are managed by admins of the default organization (me.all_orgs);
// teams by each organization's admins (users:write), and read by whoever may read its users.
// Budgets show the spend of the current period (UTC) from the usage summary, when the caller
// may read usage.

const PERIODS = ["daily", "monthly", "total"];

// The start of the current budget period, as the usage filter takes it (RFC 3339, UTC).
function periodStart(period) {
  const now = new Date();
  if (period === "daily") return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate())).toISOString();
  if (period === "monthly") return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1)).toISOString();
  return null;
}

// Spend per group (org or team id) in each period some row has a budget for: Map period → Map.
async function spendByPeriod(groupBy, rows) {
  const spend = new Map();
  if (!can("usage:read_all")) return spend;
  for (const period of new Set(rows.filter((r) => r.budget_period).map((r) => r.budget_period))) {
    const params = new URLSearchParams({ group_by: groupBy });
    const from = periodStart(period);
    if (from) params.set("from", from);
    const summary = await api("GET", "/admin/usage/summary?" + params);
    spend.set(period, new Map(summary.data.map((b) => [b.group, b.cost_usd])));
  }
  return spend;
}

function budgetText(row) {
  return row.budget_usd === null || row.budget_usd === undefined ? "none" : `$${row.budget_usd} ${row.budget_period}`;
}

function spendCell(row, spend) {
  if (!row.budget_period) return h("td", { class: "muted", text: "—" });
  const used = (spend.get(row.budget_period) || new Map()).get(row.id) || 0;
  const over = used >= row.budget_usd;
  return h("td", { "data-col": "spend", class: over ? "fail" : null, text: `${money(used)} of $${row.budget_usd}` });
}

// Budget and token-limit inputs shared by the organization and team forms; `prefix` keeps ids
// unique, `row` fills them for an edit.
function limitFields(prefix, row) {
  return [
    h("div", {}, h("label", { for: prefix + "-budget" }, "Budget (USD, empty = none)"),
      h("input", { id: prefix + "-budget", type: "number", min: "0", step: "any", value: row && row.budget_usd !== null ? row.budget_usd : null })),
    h("div", {}, h("label", { for: prefix + "-period" }, "Budget period (UTC)"),
      h("select", { id: prefix + "-period" }, PERIODS.map((p) => h("option", { value: p, selected: row ? row.budget_period === p : p === "monthly", text: p })))),
    h("div", {}, h("label", { for: prefix + "-tpm" }, "Tokens/minute (empty = none)"),
      h("input", { id: prefix + "-tpm", type: "number", min: "1", value: row ? row.tokens_per_minute : null })),
  ];
}

// The budget and token fields of a form as the API takes them; `clear` sends nulls for empty
// fields (an edit), otherwise they are left out (a create).
function limitBody(form, prefix, clear) {
  const body = {};
  const budget = form.querySelector("#" + prefix + "-budget").value.trim();
  const tpm = form.querySelector("#" + prefix + "-tpm").value.trim();
  if (budget !== "") {
    body.budget_usd = Number(budget);
    body.budget_period = form.querySelector("#" + prefix + "-period").value;
  } else if (clear) {
    body.budget_usd = null;
    body.budget_period = null;
  }
  if (tpm !== "") body.tokens_per_minute = Number(tpm);
  else if (clear) body.tokens_per_minute = null;
  return body;
}

const modelList = (text) => text.split(",").map((m) => m.trim()).filter(Boolean);

function orgForm(org, done) {
  const prefix = org ? "oe" : "o";
  const error = errorBox();
  const form = h("form", { id: org ? "edit-org" : "create-org" },
    h("div", { class: "grid" },
      h("div", {}, h("label", { for: prefix + "-name" }, "Name"), h("input", { id: prefix + "-name", required: true, maxlength: 64, value: org ? org.name : null })),
      ...limitFields(prefix, org),
      h("div", {}, h("label", { for: prefix + "-models" }, "Allowed models (comma-separated, empty = all)"),
        h("input", { id: prefix + "-models", value: org && org.allowed_models ? org.allowed_models.join(", ") : null }))),
    error,
    h("button", { type: "submit", id: prefix + "-submit" }, org ? "Save organization" : "Create organization"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const models = modelList(form.querySelector("#" + prefix + "-models").value);
    const body = { name: form.querySelector("#" + prefix + "-name").value.trim(), ...limitBody(form, prefix, !!org) };
    if (models.length) body.allowed_models = models;
    else if (org) body.allowed_models = null;
    try {
      if (org) await api("PATCH", "/admin/orgs/" + encodeURIComponent(org.id), body);
      else await api("POST", "/admin/orgs", body);
      toast(org ? "Organization saved" : "Organization created");
      await done();
    } catch (e) { show(error, e); }
  });
  return form;
}

async function renderOrgs(main) {
  const error = errorBox();
  const editor = h("div", { id: "org-editor" });
  main.append(error, editor);
  try {
    const orgs = (await api("GET", "/admin/orgs")).data;
    const spend = await spendByPeriod("org", orgs);
    const rows = orgs.map((o) => h("tr", { "data-org": o.name },
      h("td", { text: o.name }), h("td", { class: "muted", text: o.id }),
      h("td", { "data-col": "budget", text: budgetText(o) }), spendCell(o, spend),
      h("td", { text: o.tokens_per_minute ?? "—" }),
      h("td", { "data-col": "models", text: o.allowed_models ? o.allowed_models.join(", ") || "none" : "all" }),
      h("td", { text: fmt(o.created_at) }),
      h("td", {},
        h("button", { type: "button", class: "secondary", "data-action": "edit", onclick: () => {
          editor.replaceChildren(h("div", { class: "card" }, h("h2", { text: "Edit “" + o.name + "”" }), orgForm(o, route)));
          editor.scrollIntoView();
        } }, "Edit"), " ",
        o.id === "default" ? null : h("button", { type: "button", class: "danger", "data-action": "delete", onclick: () => remove("/admin/orgs/", o) }, "Delete"))));
    main.append(
      h("div", { class: "card" }, h("h2", { text: "Organizations" }),
        table(["Name", "Id", "Budget", "Spend this period", "Tokens/min", "Models", "Created", ""], rows)),
      h("div", { class: "card" }, h("h2", { text: "Create an organization" }), orgForm(null, route)));
  } catch (e) {
    show(error, e);
  }
}

function teamForm(orgs, done) {
  const error = errorBox();
  const form = h("form", { id: "create-team" },
    h("div", { class: "grid" },
      h("div", {}, h("label", { for: "t-name" }, "Name"), h("input", { id: "t-name", required: true, maxlength: 64 })),
      // Only admins of the default organization choose; everyone else creates in their own.
      me.all_orgs ? h("div", {}, h("label", { for: "t-org" }, "Organization"),
        h("select", { id: "t-org" }, orgs.map((o) => h("option", { value: o.id, selected: o.id === me.org_id, text: o.name })))) : null,
      ...limitFields("t", null)),
    error,
    h("button", { type: "submit", id: "t-submit" }, "Create team"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { name: form.querySelector("#t-name").value.trim(), ...limitBody(form, "t", false) };
    if (me.all_orgs) body.org_id = form.querySelector("#t-org").value;
    try { await api("POST", "/admin/teams", body); toast("Team created"); await done(); } catch (e) { show(error, e); }
  });
  return form;
}

function teamEditor(team, done) {
  const error = errorBox();
  const form = h("form", { id: "edit-team" },
    h("div", { class: "grid" },
      h("div", {}, h("label", { for: "te-name" }, "Name"), h("input", { id: "te-name", required: true, maxlength: 64, value: team.name })),
      ...limitFields("te", team)),
    error, h("button", { type: "submit", id: "te-submit" }, "Save team"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { name: form.querySelector("#te-name").value.trim(), ...limitBody(form, "te", true) };
    try { await api("PATCH", "/admin/teams/" + encodeURIComponent(team.id), body); toast("Team saved"); await done(); } catch (e) { show(error, e); }
  });
  return h("div", { class: "card" }, h("h2", { text: "Edit team “" + team.name + "”" }), form);
}

// Members are chosen among the users of the team's organization.
function membersEditor(team, users, done) {
  const error = errorBox();
  const candidates = users.filter((u) => u.org_id === team.org_id);
  const form = h("form", { id: "team-members" },
    h("fieldset", {}, h("legend", { text: "Members" }),
      candidates.length ? candidates.map((u) => h("label", { class: "inline" },
        h("input", { type: "checkbox", name: "member", value: u.id, "data-username": u.username, checked: team.members.includes(u.id) }), u.username))
        : h("p", { class: "muted", text: "The organization has no users yet." })),
    error, h("button", { type: "submit", id: "members-submit" }, "Save members"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const ids = [...form.querySelectorAll("input[name=member]:checked")].map((i) => i.value);
    try { await api("PUT", "/admin/teams/" + encodeURIComponent(team.id) + "/members", { user_ids: ids }); toast("Members saved"); await done(); } catch (e) { show(error, e); }
  });
  return h("div", { class: "card" }, h("h2", { text: "Members of “" + team.name + "”" }), form);
}

async function renderTeams(main) {
  const error = errorBox();
  const editor = h("div", { id: "team-editor" });
  main.append(error, editor);
  const writable = can("users:write");
  try {
    const [teams, users, orgs] = await Promise.all([
      api("GET", "/admin/teams").then((a) => a.data),
      api("GET", "/admin/users").then((a) => a.data),
      me.all_orgs ? api("GET", "/admin/orgs").then((a) => a.data) : Promise.resolve([{ id: me.org_id, name: me.org_name || me.org_id }]),
    ]);
    const usernames = new Map(users.map((u) => [u.id, u.username]));
    const orgNames = new Map(orgs.map((o) => [o.id, o.name]));
    const spend = await spendByPeriod("team", teams);
    const rows = teams.map((t) => h("tr", { "data-team": t.name },
      h("td", { text: t.name }), h("td", { text: orgNames.get(t.org_id) || t.org_id }),
      h("td", { "data-col": "budget", text: budgetText(t) }), spendCell(t, spend),
      h("td", { text: t.tokens_per_minute ?? "—" }),
      h("td", { "data-col": "members", text: t.members.map((id) => usernames.get(id) || id).join(", ") || "none" }),
      h("td", {}, writable ? [
        h("button", { type: "button", class: "secondary", "data-action": "members", onclick: () => {
          editor.replaceChildren(membersEditor(t, users, route));
          editor.scrollIntoView();
        } }, "Members"), " ",
        h("button", { type: "button", class: "secondary", "data-action": "edit", onclick: () => {
          editor.replaceChildren(teamEditor(t, route));
          editor.scrollIntoView();
        } }, "Edit"), " ",
        h("button", { type: "button", class: "danger", "data-action": "delete", onclick: () => remove("/admin/teams/", t) }, "Delete"),
      ] : null)));
    main.append(h("div", { class: "card" }, h("h2", { text: "Teams" }),
      teams.length ? table(["Name", "Organization", "Budget", "Spend this period", "Tokens/min", "Members", ""], rows) : h("p", { class: "muted", text: "No teams yet." })));
    if (writable) main.append(h("div", { class: "card" }, h("h2", { text: "Create a team" }), teamForm(orgs, route)));
  } catch (e) {
    show(error, e);
  }
}

// Admins of the default organization choose the organization of a new user (or service
// account); `id` names the select.
async function userOrgField(id = "u-org") {
  if (!me.all_orgs) return null;
  const orgs = (await api("GET", "/admin/orgs")).data;
  return h("div", {}, h("label", { for: id }, "Organization"),
    h("select", { id }, orgs.map((o) => h("option", { value: o.id, selected: o.id === me.org_id, text: o.name }))));
}

// ---- service accounts ----------------------------------------------------------------------
// SPEC §19. Machine identities with OAuth 2.0 client credentials, managed like users: listed by
// readers of users, created, rotated, disabled and deleted by an organization's admins. The
// secret is in the answer of create and rotate only, shown once with a copy button.

const ROLES = ["admin", "operator", "developer", "viewer", "billing"];

function showClientSecret(title, account) {
  showSecret(title, account.client_secret);
  document.getElementById("new-key").append(
    h("p", {}, "Client id: ", h("code", { id: "new-client-id", text: account.client_id })),
    h("p", { class: "muted", text: "Get a token with: curl -u CLIENT_ID:CLIENT_SECRET -d grant_type=client_credentials " + location.origin + "/oauth/token" }));
}

async function renderServiceAccounts(main) {
  const error = errorBox();
  main.append(error);
  const writable = can("users:write");
  try {
    const accounts = (await api("GET", "/admin/service-accounts")).data;
    const rows = accounts.map((a) => {
      const actions = h("td", {});
      if (writable) {
        actions.append(
          h("button", { type: "button", class: "secondary", "data-action": "rotate", onclick: async () => {
            if (!confirm("Rotate the secret of “" + a.name + "”? The old secret and its tokens stop working at once.")) return;
            try {
              const rotated = await api("POST", "/admin/service-accounts/" + encodeURIComponent(a.id) + "/rotate");
              await route();
              showClientSecret("New secret for “" + a.name + "”", rotated);
            } catch (e) { toast(e.message); }
          } }, "Rotate secret"), " ",
          h("button", { type: "button", class: "secondary", "data-action": a.disabled ? "enable" : "disable", onclick: async () => {
            try {
              await api("PATCH", "/admin/service-accounts/" + encodeURIComponent(a.id), { disabled: !a.disabled });
              toast(a.disabled ? "Enabled" : "Disabled");
              await route();
            } catch (e) { toast(e.message); }
          } }, a.disabled ? "Enable" : "Disable"), " ",
          h("button", { type: "button", class: "danger", "data-action": "delete", onclick: () => remove("/admin/service-accounts/", a) }, "Delete"));
      }
      return h("tr", { "data-account": a.name },
        h("td", { text: a.name }), h("td", { class: "muted", text: a.client_id }), h("td", { text: a.role }),
        h("td", { "data-status": a.disabled ? "disabled" : "active", text: a.disabled ? "disabled" : "active" }),
        h("td", { text: a.description || "—" }), h("td", { text: fmt(a.last_token_at) }), actions);
    });
    main.append(h("div", { class: "card" }, h("h2", { text: "Service accounts" }),
      h("p", { class: "muted", text: "Machine identities for the admin API: they get short-lived tokens from /oauth/token with their client id and secret (OAuth 2.0 client credentials)." }),
      accounts.length ? table(["Name", "Client id", "Role", "Status", "Description", "Last token", ""], rows) : h("p", { class: "muted", text: "No service accounts yet." })));
    if (writable) {
      const form = h("form", { id: "create-service-account" },
        h("div", { class: "grid" },
          h("div", {}, h("label", { for: "sa-name" }, "Name"), h("input", { id: "sa-name", required: true, maxlength: 64 })),
          h("div", {}, h("label", { for: "sa-role" }, "Role"), h("select", { id: "sa-role" }, ROLES.map((r) => h("option", { value: r, selected: r === "viewer", text: r })))),
          h("div", {}, h("label", { for: "sa-description" }, "Description"), h("input", { id: "sa-description", maxlength: 256 })),
          await userOrgField("sa-org")),
        h("button", { type: "submit", id: "create-service-account-submit" }, "Create service account"));
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        const body = { name: form.querySelector("#sa-name").value.trim(), role: form.querySelector("#sa-role").value };
        const description = form.querySelector("#sa-description").value.trim();
        if (description) body.description = description;
        if (form.querySelector("#sa-org")) body.org_id = form.querySelector("#sa-org").value;
        try {
          const created = await api("POST", "/admin/service-accounts", body);
          await route();
          showClientSecret("Service account “" + created.name + "”", created);
        } catch (e) { show(error, e); }
      });
      main.append(h("div", { class: "card" }, h("h2", { text: "Create a service account" }), form));
    }
  } catch (e) {
    show(error, e);
  }
}

// The pages go before Account, which stays last in the navigation.
{
  const account = views.account;
  delete views.account;
  views.orgs = { title: "Organizations", visible: () => !!me && me.all_orgs, render: renderOrgs };
  views.teams = { title: "Teams", visible: () => can("users:read"), render: renderTeams };
  views.serviceAccounts = { title: "Service accounts", visible: () => can("users:read"), render: renderServiceAccounts };
  views.account = account;
}

// ---- engines (SPEC §17) -------------------------------------------------------------------

const ENGINE_REFRESH_MS = 2000;
let stopEngineRefresh = () => {};

// The create body from the form; settings and env are JSON objects, extra_args one per line.
function engineBody(form) {
  const value = (name) => form.querySelector("[name=" + name + "]").value.trim();
  const body = { name: value("name"), engine: value("engine"), runtime: value("runtime"), model: value("model") };
  if (value("served_model_name")) body.served_model_name = value("served_model_name");
  if (value("image")) body.image = value("image");
  if (value("settings")) body.settings = JSON.parse(value("settings"));
  if (value("env")) body.env = JSON.parse(value("env"));
  const args = value("extra_args").split("\n").map((a) => a.trim()).filter(Boolean);
  if (args.length) body.extra_args = args;
  if (value("hf_token")) body.hf_token = value("hf_token");
  body.auto_start = form.querySelector("[name=auto_start]").checked;
  return body;
}

function engineForm(done) {
  const error = errorBox();
  const preview = h("pre", { id: "engine-preview", class: "preview" });
  const field = (name, label, input) => h("div", {}, h("label", { for: "engine-" + name }, label), input);
  const text = (name, attrs) => h("input", Object.assign({ id: "engine-" + name, name, autocomplete: "off" }, attrs || {}));
  const form = h("form", { id: "engine-form" },
    field("name", "Name", text("name", { required: true })),
    field("engine", "Engine", h("select", { id: "engine-engine", name: "engine" },
      h("option", { value: "llamacpp", text: "llama.cpp (llama-server)" }), h("option", { value: "vllm", text: "vLLM" }))),
    field("runtime", "Runtime", h("select", { id: "engine-runtime", name: "runtime" },
      h("option", { value: "process", text: "process" }), h("option", { value: "docker", text: "docker" }))),
    field("model", "Model (path under the models directory or org/name)", text("model", { required: true })),
    field("served_model_name", "Served model name (default: the name)", text("served_model_name")),
    field("image", "Image (docker only)", text("image")),
    field("settings", "Settings (JSON)", h("textarea", { id: "engine-settings", name: "settings", rows: 2 })),
    field("extra_args", "Extra arguments (one per line)", h("textarea", { id: "engine-extra_args", name: "extra_args", rows: 2 })),
    field("env", "Environment (JSON)", h("textarea", { id: "engine-env", name: "env", rows: 2 })),
    field("hf_token", "Hugging Face token (write-only)", text("hf_token", { type: "password" })),
    h("div", {}, h("label", {}, h("input", { type: "checkbox", name: "auto_start" }), " Start when Cortex starts")),
    error,
    h("button", { type: "button", class: "secondary", id: "engine-dry-run", onclick: async () => {
      error.textContent = "";
      try {
        const dry = await api("POST", "/admin/engines/dry-run", engineBody(form));
        preview.textContent = [dry.command.join(" "), ...Object.entries(dry.env || {}).map(([k, v]) => k + "=" + v), "listen: " + dry.listen].join("\n");
      } catch (e) { preview.textContent = ""; e instanceof SyntaxError ? (error.textContent = "Settings and environment must be JSON objects.") : show(error, e); }
    } }, "Preview"), " ",
    h("button", { type: "submit" }, "Create"),
    preview);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    try {
      await api("POST", "/admin/engines", engineBody(form));
      toast("Engine created");
      await done();
    } catch (e) { e instanceof SyntaxError ? (error.textContent = "Settings and environment must be JSON objects.") : show(error, e); }
  });
  return form;
}

function engineRow(engine, writable, showLogs) {
  const status = engine.status || { state: "stopped" };
  const act = (verb) => async () => {
    try { await api("POST", "/admin/engines/" + encodeURIComponent(engine.id) + "/" + verb); toast("Engine " + verb + (verb === "stop" ? "ped" : "ed")); await route(); } catch (e) { toast(e.message); }
  };
  return h("tr", { "data-engine": engine.name },
    h("td", { text: engine.name }),
    h("td", { text: engine.served_model_name }),
    h("td", { text: engine.engine + " · " + engine.runtime }),
    h("td", { "data-col": "state" }, h("span", { class: "badge badge-engine-" + status.state, "data-state": status.state, title: status.reason || "", text: status.state })),
    h("td", { text: engine.desired_state }),
    h("td", {},
      h("button", { type: "button", class: "secondary", "data-action": "logs", onclick: () => showLogs(engine) }, "Logs"), " ",
      writable ? [
        h("button", { type: "button", "data-action": "start", onclick: act("start") }, "Start"), " ",
        h("button", { type: "button", class: "secondary", "data-action": "stop", onclick: act("stop") }, "Stop"), " ",
        h("button", { type: "button", class: "danger", "data-action": "delete", onclick: () => remove("/admin/engines/", engine) }, "Delete"),
      ] : null));
}

async function renderEngines(main) {
  stopEngineRefresh();
  let timer = null;
  let stopped = false;
  const stop = () => { stopped = true; clearTimeout(timer); window.removeEventListener("hashchange", stop); };
  stopEngineRefresh = stop;
  window.addEventListener("hashchange", stop);
  const writable = can("engines:write");
  const error = errorBox();
  const list = h("div", { id: "engine-list" });
  const logs = h("pre", { id: "engine-logs", class: "preview" });
  let watched = null;
  const showLogs = async (engine) => {
    watched = engine;
    try {
      const answer = await api("GET", "/admin/engines/" + encodeURIComponent(engine.id) + "/logs?tail=200");
      logs.textContent = answer.lines.length ? answer.lines.join("\n") : "(no output yet)";
    } catch (e) { logs.textContent = e.message; }
  };
  main.append(h("div", { class: "card" }, h("h2", { text: "Engines" }),
    h("p", { class: "muted", text: "Model servers this gateway runs; a running engine's served model name is routed to it. Refreshed every 2 seconds." }),
    error, list, h("h3", { text: "Logs" }), logs));
  if (writable) main.append(h("div", { class: "card" }, h("h2", { text: "Create an engine" }), engineForm(route)));
  const refresh = async () => {
    try {
      const engines = (await api("GET", "/admin/engines")).data;
      if (stopped) return;
      list.replaceChildren(engines.length
        ? table(["Name", "Model name", "Engine", "State", "Asked", ""], engines.map((e) => engineRow(e, writable, showLogs)))
        : h("p", { class: "muted", text: "No engines yet." }));
      if (watched) await showLogs(watched);
      error.textContent = "";
    } catch (e) { if (!stopped) show(error, e); }
  };
  const tick = async () => {
    if (stopped || !list.isConnected) return stop();
    if (!document.hidden) await refresh();
    if (!stopped) timer = setTimeout(tick, ENGINE_REFRESH_MS);
  };
  await refresh();
  if (!stopped) timer = setTimeout(tick, ENGINE_REFRESH_MS);
}

// Engines go before Account, which stays last in the navigation.
{
  const account = views.account;
  delete views.account;
  views.engines = { title: "Engines", visible: () => can("engines:read"), render: renderEngines };
  views.account = account;
}

// ---- usage analytics dashboard (SPEC §20, issue 31) -----------------------------------------
// Charts drawn here as SVG from /admin/usage/series; the CSV comes from /admin/usage/export.

const SERIES_COLOURS = ["#2554c7", "#c2410c", "#137333", "#7c3aed", "#b42318", "#0e7490", "#6b7280"];
const ANALYTICS_RANGES = {
  "24h": { label: "Last 24 hours, hourly", bucket: "hour", hours: 24 },
  "7d": { label: "Last 7 days, hourly", bucket: "hour", hours: 168 },
  "30d": { label: "Last 30 days, daily", bucket: "day", hours: 720 },
  "90d": { label: "Last 90 days, daily", bucket: "day", hours: 2160 },
};
const ANALYTICS_GROUPS = { none: "Nothing (totals)", model: "Model", provider: "Provider", key: "Key", user: "User", team: "Team", org: "Organization" };
const analyticsFilters = { range: "24h", group: "model", model: "", provider: "" };
const MOST_GROUPS = 6;

// The series query for the current filters: its parameters and its slots (every bucket start).
function analyticsQuery() {
  const range = ANALYTICS_RANGES[analyticsFilters.range];
  const width = range.bucket === "hour" ? 3600000 : 86400000;
  const to = Date.now();
  const from = Math.floor((to - range.hours * 3600000) / width) * width;
  const filters = new URLSearchParams({ from: new Date(from).toISOString(), to: new Date(to).toISOString() });
  if (analyticsFilters.model) filters.set("model", analyticsFilters.model);
  if (analyticsFilters.provider) filters.set("provider", analyticsFilters.provider);
  const series = new URLSearchParams(filters);
  series.set("bucket", range.bucket);
  series.set("group_by", analyticsFilters.group);
  const slots = [];
  for (let t = from; t < to; t += width) slots.push(t);
  return { series, filters, slots, bucket: range.bucket };
}

// A line chart: `lines` are { name, values } with one value (or null: no data) per slot.
function lineChart(id, title, slots, lines, format) {
  const width = 640, height = 220, left = 84, bottom = 28, top = 10, right = 12;
  const values = lines.flatMap((l) => l.values).filter((v) => v !== null && v !== undefined);
  const max = Math.max(...values, 0) || 1;
  const x = (i) => left + (slots.length > 1 ? (i * (width - left - right)) / (slots.length - 1) : (width - left - right) / 2);
  const y = (v) => top + (height - top - bottom) * (1 - v / max);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart line-chart", role: "img", "aria-label": title, id });
  const label = svg("title", {});
  label.textContent = title;
  chart.append(label);
  for (const fraction of [0, 0.5, 1]) {
    chart.append(svg("line", { x1: left, x2: width - right, y1: y(max * fraction), y2: y(max * fraction), class: "grid-line" }));
    const tick = svg("text", { x: left - 6, y: y(max * fraction) + 4, class: "axis", "text-anchor": "end" });
    tick.textContent = format(max * fraction);
    chart.append(tick);
  }
  const when = (t) => new Date(t).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  for (const i of [...new Set([0, Math.floor((slots.length - 1) / 2), slots.length - 1])]) {
    if (slots[i] === undefined) continue;
    const tick = svg("text", { x: x(i), y: height - 8, class: "axis", "text-anchor": i === 0 ? "start" : i === slots.length - 1 ? "end" : "middle" });
    tick.textContent = when(slots[i]);
    chart.append(tick);
  }
  let drawn = 0;
  lines.forEach((line, n) => {
    const colour = SERIES_COLOURS[n % SERIES_COLOURS.length];
    let path = "", open = false;
    line.values.forEach((v, i) => {
      if (v === null || v === undefined) { open = false; return; }
      path += `${open ? "L" : "M"}${x(i).toFixed(1)} ${y(v).toFixed(1)} `;
      open = true;
      drawn++;
      const dot = svg("circle", { cx: x(i), cy: y(v), r: 2.5, fill: colour, class: "point" });
      const tip = svg("title", {});
      tip.textContent = `${line.name} · ${when(slots[i])}: ${format(v)}`;
      dot.append(tip);
      chart.append(dot);
    });
    if (path) chart.append(svg("path", { d: path.trim(), stroke: colour, class: "series", "data-series": line.name }));
  });
  chart.setAttribute("data-points", String(drawn));
  const legend = h("ul", { class: "chart-legend" }, lines.map((line, n) => {
    const swatch = svg("svg", { viewBox: "0 0 10 10", class: "swatch", "aria-hidden": "true" });
    swatch.append(svg("rect", { width: 10, height: 10, fill: SERIES_COLOURS[n % SERIES_COLOURS.length] }));
    return h("li", {}, swatch, line.name);
  }));
  return h("figure", { class: "chart-box" }, h("figcaption", { text: title }), chart, legend);
}

// Display names for groups that are ids (keys, users) where the caller may list them.
async function groupNames(group) {
  try {
    if (group === "key" && can("keys:read_own", "keys:read_all")) return new Map((await api("GET", "/admin/keys")).data.map((k) => [k.id, k.name]));
    if (group === "user" && can("users:read")) return new Map((await api("GET", "/admin/users")).data.map((u) => [u.id, u.username]));
  } catch (_) { /* ids are shown instead */ }
  return new Map();
}

const integer = (n) => Math.round(n).toLocaleString();
const millis = (n) => (n === null || n === undefined ? "—" : `${Math.round(n)} ms`);

function analyticsFilterCard(onApply) {
  const select = (id, options, value) => h("select", { id }, Object.entries(options).map(([v, t]) =>
    h("option", { value: v, selected: v === value, text: typeof t === "string" ? t : t.label })));
  const csv = h("a", { id: "an-csv", class: "button secondary", download: "cortex-usage.csv", text: "Download CSV" });
  const form = h("form", { id: "an-filters", class: "card" },
    h("h2", { text: "Filters" }),
    h("div", { class: "grid" },
      h("div", {}, h("label", { for: "an-range" }, "Period"), select("an-range", ANALYTICS_RANGES, analyticsFilters.range)),
      h("div", {}, h("label", { for: "an-group" }, "Split by"), select("an-group", ANALYTICS_GROUPS, analyticsFilters.group)),
      h("div", {}, h("label", { for: "an-model" }, "Model"), h("input", { id: "an-model", list: "an-models", value: analyticsFilters.model, placeholder: "all" })),
      h("div", {}, h("label", { for: "an-provider" }, "Provider"), h("input", { id: "an-provider", value: analyticsFilters.provider, placeholder: "all" }))),
    h("datalist", { id: "an-models" }),
    h("div", { class: "actions" }, h("button", { id: "an-apply", type: "submit", text: "Apply" }), csv));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    analyticsFilters.range = form.querySelector("#an-range").value;
    analyticsFilters.group = form.querySelector("#an-group").value;
    analyticsFilters.model = form.querySelector("#an-model").value.trim();
    analyticsFilters.provider = form.querySelector("#an-provider").value.trim();
    onApply();
  });
  if (can("models:read")) {
    api("GET", "/admin/models").then((models) => form.querySelector("#an-models")
      .replaceChildren(...models.data.map((m) => h("option", { value: m.name })))).catch(() => {});
  }
  return { form, csv };
}

async function renderAnalytics(main) {
  const error = errorBox();
  const results = h("div", { id: "an-results" });
  const { form, csv } = analyticsFilterCard(() => load());
  main.append(form, error, results);
  async function load() {
    error.textContent = "";
    const { series, filters, slots, bucket } = analyticsQuery();
    csv.setAttribute("href", "/admin/usage/export?" + filters);
    results.replaceChildren(h("p", { class: "muted", text: "Loading…" }));
    try {
      const [answer, names] = await Promise.all([api("GET", "/admin/usage/series?" + series), groupNames(analyticsFilters.group)]);
      results.replaceChildren(...analyticsResults(answer.data, slots, bucket, names));
    } catch (e) {
      results.replaceChildren();
      show(error, e);
    }
  }
  await load();
}

function analyticsResults(points, slots, bucket, names) {
  const index = new Map(slots.map((t, i) => [t, i]));
  const width = bucket === "hour" ? 3600000 : 86400000;
  const slotOf = (p) => index.get(Math.floor(Date.parse(p.time) / width) * width);
  const label = (group) => (group === "" ? "all" : names.get(group) || group);
  // The groups with the most requests get a line each; the rest are summed as "others".
  const totals = new Map();
  for (const p of points) totals.set(p.group, (totals.get(p.group) || 0) + p.requests);
  const ranked = [...totals.entries()].sort((a, b) => b[1] - a[1]).map(([g]) => g);
  const shown = ranked.slice(0, MOST_GROUPS);
  const line = (group, valueOf, empty) => {
    const values = slots.map(() => empty);
    for (const p of points) {
      const i = slotOf(p);
      if (i === undefined || (group !== null && p.group !== group) || (group === null && shown.includes(p.group))) continue;
      const v = valueOf(p);
      values[i] = empty === null ? v : (values[i] || 0) + v;
    }
    return values;
  };
  const counted = (valueOf) => {
    const lines = shown.map((g) => ({ name: label(g), values: line(g, valueOf, 0) }));
    if (ranked.length > MOST_GROUPS) lines.push({ name: "others", values: line(null, valueOf, 0) });
    return lines;
  };
  const percentile = (valueOf) => shown.map((g) => ({ name: label(g), values: line(g, valueOf, null) }));
  const sum = (valueOf) => points.reduce((s, p) => s + valueOf(p), 0);
  const highest = (valueOf) => {
    const values = points.map(valueOf).filter((v) => v !== null);
    return values.length ? Math.max(...values) : null;
  };
  const per = bucket === "hour" ? "hour" : "day";
  const tiles = h("div", { id: "an-tiles", class: "tiles" }, [
    ["Requests", integer(sum((p) => p.requests)), "an-total-requests"],
    ["Errors", integer(sum((p) => p.errors)), "an-total-errors"],
    ["Tokens", integer(sum((p) => p.prompt_tokens + p.completion_tokens)), "an-total-tokens"],
    ["Cost", money(sum((p) => p.cost_usd)), "an-total-cost"],
    [`Latency p95 (worst ${per})`, millis(highest((p) => p.latency_ms.p95)), "an-worst-latency"],
    [`TTFT p95 (worst ${per})`, millis(highest((p) => p.ttft_ms.p95)), "an-worst-ttft"],
  ].map(([title, value, id]) => h("div", { class: "tile" }, h("span", { class: "muted", text: title }), h("strong", { id, text: value }))));
  if (!points.length) {
    return [tiles, h("p", { id: "an-empty", class: "card muted", text: "No requests in this period." })];
  }
  const charts = h("div", { class: "card charts" },
    lineChart("an-chart-requests", `Requests per ${per}`, slots, counted((p) => p.requests), integer),
    lineChart("an-chart-tokens", `Tokens per ${per} (prompt + completion)`, slots, counted((p) => p.prompt_tokens + p.completion_tokens), integer),
    lineChart("an-chart-cost", `Cost per ${per}`, slots, counted((p) => p.cost_usd), (v) => "$" + v.toFixed(v < 1 ? 4 : 2)),
    lineChart("an-chart-latency", "Latency p95", slots, percentile((p) => p.latency_ms.p95), millis),
    lineChart("an-chart-ttft", "Time to first token p95 (streams)", slots, percentile((p) => p.ttft_ms.p95), millis));
  const rows = points.map((p) => h("tr", {},
    h("td", { text: fmt(p.time) }), h("td", { text: label(p.group) }), h("td", { text: p.requests }), h("td", { text: p.errors }),
    h("td", { text: p.prompt_tokens + p.completion_tokens }), h("td", { text: money(p.cost_usd) }),
    h("td", { text: millis(p.latency_ms.p50) }), h("td", { text: millis(p.latency_ms.p95) }), h("td", { text: millis(p.ttft_ms.p95) })));
  return [tiles, charts, h("div", { class: "card" }, h("h2", { text: "By " + per }),
    h("div", { id: "an-table" }, table(["Time", "Group", "Requests", "Errors", "Tokens", "Cost", "Latency p50", "Latency p95", "TTFT p95"], rows)))];
}

// ---- chat playground (SPEC §20, issue 31) ---------------------------------------------------
// Streams through the gateway's own /v1 with a key the user pastes (or creates for an hour):
// the key stays in this page's memory, is sent only to /v1, and is never stored or shown.

let playgroundKey = "";
const playgroundMessages = [];

async function renderPlayground(main) {
  const error = errorBox();
  const keyField = h("input", { id: "pg-key", type: "password", autocomplete: "off", spellcheck: "false", placeholder: "ctx_…", value: playgroundKey });
  keyField.addEventListener("input", () => { playgroundKey = keyField.value.trim(); });
  const models = h("datalist", { id: "pg-models" });
  const model = h("input", { id: "pg-model", list: "pg-models", value: "", placeholder: "model name" });
  const setup = h("div", { class: "card" }, h("h2", { text: "Key and model" }),
    h("div", { class: "grid" },
      h("div", {}, h("label", { for: "pg-key" }, "API key (kept in this page only)"), keyField),
      h("div", {}, h("label", { for: "pg-model" }, "Model"), model, models)));
  if (can("keys:write_own", "keys:write_all")) {
    setup.append(h("button", { id: "pg-new-key", type: "button", class: "secondary", text: "Create a key for one hour", onclick: async () => {
      try {
        const created = await api("POST", "/admin/keys", { name: "playground", scopes: ["chat"], expires_at: new Date(Date.now() + 3600000).toISOString() });
        playgroundKey = created.key;
        keyField.value = created.key;
        toast("A chat key valid for one hour is in the field.");
      } catch (e) { show(error, e); }
    } }));
  }
  const messages = h("div", { id: "pg-messages", class: "messages", "aria-live": "polite" });
  const input = h("textarea", { id: "pg-input", rows: 3, placeholder: "Ask something…" });
  const stats = h("p", { id: "pg-stats", class: "muted" },
    "TTFT ", h("strong", { id: "pg-ttft", text: "—" }), " · ", h("strong", { id: "pg-tps", text: "—" }), " tokens/s · ",
    h("strong", { id: "pg-tokens", text: "—" }), " tokens");
  const stop = h("button", { id: "pg-stop", type: "button", class: "secondary", disabled: true, text: "Stop" });
  const send = h("button", { id: "pg-send", type: "submit", text: "Send" });
  const form = h("form", { id: "pg-form", class: "card" }, h("h2", { text: "Chat" }), messages,
    h("label", { for: "pg-input" }, "Message"), input, stats,
    h("div", { class: "actions" }, send, stop,
      h("button", { id: "pg-clear", type: "button", class: "secondary", text: "Clear", onclick: () => { playgroundMessages.length = 0; messages.replaceChildren(); } })));
  for (const m of playgroundMessages) messages.append(h("div", { class: "msg " + m.role, text: m.content }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const text = input.value.trim();
    if (!playgroundKey) { error.textContent = "Paste an API key first."; return; }
    if (!model.value.trim()) { error.textContent = "Choose a model."; return; }
    if (!text) return;
    input.value = "";
    send.disabled = true;
    stop.disabled = false;
    const controller = new AbortController();
    stop.onclick = () => controller.abort();
    try {
      await playgroundStream(model.value.trim(), text, messages, controller.signal);
    } catch (e) {
      if (e.name !== "AbortError") error.textContent = e.message || "The request failed.";
    } finally {
      send.disabled = false;
      stop.disabled = true;
    }
  });
  main.append(setup, error, form);
  try {
    const listed = can("models:read") ? (await api("GET", "/admin/models")).data : [];
    models.replaceChildren(...listed.map((m) => h("option", { value: m.name })));
    if (listed.length && !model.value) model.value = listed[0].name;
  } catch (_) { /* the name is typed instead */ }
}

// Sends the conversation with `text` added, streams the answer into a new bubble, and shows
// the time to the first token and the tokens per second as they come.
async function playgroundStream(model, text, messages, signal) {
  playgroundMessages.push({ role: "user", content: text });
  messages.append(h("div", { class: "msg user", text }));
  const answer = h("div", { class: "msg assistant", "data-state": "streaming", id: "pg-answer-" + playgroundMessages.length });
  messages.append(answer);
  const ttftField = document.getElementById("pg-ttft");
  const tpsField = document.getElementById("pg-tps");
  const tokensField = document.getElementById("pg-tokens");
  for (const field of [ttftField, tpsField, tokensField]) field.textContent = "…";
  const started = performance.now();
  let first = null, chunks = 0, usage = null;
  const rate = (tokens) => {
    const seconds = (performance.now() - first) / 1000;
    return seconds > 0 ? (tokens / seconds).toFixed(1) : "—";
  };
  const response = await fetch("/v1/chat/completions", {
    method: "POST", credentials: "omit", signal,
    headers: { Authorization: "Bearer " + playgroundKey, "Content-Type": "application/json" },
    body: JSON.stringify({ model, messages: playgroundMessages, stream: true, stream_options: { include_usage: true } }),
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    answer.remove();
    playgroundMessages.pop();
    throw new Error((body.error && body.error.message) || `The gateway answered ${response.status}.`);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", done = false;
  while (!done) {
    const { value, done: ended } = await reader.read();
    if (ended) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") { done = true; continue; }
        let chunk;
        try { chunk = JSON.parse(data); } catch (_) { continue; }
        if (chunk.usage) usage = chunk.usage;
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta && chunk.choices[0].delta.content;
        if (!delta) continue;
        if (first === null) {
          first = performance.now();
          ttftField.textContent = `${Math.round(first - started)} ms`;
        }
        chunks++;
        answer.append(document.createTextNode(delta));
        tokensField.textContent = String(chunks);
        tpsField.textContent = rate(chunks);
      }
    }
  }
  const tokens = usage && usage.completion_tokens ? usage.completion_tokens : chunks;
  tokensField.textContent = String(tokens);
  tpsField.textContent = first === null ? "—" : rate(tokens);
  if (first === null) ttftField.textContent = "—";
  answer.setAttribute("data-state", "done");
  playgroundMessages.push({ role: "assistant", content: answer.textContent });
}

// Analytics and the playground go before Account, which stays last in the navigation.
{
  const account = views.account;
  delete views.account;
  views.analytics = { title: "Analytics", visible: () => can("usage:read_own", "usage:read_all"), render: renderAnalytics };
  views.playground = { title: "Playground", visible: () => true, render: renderPlayground };
  views.account = account;
}

// ---- gateway policies (SPEC §21, issue 32) --------------------------------------------------
// The response cache and guardrails of an organization, a model or a key, and the guardrail
// events they caused. Events carry names and counts only: the API never returns matched text,
// so there is none to show. Webhook URLs are not listed (one may carry a token in its query).

const DETECTORS = { secrets: "Secrets", pii: "Personal data", regex: "Custom pattern", webhook: "Webhook" };
const GUARD_ACTIONS = ["block", "redact", "log"];
const PII_KINDS = { email: "Email", phone: "Phone", payment_card: "Payment card", iban: "IBAN", us_ssn: "US SSN" };
let ruleSerial = 0;

// "secrets→block, pii (email)→redact, regex ticket→log".
function ruleSummary(policy) {
  const rules = (policy.guardrails && policy.guardrails.rules) || [];
  if (!rules.length) return policy.guardrails ? "—" : "none";
  return rules.map((rule) => {
    const d = rule.detector || {};
    let name = String(d.type);
    if (d.type === "pii" && d.kinds && d.kinds.length) name += " (" + d.kinds.join(", ") + ")";
    if (d.type === "regex") name += " " + d.name;
    return name + "→" + rule.action;
  }).join(", ");
}

// One rule of the create form: a detector, an action and the detector's own fields.
function ruleRow() {
  const n = ++ruleSerial;
  const id = (name) => "rule-" + n + "-" + name;
  const fields = h("div", { class: "grid rule-fields" });
  const detector = h("select", { id: id("detector"), name: "detector" },
    Object.entries(DETECTORS).map(([value, text]) => h("option", { value, text })));
  const action = h("select", { id: id("action"), name: "action" }, GUARD_ACTIONS.map((a) => h("option", { value: a, text: a })));
  const input = (name, label, attrs) => h("div", {}, h("label", { for: id(name) }, label),
    h("input", Object.assign({ id: id(name), name, autocomplete: "off" }, attrs || {})));
  const draw = () => {
    const type = detector.value;
    if (type === "pii") {
      fields.replaceChildren(h("div", {}, h("span", { class: "muted", text: "Kinds (none ticked: every kind) " }),
        Object.entries(PII_KINDS).map(([value, text]) => h("label", { class: "inline" },
          h("input", { type: "checkbox", name: "kind", value }), " " + text + " "))));
    } else if (type === "regex") {
      fields.replaceChildren(input("name", "Label (in [REDACTED:label])"), input("pattern", "Pattern"));
    } else if (type === "webhook") {
      fields.replaceChildren(input("url", "URL", { type: "url" }), input("timeout", "Timeout (ms, default 1000)", { inputmode: "numeric" }),
        h("div", {}, h("label", { class: "inline" }, h("input", { type: "checkbox", name: "fail_open" }), " Let requests through when it does not answer")));
    } else fields.replaceChildren();
  };
  detector.addEventListener("change", draw);
  draw();
  const row = h("fieldset", { class: "rule", "data-rule": n }, h("legend", { text: "Rule" }),
    h("div", { class: "grid" },
      h("div", {}, h("label", { for: id("detector") }, "Detector"), detector),
      h("div", {}, h("label", { for: id("action") }, "Action"), action)),
    fields,
    h("button", { type: "button", class: "secondary", "data-action": "remove-rule", onclick: () => row.remove() }, "Remove rule"));
  return row;
}

// A number field as the API reads it: digits as a number, anything else as typed, so the
// API's error names the field.
const numberOrText = (text) => (/^\d+$/.test(text) ? Number(text) : text);

function ruleBody(row) {
  const value = (name) => (row.querySelector("[name=" + name + "]") || { value: "" }).value;
  const type = value("detector");
  const detector = { type };
  if (type === "pii") {
    const kinds = [...row.querySelectorAll("[name=kind]:checked")].map((c) => c.value);
    if (kinds.length) detector.kinds = kinds;
  } else if (type === "regex") {
    detector.name = value("name").trim();
    detector.pattern = value("pattern");
  } else if (type === "webhook") {
    detector.url = value("url").trim();
    if (value("timeout").trim()) detector.timeout_ms = numberOrText(value("timeout").trim());
    detector.fail_open = row.querySelector("[name=fail_open]").checked;
  }
  return { detector, action: value("action") };
}

async function policyForm(done) {
  const error = errorBox();
  const rules = h("div", { id: "policy-rules" });
  const form = h("form", { id: "policy-form" },
    h("div", { class: "grid" },
      await userOrgField("policy-org"),
      h("div", {}, h("label", { for: "policy-scope" }, "Applies to"), h("select", { id: "policy-scope" },
        h("option", { value: "organization", text: "the organization" }), h("option", { value: "model", text: "a model" }),
        h("option", { value: "key", text: "a key" }))),
      h("div", {}, h("label", { for: "policy-target" }, "Target (model name or key id)"), h("input", { id: "policy-target", autocomplete: "off" })),
      h("div", {}, h("label", { for: "policy-ttl" }, "Cache answers for (seconds, empty: no cache)"), h("input", { id: "policy-ttl", inputmode: "numeric", autocomplete: "off" })),
      h("div", {}, h("label", { class: "inline" }, h("input", { type: "checkbox", id: "policy-nonzero" }), " Cache answers sampled at temperature > 0 too"))),
    h("h3", { text: "Guardrails" }),
    h("p", { class: "muted", text: "No rules: no guardrails. A policy with neither cache nor rules turns both off for its scope." }),
    rules,
    h("button", { type: "button", class: "secondary", id: "policy-add-rule", onclick: () => rules.append(ruleRow()) }, "Add rule"),
    h("div", {}, h("label", { class: "inline" }, h("input", { type: "checkbox", id: "policy-scan-responses", checked: true }), " Scan answers too, not only requests")),
    error,
    h("button", { type: "submit", id: "policy-submit" }, "Create policy"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const body = { scope: form.querySelector("#policy-scope").value };
    if (form.querySelector("#policy-org")) body.org_id = form.querySelector("#policy-org").value;
    const target = form.querySelector("#policy-target").value.trim();
    if (target) body.target = target;
    const ttl = form.querySelector("#policy-ttl").value.trim();
    if (ttl) body.cache = { ttl_seconds: numberOrText(ttl), cache_nonzero_temperature: form.querySelector("#policy-nonzero").checked };
    const rows = [...rules.querySelectorAll("fieldset.rule")];
    if (rows.length) body.guardrails = { rules: rows.map(ruleBody), scan_responses: form.querySelector("#policy-scan-responses").checked };
    try {
      await api("POST", "/admin/policies", body);
      toast("Policy created");
      await done();
    } catch (e) { show(error, e); }
  });
  return form;
}

const SCOPE_NAMES = { organization: "Organization", model: "Model", key: "Key" };

async function renderPolicies(main) {
  const error = errorBox();
  const writable = can("policies:write");
  main.append(error);
  try {
    const policies = (await api("GET", "/admin/policies")).data;
    const rows = policies.map((p) => h("tr", { "data-policy": p.id, "data-scope": p.scope },
      h("td", { text: SCOPE_NAMES[p.scope] || p.scope }),
      h("td", { class: "muted", text: p.target }),
      h("td", { "data-col": "cache", text: p.cache ? p.cache.ttl_seconds + " s" + (p.cache.cache_nonzero_temperature ? " (any temperature)" : "") : "off" }),
      h("td", { "data-col": "rules", text: ruleSummary(p) }),
      h("td", { text: p.guardrails ? (p.guardrails.scan_responses ? "requests and answers" : "requests") : "—" }),
      h("td", {}, writable ? h("button", { type: "button", class: "danger", "data-action": "delete",
        onclick: () => remove("/admin/policies/", { id: p.id, name: (SCOPE_NAMES[p.scope] || p.scope) + " policy " + p.target }) }, "Delete") : null)));
    main.append(h("div", { class: "card" }, h("h2", { text: "Policies" }),
      h("p", { class: "muted", text: "A request takes its key's policy, else its model's, else its organization's: whole, never merged." }),
      policies.length ? table(["Scope", "Target", "Cache", "Guardrails", "Scans", ""], rows) : h("p", { class: "muted", id: "no-policies", text: "No policies yet." })));
    if (writable) main.append(h("div", { class: "card" }, h("h2", { text: "Create a policy" }), await policyForm(route)));
  } catch (e) {
    show(error, e);
  }
  await renderCache(main, writable);
  if (!can("audit:read")) return;
  const eventsError = errorBox();
  const events = h("div", { id: "guardrail-events" });
  main.append(h("div", { class: "card" }, h("h2", { text: "Recent guardrail events" }),
    h("p", { class: "muted", text: "What was found and what was done: detector and label, never the text." }), eventsError, events));
  try {
    const list = (await api("GET", "/admin/guardrails/events?limit=50")).data;
    events.replaceChildren(list.length
      ? table(["Time", "Action", "Detector", "Label", "Count", "Direction", "Model", "Key"], list.map((e) => h("tr", { "data-event": e.id },
        h("td", { text: fmt(e.at) }), h("td", { "data-col": "action", text: e.action }), h("td", { "data-col": "detector", text: e.detector }),
        h("td", { "data-col": "label", text: e.label }), h("td", { text: e.count }), h("td", { text: e.direction }),
        h("td", { text: e.model }), h("td", { class: "muted", text: e.key_id }))))
      : h("p", { class: "muted", text: "No guardrail events yet." }));
  } catch (e) { show(eventsError, e); }
}

// The response cache as this instance sees it, and a purge of the organization's entries.
async function renderCache(main, writable) {
  const error = errorBox();
  const card = h("div", { class: "card" }, h("h2", { text: "Response cache" }), error);
  main.append(card);
  try {
    const c = await api("GET", "/admin/cache");
    const stat = (name, value) => h("td", { "data-stat": name, text: value === null ? "—" : String(value) });
    card.append(
      h("p", { class: "muted", text: "Backend " + c.backend + "; counters since this instance started." }),
      h("div", { id: "cache-stats" }, table(["Entries", "Bytes", "Bound", "Hits", "Misses", "Stores", "Evictions"], [h("tr", {},
        stat("entries", c.entries), stat("bytes", c.bytes), stat("max_bytes", c.max_bytes), stat("hits", c.hits),
        stat("misses", c.misses), stat("stores", c.stores), stat("evictions", c.evictions))])));
    if (writable) card.append(h("button", { type: "button", class: "danger", id: "cache-purge", onclick: async () => {
      if (!confirm("Purge this organization's cached answers?")) return;
      try { const done = await api("DELETE", "/admin/cache"); toast("Purged " + done.purged); await route(); } catch (e) { toast(e.message); }
    } }, "Purge the organization's entries"));
  } catch (e) { show(error, e); }
}

// Policies go before Account, which stays last in the navigation.
{
  const account = views.account;
  delete views.account;
  views.policies = { title: "Policies", visible: () => can("policies:read"), render: renderPolicies };
  views.account = account;
}

// ---- shell -----------------------------------------------------------------------------

function navigation(current) {
  const nav = document.getElementById("nav");
  nav.replaceChildren(...Object.entries(views).filter(([, v]) => v.visible()).map(([name, v]) =>
    h("a", { href: "#/" + name, "aria-current": name === current ? "page" : false, text: v.title })));
}

async function route() {
  const main = document.getElementById("main");
  const name = (location.hash.replace(/^#\//, "") || "keys").split("?")[0];
  if (me.must_change_password || name === "password") {
    navigation(null);
    main.replaceChildren(h("h1", { text: "Change your password" }), passwordForm(true));
    return;
  }
  if (me.mfa_required && !me.mfa_enabled && name !== "account") {
    location.hash = "#/account";
    return;
  }
  const view = views[name] && views[name].visible() ? views[name] : views.account;
  const key = Object.keys(views).find((k) => views[k] === view);
  navigation(key);
  main.replaceChildren(h("h1", { text: view.title }));
  await view.render(main);
  document.title = view.title + " · Cortex";
}

document.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("logout").addEventListener("click", async () => {
    // A single sign-on session ends at the identity provider too, when it says where.
    let next = "/ui/login";
    try {
      const answer = await api("POST", "/admin/auth/logout");
      if (answer.end_session_url) next = answer.end_session_url;
    } finally { window.location.assign(next); }
  });
  try {
    me = await api("GET", "/admin/me");
  } catch (_) {
    return;
  }
  document.getElementById("whoami").textContent = `${me.username} (${me.role})`;
  window.addEventListener("hashchange", () => route());
  await route();
});
