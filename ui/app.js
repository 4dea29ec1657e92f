// The API keys page. One script for both audiences:
//   operator (served at /postscale/ui/ on Caddy's admin endpoint): finds
//     and pages through accounts, creates them, changes their plan and
//     limits, and manages any account's keys through the admin JSON API;
//   customer (served by postscale_portal): manages the signed-in
//     account's keys through the portal's api/ calls.
// State lives in memory only; nothing of it goes into the URL. A new key
// is put into its dialog and nowhere else, and cleared when the dialog
// closes.

const root = document.documentElement;
const MODE = root.dataset.mode === "operator" ? "operator" : "customer";
const API_URL = (root.dataset.apiUrl || "").replace(/\/+$/, "");
const DAY = 24 * 60 * 60 * 1000;
const STALE_AFTER = 30 * DAY;
const $ = (sel) => document.querySelector(sel);

// ---- calling the API ----

async function call(method, path, body) {
  const init = {
    method,
    headers: { "X-Postscale-CSRF": "1", "Accept": "application/json" },
    credentials: "same-origin",
    cache: "no-store",
    redirect: "error",
  };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    throw new Error("The server could not be reached. Check your connection and try again.");
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) {
    if (res.status === 401) throw new Error("You are signed out. Sign in again to manage API keys.");
    throw new Error((data && data.error) || `The server answered ${res.status}.`);
  }
  return data;
}

const enc = encodeURIComponent;

const api = MODE === "operator" ? {
  listAccounts: (after, q) => {
    const p = new URLSearchParams({ limit: "20" });
    if (after) p.set("after", after);
    if (q) p.set("q", q);
    return call("GET", `/postscale/accounts?${p}`);
  },
  createAccount: (req) => call("POST", "/postscale/accounts", req),
  getAccount: (id) => call("GET", `/postscale/accounts/${enc(id)}`),
  updateAccount: (id, req) => call("PATCH", `/postscale/accounts/${enc(id)}`, req),
  listKeys: (id) => call("GET", `/postscale/keys?account=${enc(id)}`),
  createKey: (id, req) => call("POST", "/postscale/keys", { ...req, account: id }),
  rollKey: (keyID, grace) => call("POST", `/postscale/keys/${enc(keyID)}/roll`, { expires_in: grace }),
  revokeKey: (keyID) => call("DELETE", `/postscale/keys/${enc(keyID)}`),
  usage: (id) => call("GET", `/postscale/accounts/${enc(id)}/usage`),
} : {
  listKeys: async () => {
    const r = await call("GET", "api/keys");
    $("#account-title").textContent = `Account ${r.account}`;
    return r.keys;
  },
  createKey: (_id, req) => call("POST", "api/keys", req),
  rollKey: (keyID, grace) => call("POST", `api/keys/${enc(keyID)}/roll`, { expires_in: grace }),
  revokeKey: (keyID) => call("POST", `api/keys/${enc(keyID)}/revoke`),
  usage: () => call("GET", "api/usage"),
};

// ---- state, in memory ----

const state = {
  account: null,     // the open account's id (operator) or the signed-in one
  keys: [],          // its key records (never a key itself)
  pages: [""],       // operator: the "after" of each account page visited
  query: "",
  next: "",
  acting: null,      // the key record a roll or revoke dialog is about
};

// ---- small helpers ----

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) e.append(c);
  return e;
}

function when(t) {
  if (!t) return "";
  const d = new Date(t);
  return `${d.toISOString().slice(0, 16).replace("T", " ")} UTC`;
}

const number = new Intl.NumberFormat("en");

function say(msg, isError = false) {
  const s = $("#status");
  s.textContent = msg;
  s.classList.toggle("error", isError);
}

function keyState(k, now = Date.now()) {
  if (k.revoked_at) return "revoked";
  if (k.expires_at && Date.parse(k.expires_at) <= now) return "expired";
  if (k.deprecated_at) return "rolled";
  return "active";
}

// A key is marked when it has not been used for 30 days (or, never used,
// was created more than 30 days ago).
function isStale(k, now = Date.now()) {
  const last = k.last_used_at || k.created_at;
  return now - Date.parse(last) > STALE_AFTER;
}

function keyLabel(k) {
  return `“${k.name}” (${k.redacted})`;
}

// Dialogs: showModal moves focus into the dialog and keeps it there;
// Escape and Cancel close it, and focus goes back where it was.
function openDialog(d, focus) {
  const opener = document.activeElement;
  d.querySelectorAll(".error").forEach((e) => { e.textContent = ""; });
  d.addEventListener("close", () => { if (opener && opener.isConnected) opener.focus(); }, { once: true });
  d.showModal();
  if (focus) focus.focus();
}

for (const d of document.querySelectorAll("dialog")) {
  for (const b of d.querySelectorAll("button.cancel")) b.addEventListener("click", () => d.close());
}

// busy disables a form's buttons while fn runs and shows its error in
// the form.
async function busy(form, fn) {
  const buttons = form.querySelectorAll("button");
  buttons.forEach((b) => { b.disabled = true; });
  const err = form.querySelector(".error");
  if (err) err.textContent = "";
  try {
    await fn();
  } catch (e) {
    if (err) err.textContent = e.message; else say(e.message, true);
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

// ---- accounts (operator) ----

async function loadAccounts() {
  const after = state.pages[state.pages.length - 1];
  const page = await api.listAccounts(after, state.query);
  const body = $("#account-table tbody");
  body.replaceChildren();
  for (const a of page.accounts) {
    body.append(el("tr", { "data-account-id": a.id },
      el("td", { "data-label": "Account" }, el("code", { text: a.id })),
      el("td", { "data-label": "Plan", text: a.plan }),
      el("td", { "data-label": "Created", text: when(a.created_at) }),
      el("td", { class: "actions-cell" }, el("div", { class: "actions" }, el("button", {
        type: "button", "data-action": "open-account", "aria-label": `Open account ${a.id}`,
        text: "Open", onclick: () => openAccount(a.id),
      }))),
    ));
  }
  $("#no-accounts").hidden = page.accounts.length > 0;
  state.next = page.next;
  $("#accounts-next").disabled = !page.next;
  $("#accounts-prev").disabled = state.pages.length < 2;
}

function showAccounts() {
  $("#account").hidden = true;
  $("#accounts").hidden = false;
  $("#where").textContent = "Operator view: every account on this gateway's store.";
  state.account = null;
  state.keys = [];
  $("#key-table tbody").replaceChildren();
}

async function openAccount(id) {
  state.account = id;
  $("#accounts").hidden = true;
  $("#account").hidden = false;
  $("#back-to-accounts").hidden = MODE !== "operator";
  $("#plan-form").hidden = MODE !== "operator";
  $("#account-title").textContent = MODE === "operator" ? `Account ${id}` : "Your account";
  say("");
  await Promise.all([refreshKeys(), refreshUsage(), MODE === "operator" ? fillPlanForm() : null]);
  $("#account-title").focus();
}

async function fillPlanForm() {
  const a = await api.getAccount(state.account);
  $("#plan-name").value = a.plan;
  $("#plan-rate").value = a.rate || "";
  $("#plan-burst").value = a.burst || "";
  $("#plan-quota").value = a.quota ? a.quota.count : "";
  $("#plan-period").value = a.quota ? a.quota.period : "month";
}

// ---- keys ----

async function refreshKeys() {
  state.keys = await api.listKeys(state.account);
  renderKeys();
}

function renderKeys() {
  const now = Date.now();
  const body = $("#key-table tbody");
  body.replaceChildren();
  for (const k of state.keys) {
    const st = keyState(k, now);
    const stale = st === "active" && isStale(k, now);
    const actions = el("div", { class: "actions" });
    if (st === "active") {
      actions.append(el("button", {
        type: "button", "data-action": "roll", "aria-label": `Roll key ${k.name}`, text: "Roll",
        onclick: () => askRoll(k),
      }));
    }
    if (st === "active" || st === "rolled") {
      actions.append(el("button", {
        type: "button", "data-action": "revoke", "aria-label": `Revoke key ${k.name}`, text: "Revoke",
        onclick: () => askRevoke(k),
      }));
    }
    let expires = k.expires_at ? when(k.expires_at) : "never";
    if (st === "rolled") expires = `${expires} (rolled ${when(k.deprecated_at)})`;
    body.append(el("tr", { "data-key-id": k.id, class: st === "active" || st === "rolled" ? "" : "inactive" },
      el("td", { "data-label": "Name", class: "key-name", text: k.name }),
      el("td", { "data-label": "Mode" }, el("span", { class: `mode-${k.mode}`, text: k.mode })),
      el("td", { "data-label": "Key" }, el("code", { class: "key-redacted", text: k.redacted })),
      el("td", { "data-label": "Created", text: when(k.created_at) }),
      el("td", { "data-label": "Last used", class: "key-last-used" },
        k.last_used_at ? when(k.last_used_at) : "never",
        stale ? el("span", { class: "badge stale", title: "Not used for 30 days or more", text: " unused 30+ days" }) : ""),
      el("td", { "data-label": "Requests", class: "num key-requests", text: number.format(k.requests || 0) }),
      el("td", { "data-label": "Expires", text: expires }),
      el("td", { "data-label": "State" }, el("span", { class: `badge state-${st} key-state`, text: st })),
      el("td", { class: "actions-cell" }, actions),
    ));
  }
  $("#no-keys").hidden = state.keys.length > 0;
}

// showKeyOnce puts a new key into its dialog, with a copy button and a
// curl line, and takes it out again when the dialog closes.
function showKeyOnce(created) {
  const d = $("#key-shown-dialog");
  const base = API_URL || "https://YOUR-GATEWAY";
  $("#new-key-value").value = created.key;
  $("#curl-line").value = `curl -H "Authorization: Bearer ${created.key}" ${base}/`;
  const rep = $("#key-shown-replaces");
  if (created.replaces) {
    const until = created.replaces.expires_at ? when(created.replaces.expires_at) : "";
    rep.textContent = `It replaces ${keyLabel(created.replaces)}, which keeps working until ${until}.`;
    rep.hidden = false;
  } else {
    rep.hidden = true;
  }
  $("#copy-status").textContent = "";
  d.addEventListener("close", forgetShownKey, { once: true });
  openDialog(d, $("#new-key-value"));
  $("#new-key-value").select();
}

// forgetShownKey takes the key out of the page: when its dialog is done
// with, and again when it closes (by Escape too).
function forgetShownKey() {
  $("#new-key-value").value = "";
  $("#curl-line").value = "";
  $("#copy-status").textContent = "";
}

async function copyFrom(input, what) {
  const status = $("#copy-status");
  try {
    await navigator.clipboard.writeText(input.value);
    status.textContent = `${what} copied.`;
  } catch {
    input.focus();
    input.select();
    status.textContent = `Press Ctrl+C (⌘C) to copy the selected ${what.toLowerCase()}.`;
  }
}

$("#copy-key").addEventListener("click", () => copyFrom($("#new-key-value"), "Key"));
$("#copy-curl").addEventListener("click", () => copyFrom($("#curl-line"), "Command"));
$("#key-shown-done").addEventListener("click", () => {
  forgetShownKey();
  $("#key-shown-dialog").close();
});

$("#create-key").addEventListener("click", () => {
  const f = $("#create-key-form");
  f.reset();
  openDialog($("#create-key-dialog"), $("#key-name"));
});

$("#create-key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const f = ev.currentTarget;
  busy(f, async () => {
    const req = { name: f.elements.name.value.trim(), mode: f.elements.mode.value };
    const scopes = f.elements.scopes.value.split(",").map((s) => s.trim()).filter(Boolean);
    if (scopes.length) req.scopes = scopes;
    if (f.elements.expiry.value) req.expires_at = `${f.elements.expiry.value}T00:00:00Z`;
    const created = await api.createKey(state.account, req);
    $("#create-key-dialog").close();
    await refreshKeys().catch((e) => say(e.message, true));
    say(`Created key ${keyLabel(created)}.`);
    showKeyOnce(created);
  });
});

function askRoll(k) {
  state.acting = k;
  $("#roll-text").textContent = `A new key replaces ${keyLabel(k)}, with the same name, mode and scopes.`;
  $("#roll-grace").value = "24h";
  openDialog($("#roll-dialog"), $("#roll-grace"));
}

$("#roll-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const k = state.acting;
  busy(ev.currentTarget, async () => {
    const created = await api.rollKey(k.id, $("#roll-grace").value);
    $("#roll-dialog").close();
    await refreshKeys().catch((e) => say(e.message, true));
    say(`Rolled ${keyLabel(k)}.`);
    showKeyOnce(created);
  });
});

function askRevoke(k) {
  state.acting = k;
  $("#revoke-title").textContent = `Revoke ${k.name}?`;
  $("#revoke-text").textContent = `Revoke ${keyLabel(k)}? Requests with it are refused at once. This cannot be undone.`;
  // Cancel first: Enter does not revoke by accident.
  openDialog($("#revoke-dialog"), $("#revoke-dialog button.cancel"));
}

$("#revoke-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const k = state.acting;
  busy(ev.currentTarget, async () => {
    await api.revokeKey(k.id);
    $("#revoke-dialog").close();
    await refreshKeys().catch((e) => say(e.message, true));
    say(`Revoked ${keyLabel(k)}.`);
  });
});

// ---- usage chart ----

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

async function refreshUsage() {
  const u = await api.usage(state.account);
  renderUsage(u);
}

function renderUsage(u) {
  const hours = u.hours || [];
  const admitted = hours.reduce((n, h) => n + h.admitted, 0);
  const refused = hours.reduce((n, h) => n + h.refused, 0);
  let summary = `Plan ${u.plan}. `;
  let pace = 0;
  if (u.quota) {
    summary += `Quota ${number.format(u.quota.count)} live requests a ${u.quota.period}: ` +
      `${number.format(u.live)} used, ${number.format(u.remaining)} left until ${when(u.period_end)}. `;
    const periodHours = (Date.parse(u.period_end) - Date.parse(u.period_start)) / 3600000;
    if (periodHours > 0) pace = u.quota.count / periodHours;
  } else {
    summary += `No quota; ${number.format(u.live)} live requests this month. `;
  }
  summary += `${number.format(u.test)} test requests. Last 48 hours: ${number.format(admitted)} admitted, ${number.format(refused)} refused.`;
  $("#usage-summary").textContent = summary;

  const W = 480, H = 170, left = 40, right = 8, top = 10, bottom = 22;
  const plotW = W - left - right, plotH = H - top - bottom;
  let max = Math.max(1, pace, ...hours.map((h) => h.admitted + h.refused));
  const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": "chart-title" });
  s.append(svg("title", { id: "chart-title" },
    `Requests per hour over the last 48 hours: ${admitted} admitted, ${refused} refused` +
    (pace ? `; the quota allows about ${Math.round(pace)} an hour` : "")));
  const y = (v) => top + plotH - (v / max) * plotH;
  const bw = plotW / Math.max(1, hours.length);
  hours.forEach((h, i) => {
    const x = left + i * bw + 0.5;
    const w = Math.max(1, bw - 1);
    const tip = `${when(h.hour)}: ${h.admitted} admitted, ${h.refused} refused`;
    if (h.admitted > 0) {
      const r = svg("rect", { class: "bar-admitted", x, y: y(h.admitted), width: w, height: top + plotH - y(h.admitted) });
      r.append(svg("title", {}, tip));
      s.append(r);
    }
    if (h.refused > 0) {
      const base = y(h.admitted);
      const r = svg("rect", { class: "bar-refused", x, y: base - (top + plotH - y(h.refused)), width: w, height: top + plotH - y(h.refused) });
      r.append(svg("title", {}, tip));
      s.append(r);
    }
  });
  s.append(svg("line", { class: "axis", x1: left, y1: top + plotH, x2: W - right, y2: top + plotH }));
  s.append(svg("line", { class: "axis", x1: left, y1: top, x2: left, y2: top + plotH }));
  s.append(svg("text", { x: left - 4, y: top + 8, "text-anchor": "end" }, number.format(Math.ceil(max))));
  s.append(svg("text", { x: left - 4, y: top + plotH, "text-anchor": "end" }, "0"));
  s.append(svg("text", { x: left, y: H - 6 }, "48 hours ago"));
  s.append(svg("text", { x: W - right, y: H - 6, "text-anchor": "end" }, "now"));
  if (pace) {
    s.append(svg("line", { class: "pace", x1: left, y1: y(pace), x2: W - right, y2: y(pace) }));
  }
  $("#chart").replaceChildren(s);
  $("#legend-pace").hidden = !pace;
}

// ---- operator forms ----

if (MODE === "operator") {
  $("#find-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.query = $("#find-q").value.trim();
    state.pages = [""];
    loadAccounts().catch((e) => say(e.message, true));
  });
  $("#accounts-next").addEventListener("click", () => {
    state.pages.push(state.next);
    loadAccounts().catch((e) => say(e.message, true));
  });
  $("#accounts-prev").addEventListener("click", () => {
    if (state.pages.length > 1) state.pages.pop();
    loadAccounts().catch((e) => say(e.message, true));
  });
  $("#back-to-accounts").addEventListener("click", () => {
    showAccounts();
    loadAccounts().catch((e) => say(e.message, true));
    $("#find-q").focus();
  });
  $("#new-account").addEventListener("click", () => {
    $("#account-form").reset();
    openDialog($("#account-dialog"), $("#new-account-id"));
  });
  $("#account-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = ev.currentTarget;
    busy(f, async () => {
      const a = await api.createAccount({ id: f.elements.id.value.trim(), plan: f.elements.plan.value.trim() });
      $("#account-dialog").close();
      say(`Created account ${a.id} on plan ${a.plan}.`);
      await openAccount(a.id);
    });
  });
  $("#plan-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = ev.currentTarget;
    busy(f, async () => {
      const req = { plan: f.elements.plan.value.trim() };
      if (req.plan === "enterprise") {
        if (f.elements.rate.value) req.rate = Number(f.elements.rate.value);
        if (f.elements.burst.value) req.burst = Number(f.elements.burst.value);
      }
      req.quota = f.elements.quota.value ? { count: Number(f.elements.quota.value), period: f.elements.period.value } : null;
      const a = await api.updateAccount(state.account, req);
      say(`Saved: account ${a.id} is on plan ${a.plan}.`);
      await Promise.all([fillPlanForm(), refreshUsage()]);
    });
  });
}

// ---- start ----

async function start() {
  try {
    if (MODE === "operator") {
      showAccounts();
      await loadAccounts();
    } else {
      $("#where").textContent = "Keys for your account. Keep them secret: anyone with a key can send email as you.";
      await openAccount("");
    }
  } catch (e) {
    say(e.message, true);
  }
}

start();
