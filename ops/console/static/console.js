// The console page: polls the JSON API every two seconds; every text goes in through textContent.
"use strict";

const POLL_MS = 2000;
const PAGE_SIZE = 50;
const STATES = ["expected", "seen", "verified", "created", "precopied", "precopying", "copying", "copied", "switching", "completed", "swept", "failed"];
const GENERAL_LABELS = {
  source_host: "Source host", source_protocol: "Source protocol", source_tls: "TLS/SSL",
  migration_account: "Migration account", log_file: "Log file", access_mode: "Access mode",
  domains: "Multi domain migration (IP → domain)", passwords_only: "Migrate passwords only",
  post_migrate_script: "Post migrate script", primary_domain: "Primary domain",
};

let csrfToken = null;
let currentTab = "general";
let accountFilter = { state: "", q: "", offset: 0 };
let openAccount = null;
let logNext = null;
let pollTimer = null;

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) tr.appendChild(cell instanceof Node ? cell : el("td", cell));
  return tr;
}

function td(text, cls) { return el("td", text, cls); }
function stateCell(state, shown) { const cell = el("td"); cell.appendChild(el("span", shown || state, `state ${state}`)); return cell; }
function mb(bytes) { return (bytes / 1e6).toLocaleString(undefined, { maximumFractionDigits: 1, minimumFractionDigits: 1 }); }
function when(iso) { return iso ? iso.replace("T", " ").slice(0, 19) : ""; }
function duration(seconds) {
  if (seconds === null || seconds === undefined) return "?";
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  return h ? `${h} h ${m} min` : m ? `${m} min ${s} s` : `${s} s`;
}

function age(iso) {
  return duration(Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000)));
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (options.method === "POST" && csrfToken) headers["X-CSRF-Token"] = csrfToken;
  const response = await fetch(path, Object.assign({}, options, { headers, credentials: "same-origin" }));
  if (response.status === 401 && path !== "/api/login") { showLogin(); throw new Error("log in first"); }
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new Error(body && body.error ? body.error : `HTTP ${response.status}`);
  return body;
}

function postJson(path, data) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(data || {}) });
}

// Login

function showLogin() {
  csrfToken = null;
  if (pollTimer) { clearInterval(pollTimer); pollTimer = null; }
  $("console-view").hidden = true;
  $("login-view").hidden = false;
  $("login-password").focus();
}

function showConsole() {
  $("login-view").hidden = true;
  $("console-view").hidden = false;
  loadGeneral();
  refresh();
  if (!pollTimer) pollTimer = setInterval(refresh, POLL_MS);
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const field = $("login-password");
  $("login-error").textContent = "";
  try {
    const answer = await postJson("/api/login", { password: field.value });
    csrfToken = answer.csrf_token;
    field.value = "";
    showConsole();
  } catch (error) {
    field.value = "";
    $("login-error").textContent = error.message;
  }
});

$("btn-logout").addEventListener("click", async () => {
  try { await api("/api/logout", { method: "POST" }); } finally { showLogin(); }
});

// Run buttons

for (const [id, button] of [["btn-start", "start"], ["btn-stop", "stop"], ["btn-finish", "finish"]]) {
  $(id).addEventListener("click", async () => {
    $("action-error").textContent = "";
    try {
      const answer = await api(`/api/run/${button}`, { method: "POST" });
      showRunState(answer.state);
      refresh();
    } catch (error) {
      $("action-error").textContent = error.message;
    }
  });
}

function showRunState(state) {
  const badge = $("run-state");
  badge.textContent = state;
  badge.className = `state ${state}`;
  $("btn-start").disabled = state === "started";
  $("btn-stop").disabled = state === "stopped";
  $("btn-finish").disabled = state === "finishing";
}

// Tabs

for (const button of document.querySelectorAll("nav button")) {
  button.addEventListener("click", () => {
    currentTab = button.dataset.tab;
    for (const other of document.querySelectorAll("nav button")) other.classList.toggle("active", other === button);
    for (const tab of document.querySelectorAll(".tab")) tab.hidden = tab.id !== `tab-${currentTab}`;
    refresh();
  });
}

// General

async function loadGeneral() {
  const settings = await api("/api/general");
  const body = $("general-table").querySelector("tbody");
  body.replaceChildren();
  for (const [key, value] of Object.entries(settings)) {
    let text = value;
    if (typeof value === "boolean") text = value ? "yes" : "no";
    else if (value && typeof value === "object") {
      text = Object.entries(value).map(([ip, domain]) => `${ip} → ${domain}`).join(", ") || "off";
    } else if (value === "") text = "—";
    body.appendChild(row([el("th", GENERAL_LABELS[key] || key), td(text)]));
  }
}

// Progress and run state

function showProgress(run) {
  showRunState(run.state);
  const p = run.progress;
  const r = run.roster;
  // With a roster the accounts never seen have no size yet: the bar counts accounts.
  const share = r ? r.done / r.accounts : p.bytes_planned > 0 ? p.bytes_done / p.bytes_planned
    : p.accounts_total > 0 ? p.accounts_done / p.accounts_total : 0;
  $("progress-fill").style.width = `${Math.min(100, share * 100).toFixed(1)}%`;
  const rate = p.bytes_per_second > 0 ? `${mb(p.bytes_per_second)} MB/s, ${p.messages_per_second.toFixed(1)} msg/s` : "idle";
  const eta = p.eta_seconds === 0 ? "done" : p.bytes_per_second > 0 ? duration(p.eta_seconds) : "?";
  const accounts = r
    ? `${r.done} of ${r.accounts} roster accounts done (${r.in_progress} in progress, ${r.failed} failed, ` +
      `${r.not_seen} not seen yet) · `
    : `${p.accounts_done} of ${p.accounts_total} accounts done (${p.accounts_failed} failed) · `;
  $("progress-text").textContent = accounts +
    `${mb(p.bytes_done)} of ${mb(p.bytes_planned)} MB · ${p.messages_done.toLocaleString()} messages · ` +
    `rate ${rate} · ETA ${eta}`;
}

// Accounts

function showCounts(counts) {
  const chips = $("state-counts");
  chips.replaceChildren();
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  for (const state of [""].concat(STATES)) {
    const chip = el("button", `${state || "all"} ${state ? counts[state] || 0 : total}`);
    chip.type = "button";
    chip.dataset.state = state;
    chip.classList.toggle("active", accountFilter.state === state);
    chip.addEventListener("click", () => { accountFilter.state = state; accountFilter.offset = 0; loadAccounts(); });
    chips.appendChild(chip);
  }
}

async function loadAccounts() {
  const params = new URLSearchParams({ offset: accountFilter.offset, limit: PAGE_SIZE });
  if (accountFilter.state) params.set("state", accountFilter.state);
  if (accountFilter.q) params.set("q", accountFilter.q);
  const page = await api(`/api/accounts?${params}`);
  showCounts(page.counts);
  const body = $("accounts-body");
  body.replaceChildren();
  for (const a of page.accounts) {
    const tr = row([
      td(a.login), stateCell(a.state), td(a.locked ? "yes" : "no"),
      td(a.folders, "num"), td(a.messages.toLocaleString(), "num"), td(mb(a.bytes), "num"),
      td(when(a.started_at)), td(when(a.completed_at)), td(a.error || "", "error-cell"),
    ]);
    tr.dataset.login = a.login;
    tr.addEventListener("click", () => openDetail(a.login));
    body.appendChild(tr);
  }
  const last = Math.min(page.offset + page.accounts.length, page.total);
  $("page-info").textContent = page.total ? `${page.offset + 1}–${last} of ${page.total}` : "no accounts yet";
  $("page-prev").disabled = page.offset === 0;
  $("page-next").disabled = last >= page.total;
  if (openAccount) await loadDetail();
}

$("account-search").addEventListener("input", (event) => {
  accountFilter.q = event.target.value.trim();
  accountFilter.offset = 0;
  loadAccounts();
});
$("page-prev").addEventListener("click", () => { accountFilter.offset = Math.max(0, accountFilter.offset - PAGE_SIZE); loadAccounts(); });
$("page-next").addEventListener("click", () => { accountFilter.offset += PAGE_SIZE; loadAccounts(); });
$("detail-close").addEventListener("click", () => { openAccount = null; $("account-detail").hidden = true; });

async function openDetail(login) {
  openAccount = login;
  await loadDetail();
  $("account-detail").hidden = false;
  $("account-detail").scrollIntoView({ block: "nearest" });
}

async function loadDetail() {
  const login = encodeURIComponent(openAccount);
  const [doc, history] = await Promise.all([api(`/api/accounts/${login}`), api(`/api/accounts/${login}/history`)]);
  $("detail-title").textContent = doc.login;
  const summary = $("detail-summary").querySelector("tbody");
  summary.replaceChildren();
  for (const key of ["state", "locked", "redirect", "target_login", "aliases", "attempts", "logins", "first_seen",
                     "verified_at", "started_at", "completed_at", "swept_at", "engine", "identity", "error"]) {
    let value = doc[key];
    if (Array.isArray(value)) value = value.join(", ") || "—";
    else if (typeof value === "boolean") value = value ? "yes" : "no";
    else if (value === null || value === undefined) value = "—";
    summary.appendChild(row([el("th", key.replace(/_/g, " ")), td(key.endsWith("_at") || key === "first_seen" ? when(value) || "—" : value)]));
  }
  for (const conflict of doc.alias_conflicts || []) {
    summary.appendChild(row([el("th", "alias not applied"), td(`${conflict.address} (${conflict.reason})`)]));
  }
  if (doc.password_pending || ["precopied", "precopying"].includes(doc.state)) {
    // A pre-copy is only as fresh as its last pass: the admin sees how old it is, and whether anyone can use it yet.
    const asOf = doc.precopy_refreshed_at || doc.precopied_at;
    const usable = doc.password_pending ? "; unusable until the owner logs in" : "";
    summary.appendChild(row([el("th", "pre-copied"),
      td(`${doc.messages.toLocaleString()} messages, ${mb(doc.bytes)} MB; copy as of ${when(asOf)} ` +
         `(${age(asOf)} old)${usable}`)]));
  }
  const filters = doc.filters;
  if (filters) {
    const moved = filters.not_offered ? `NOT moved: ${filters.not_offered}`
      : `${filters.scripts.map((s) => s.name).join(", ") || "none"}; active: ${filters.active || "none"}`;
    summary.appendChild(row([el("th", "sieve scripts"), td(moved)]));
    for (const refused of filters.not_offered ? [] : filters.refused) {
      summary.appendChild(row([el("th", "sieve script refused"), td(`${refused.name} (${refused.reason})`)]));
    }
  }
  const folders = $("folders-body");
  folders.replaceChildren();
  for (const [name, f] of Object.entries(doc.folders).sort()) {
    folders.appendChild(row([td(name), td(f.target), td(f.messages.toLocaleString(), "num"), td(mb(f.bytes), "num"),
                             td(f.skipped, "num"), td(f.done ? "yes" : "no")]));
  }
  const events = $("history-body");
  events.replaceChildren();
  for (const e of history.events) {
    events.appendChild(row([td(when(e.at)), td(e.version, "num"), td(e.event), td(JSON.stringify(e.data))]));
  }
}

// Log

async function loadLog() {
  const query = logNext === null ? "tail=500" : `after=${logNext}`;
  const answer = await api(`/api/log?${query}`);
  logNext = answer.next;
  if (!answer.lines.length) return;
  const pre = $("log-lines");
  pre.appendChild(document.createTextNode(answer.lines.join("\n") + "\n"));
  if ($("log-follow").checked) pre.scrollTop = pre.scrollHeight;
}

// Manual

$("manual-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const login = $("manual-login"), password = $("manual-password");
  const data = { login: login.value, password: password.value };
  password.value = "";  // the password is sent once and never shown again
  $("manual-error").textContent = "";
  try {
    await postJson("/api/manual/migrate", data);
    login.value = "";
    loadJobs();
  } catch (error) {
    $("manual-error").textContent = error.message;
  }
});

$("bulk-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("bulk-file");
  $("manual-error").textContent = "";
  if (!input.files.length) return;
  try {
    await api("/api/manual/bulk", { method: "POST", headers: { "Content-Type": "text/plain; charset=utf-8" }, body: input.files[0] });
    input.value = "";
    loadJobs();
  } catch (error) {
    $("manual-error").textContent = error.message;
  }
});

async function loadJobs() {
  const answer = await api("/api/manual/jobs");
  const body = $("jobs-body");
  body.replaceChildren();
  for (const job of answer.jobs) {
    const share = job.total_bytes ? ` (${Math.round(100 * job.bytes / job.total_bytes)} %)` : "";
    const progress = job.state === "running"
      ? `${job.messages.toLocaleString()} / ${job.total_messages.toLocaleString()} messages${share}; now: ${job.current.join(", ")}`
      : `${job.accounts_done} done, ${job.accounts_failed} failed`;
    const results = job.outcomes.map((o) => `${o.login}: ${o.message}`).concat(job.problems).join("\n");
    const resultCell = td(results);
    resultCell.style.whiteSpace = "pre-line";
    body.appendChild(row([td(job.id), td(job.kind), stateCell(job.state === "done" ? "completed" : job.state === "running" ? "copying" : job.state, job.state),
                          td(job.logins.join(", ")), td(progress), resultCell]));
  }
}

// Polling

async function refresh() {
  try {
    showProgress(await api("/api/run"));
    if (currentTab === "accounts") await loadAccounts();
    else if (currentTab === "log") await loadLog();
    else if (currentTab === "manual") await loadJobs();
  } catch (error) {
    if (csrfToken) $("action-error").textContent = error.message;
  }
}

async function start() {
  try {
    const session = await api("/api/session");
    csrfToken = session.csrf_token;
    showConsole();
  } catch (error) {
    showLogin();
  }
}

start();
