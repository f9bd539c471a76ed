// stepwell dashboard: helpers shared by the pages (DOM building, the API client, formatting).
//
// Everything that comes from the API is put on the page as text (textContent), never as HTML:
// event payloads and step outputs are written by anyone who can send an event.

const KEY_STORAGE = "stepwell.signingKey";

/** Where the server is mounted ("" at the root, "/stepwell" under `app.mount("/stepwell", ...)`):
 * the page says so in a meta tag, and every path below is relative to it. */
export const BASE = (document.querySelector('meta[name="stepwell-base"]')?.getAttribute("content")
  || "").replace(/\/+$/, "");

/** A server path ("/dashboard/runs", "/v1/runs") as a URL under the mount point. */
export const under = (path) => (path.startsWith("/") && !path.startsWith("//") ? BASE + path : path);

/** An element: h("a", {href: "/x", class: "link"}, "text", child, [more children]). */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name === "text") el.textContent = value;
    else if (name === "href") el.setAttribute(name, under(String(value)));
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

// --- the API -----------------------------------------------------------------------------------

/** An error answer from the API: `status` 0 means the server could not be reached. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
  get unauthorized() { return this.status === 401; }
  get notFound() { return this.status === 404; }
}

export const session = {
  get key() { return sessionStorage.getItem(KEY_STORAGE) || ""; },
  set key(value) {
    if (value) sessionStorage.setItem(KEY_STORAGE, value);
    else sessionStorage.removeItem(KEY_STORAGE);
  },
};

/** Call the REST API; resolves to the envelope's `data`, rejects with an ApiError carrying the
 * server's own message (the API always answers `{"error": "...", "status": N}`). */
export async function api(method, path, body) {
  const payload = await apiEnvelope(method, path, body);
  return payload && "data" in payload ? payload.data : payload;
}

/** `api`, resolving to the whole answer (`{data, metadata}`: a page's `next_cursor`). */
export async function apiEnvelope(method, path, body) {
  const headers = {accept: "application/json"};
  if (session.key) headers.authorization = `Bearer ${session.key}`;
  const init = {method, headers, cache: "no-store"};
  if (body !== undefined) {
    headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(under(path), init);
  } catch (err) {
    throw new ApiError(0, "cannot reach the stepwell server (is it running?)");
  }
  let payload = null;
  try {
    payload = await response.json();
  } catch (err) {
    payload = null;
  }
  if (!response.ok) {
    const message = payload && typeof payload.error === "string"
      ? payload.error : `HTTP ${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message);
  }
  return payload;
}

/** `/v1/runs?status=Failed&...` without the empty parameters. */
export function withQuery(path, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) if (value) query.set(name, value);
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

// --- formatting --------------------------------------------------------------------------------

const pad = (n, width = 2) => String(n).padStart(width, "0");

/** The viewer's time zone as it is written at `d` ("CET", "GMT+2", "UTC"). */
function zone(d) {
  try {
    const part = new Intl.DateTimeFormat(undefined, {timeZoneName: "short"}).formatToParts(d)
      .find((p) => p.type === "timeZoneName");
    return part ? part.value : "";
  } catch (err) {
    return "";
  }
}

/** A time as the local wall clock with its zone (the full UTC time is in the tooltip). */
export function time(iso) {
  if (!iso) return h("span", {class: "muted"}, "—");
  const d = new Date(iso);
  const today = new Date();
  const clock = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  const sameDay = d.toDateString() === today.toDateString();
  const text = sameDay ? clock
    : `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock}`;
  const tz = zone(d);
  return h("time", {datetime: iso, title: `${d.toISOString()} (UTC)`}, tz ? `${text} ${tz}` : text);
}

/** 950 -> "950ms", 1234 -> "1.23s", 125000 -> "2m 5s", 7260000 -> "2h 1m". */
export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  if (ms < 0) ms = 0;
  if (ms < 1000) return `${Math.round(ms)}ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)}s`;
  const s = Math.floor(ms / 1000);
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86_400)}d ${Math.floor((s % 86_400) / 3600)}h`;
}

/** Milliseconds between two ISO times; `end` missing means "until now" (still running). */
export function between(start, end) {
  if (!start) return null;
  return (end ? Date.parse(end) : Date.now()) - Date.parse(start);
}

export function statusBadge(status) {
  const name = String(status || "unknown");
  return h("span", {class: `badge status-${name.toLowerCase()}`}, name);
}

export function shortId(id) {
  return id && id.length > 14 ? `${id.slice(0, 6)}…${id.slice(-6)}` : id;
}

function size(bytes) {
  if (bytes < 1024) return `${bytes} bytes`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

// --- JSON and long text, truncated with a "show all" toggle --------------------------------------

export const TRUNCATE_CHARS = 4000;
export const TRUNCATE_LINES = 60;
// Which blocks the user expanded, by a key stable across refreshes, so that a page refreshing
// every 2 seconds does not fold them back.
const expanded = new Set();

/** A <pre> with `text`, cut at TRUNCATE_CHARS characters / TRUNCATE_LINES lines. */
export function longText(text, key, cls = "code") {
  const lines = text.split("\n");
  const long = text.length > TRUNCATE_CHARS || lines.length > TRUNCATE_LINES;
  const pre = h("pre", {class: cls});
  if (!long) {
    pre.textContent = text;
    return pre;
  }
  const cut = lines.slice(0, TRUNCATE_LINES).join("\n").slice(0, TRUNCATE_CHARS);
  const total = size(new Blob([text]).size);
  const button = h("button", {type: "button", class: "link toggle"});
  const render = () => {
    const open = expanded.has(key);
    pre.textContent = open ? text : `${cut}\n…`;
    button.textContent = open ? "Show less" : `Show all (${total})`;
  };
  button.addEventListener("click", () => {
    if (expanded.has(key)) expanded.delete(key); else expanded.add(key);
    render();
  });
  render();
  return h("div", {class: "long"}, pre, button);
}

/** A JSON value, pretty-printed and truncated like longText. */
export function jsonBlock(value, key) {
  const text = value === undefined ? "undefined" : JSON.stringify(value, null, 2);
  return longText(text ?? "null", key);
}

/** An error as stored (`{name, message, stack}`), with its stack folded away. */
export function errorBlock(error, key) {
  if (!error || typeof error !== "object") return jsonBlock(error, key);
  const name = error.name || "Error";
  const message = error.message ?? "";
  return h("div", {class: "error-box"},
    h("div", {class: "error-title"}, h("strong", {}, `${name}: `), String(message)),
    error.stack ? h("details", {class: "stack"}, h("summary", {}, "Stack trace"),
      longText(String(error.stack), `${key}:stack`)) : null);
}

export function empty(text, ...more) {
  return h("div", {class: "empty"}, h("p", {}, text), ...more);
}

export function notice(kind, text) {
  return h("div", {class: `notice notice-${kind}`, role: kind === "error" ? "alert" : "status"},
    text);
}
