// stepwell dashboard: the shell (navigation, routing, live refresh, the signing-key form).
//
// Pages are client-side routes under /dashboard/; the server answers the same HTML for all of
// them. A page is an async function given a View; it reads the REST API through `api()` and
// puts what it builds on the page with `view.show()`. Errors it does not handle itself end up
// in `view.fail()`: a 401 asks for the signing key, a 404 shows "not found", anything else the
// server's message.

import {ApiError, BASE, h, notice, session} from "./lib.js";
import * as functions from "./functions.js";
import * as pages from "./pages.js";

const ROUTES = [
  [/^\/dashboard\/?$/, pages.runs, "runs"],
  [/^\/dashboard\/runs\/?$/, pages.runs, "runs"],
  [/^\/dashboard\/runs\/([^/]+)\/?$/, pages.run, "runs"],
  [/^\/dashboard\/events\/?$/, pages.events, "events"],
  [/^\/dashboard\/events\/([^/]+)\/?$/, pages.event, "events"],
  [/^\/dashboard\/functions\/?$/, functions.functions, "functions"],
  [/^\/dashboard\/functions\/(.+?)\/?$/, functions.fn, "functions"],
  [/^\/dashboard\/apps\/?$/, pages.apps, "apps"],
];

/** One page being shown: its DOM, its URL, and its live-refresh timers. */
class View {
  constructor(url, params) {
    this.url = url;
    this.query = url.searchParams;
    this.params = params;
    this.closed = false;
    this.timers = new Set();
    this.root = h("div", {class: "page"}, h("p", {class: "muted loading"}, "Loading…"));
    this.banner = h("div", {class: "live-problem"});
  }

  show(...nodes) {
    if (!this.closed) this.root.replaceChildren(this.banner, ...nodes.filter(Boolean));
  }

  /** Navigate to another dashboard page. */
  go(path) { navigate(path); }

  /** Keep the current filters in the address bar (so reload and back keep them). */
  setQuery(params) {
    const url = new URL(location.href);
    url.search = "";
    for (const [name, value] of Object.entries(params)) if (value) url.searchParams.set(name, value);
    history.replaceState(null, "", url);
  }

  /** Call `fn` every `ms` while this page is shown, until it returns false. A failed refresh
   * shows a banner and is retried; a 401 asks for the signing key instead. */
  every(ms, fn) {
    const tick = async () => {
      this.timers.delete(timer);
      if (this.closed) return;
      let again = true;
      try {
        again = (await fn()) !== false;
        this.banner.replaceChildren();
      } catch (err) {
        if (this.closed) return;
        if (err instanceof ApiError && err.unauthorized) {
          this.fail(err);
          return;
        }
        this.banner.replaceChildren(
          notice("warning", `Live refresh failed, retrying: ${err.message}`));
      }
      if (again && !this.closed) {
        timer = setTimeout(tick, ms);
        this.timers.add(timer);
      }
    };
    let timer = setTimeout(tick, ms);
    this.timers.add(timer);
  }

  close() {
    this.closed = true;
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }

  /** The page could not be built (or refreshed): say why, in terms of what the user can do. */
  fail(err) {
    if (this.closed) return;
    const status = err instanceof ApiError ? err.status : -1;
    if (status === 401) {
      this.close();
      keyForm(this);
      return;
    }
    this.close();
    if (status === 404) {
      const what = {runs: "Run", events: "Event", functions: "Function"}[this.section] || "Page";
      this.root.replaceChildren(notFound(err.message, this.params.length ? what : "Page"));
      return;
    }
    const what = status === 0 ? "The server cannot be reached"
      : status > 0 ? `The server answered HTTP ${status}` : "The dashboard hit a bug";
    if (status < 0) console.error(err);
    this.root.replaceChildren(
      h("h1", {}, "Something went wrong"),
      notice("error", `${what}: ${err.message}`),
      h("p", {}, h("button", {type: "button", onclick: () => render()}, "Try again")));
  }
}

function notFound(message, what = "Page") {
  return h("div", {class: "not-found"},
    h("h1", {}, `${what} not found`),
    h("p", {class: "muted"}, message || `There is no dashboard page at ${location.pathname}.`),
    h("p", {}, h("a", {href: "/dashboard/runs"}, "Back to runs")));
}

/** Production mode: ask for the signing key, keep it for this tab only, and try again. */
function keyForm(view) {
  const rejected = Boolean(session.key);
  session.key = "";
  updateSession();
  const input = h("input", {
    type: "password", id: "signing-key", name: "signing-key", required: true,
    autocomplete: "off", spellcheck: "false", placeholder: "signkey-prod-…",
  });
  const form = h("form", {class: "card key-form", onsubmit: (event) => {
    event.preventDefault();
    session.key = input.value.trim();
    updateSession();
    render();
  }},
  h("label", {for: "signing-key"}, "Signing key"),
  h("div", {class: "row"}, input, h("button", {type: "submit"}, "Continue")));
  view.root.replaceChildren(
    h("h1", {}, "Signing key required"),
    rejected
      ? notice("error", "The server did not accept that signing key. Check the key the " +
        "server was started with (--signing-key or INNGEST_SIGNING_KEY).")
      : h("p", {}, "This stepwell server runs in production mode: its API needs the server's " +
        "signing key. It is kept in this browser tab only (sessionStorage) and sent with " +
        "every request."),
    form);
  input.focus();
}

function updateSession() {
  const box = document.getElementById("session");
  if (!box) return;
  box.replaceChildren(session.key
    ? h("div", {}, h("span", {class: "muted"}, "Using a signing key"), " ",
      h("button", {type: "button", class: "link", id: "forget-key", onclick: () => {
        session.key = "";
        updateSession();
        render();
      }}, "Forget key"))
    : "");
}

let current = null;

/** Show the page for the current address. */
export async function render() {
  if (current) current.close();
  const url = new URL(location.href);
  let page = null;
  let params = [];
  let section = "";
  for (const [pattern, fn, nav] of ROUTES) {
    const match = appPath(url.pathname).match(pattern);
    if (match) {
      page = fn;
      section = nav;
      params = match.slice(1).map((part) => decodeURIComponent(part));
      break;
    }
  }
  const view = new View(url, params);
  view.section = section;
  current = view;
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === section);
  }
  document.getElementById("main").replaceChildren(view.root);
  if (page === null) {
    view.root.replaceChildren(notFound());
    document.title = "Not found · stepwell";
    return;
  }
  document.title = `${section[0].toUpperCase()}${section.slice(1)} · stepwell`;
  try {
    await page(view);
  } catch (err) {
    view.fail(err);
  }
}

/** A path on this server without the mount point ("/stepwell/dashboard" -> "/dashboard"). */
function appPath(pathname) {
  return BASE && pathname.startsWith(BASE) ? pathname.slice(BASE.length) || "/" : pathname;
}

/** Show a dashboard page; `path` is relative to the mount point ("/dashboard/runs"). */
export function navigate(path) {
  const full = BASE + path;
  if (full !== location.pathname + location.search) history.pushState(null, "", full);
  render();
  window.scrollTo(0, 0);
}

// Dashboard links are handled here (no page reload); other links and modified clicks
// (new tab, download) are left to the browser.
document.addEventListener("click", (event) => {
  const link = event.target.closest("a[href]");
  if (!link || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey || link.target) return;
  const url = new URL(link.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith(BASE + "/dashboard")) return;
  event.preventDefault();
  navigate(appPath(url.pathname) + url.search);
});
window.addEventListener("popstate", () => render());

/** `stepwell dev` keeps serving while the app's code does not import; /health then carries
 * the error, shown above every page until the code loads again. */
async function watchCode() {
  const box = document.getElementById("code-problem");
  try {
    const response = await fetch(`${BASE}/health`, {cache: "no-store"});
    const health = await response.json();
    if (health.load_error) {
      box.replaceChildren(
        h("strong", {}, "Your code does not load; serving with no functions until it does."),
        h("pre", {class: "code"}, health.load_error));
      box.hidden = false;
    } else {
      box.hidden = true;
      box.replaceChildren();
    }
  } catch (err) {
    // The server is restarting or unreachable: the page's own refresh says so.
  }
  setTimeout(watchCode, 2000);
}

updateSession();
render();
watchCode();
