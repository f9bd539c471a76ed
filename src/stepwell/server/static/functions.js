// stepwell dashboard: the functions list and a function's page (its configuration, run counts,
// versions, and what flow control holds back: batch and debounce windows that have no run yet).

import {api, duration, empty, h, statusBadge, time, withQuery} from "./lib.js";
import {invokePanel} from "./actions.js";
import {REFRESH_MS, RUN_STATUSES, eventHref, pageHeader, section} from "./pages.js";

/** A function's page; its id (`app/fn`) keeps its slash, each part encoded. */
export const functionHref = (id) =>
  `/dashboard/functions/${id.split("/").map(encodeURIComponent).join("/")}`;

function describe(value) {
  if (value === null || typeof value !== "object") return String(value);
  return Object.entries(value).map(([k, v]) => `${k} ${typeof v === "object"
    ? JSON.stringify(v) : v}`).join(" · ");
}

function configList(fn) {
  const rows = [["retries", String(fn.retries)]];
  for (const [option, value] of Object.entries(fn.config || {})) {
    const values = Array.isArray(value) ? value : [value];
    rows.push([option, values.map((v) => h("div", {}, describe(v)))]);
  }
  if (fn.failure_of) rows.push(["on failure of", fn.failure_of]);
  return h("dl", {class: "config"}, rows.map(([k, v]) => [
    h("dt", {}, k), h("dd", {class: "mono"}, v)]));
}

function triggerList(fn) {
  if (!fn.triggers.length) return h("span", {class: "muted"}, "invoke only");
  return h("ul", {class: "triggers"}, fn.triggers.map((t) => h("li", {},
    t.cron ? [h("span", {class: "kind"}, "cron"), " ", h("code", {}, t.cron)]
      : [h("span", {class: "kind"}, "event"), " ", h("code", {}, t.event),
        t.expression ? [" if ", h("code", {}, t.expression)] : null])));
}

function countsList(fn, stats) {
  if (!stats) return h("span", {class: "muted"}, "—");
  return h("div", {class: "counts"}, RUN_STATUSES.map((status) => {
    const n = stats.counts[status] || 0;
    const label = `${n}${stats.capped.includes(status) ? "+" : ""}`;
    return h("a", {class: `count ${n ? "" : "zero"}`, "data-status": status,
      href: withQuery("/dashboard/runs", {function: fn.id, status})},
    statusBadge(status), " ", h("span", {class: "n"}, label));
  }));
}

function versionsList(entry) {
  // GET /v1/versions: per version its state, unfinished runs and live workers (deploying.md).
  if (!entry || !entry.versions.length) return h("span", {class: "muted"}, "—");
  return h("ul", {class: "versions"}, entry.versions.map((v) => h("li", {
    "data-version": v.version || "", "data-state": v.state},
  h("span", {class: "mono"}, v.version || "(none)"), " ",
  h("span", {class: `badge version-${v.state}`}, v.state),
  h("span", {class: "muted small"}, ` ${v.runs} unfinished · ${v.workers.length} worker` +
    (v.workers.length === 1 ? "" : "s")))));
}

export async function functions(view) {
  const body = h("div", {class: "table-wrap", id: "functions"});
  const flash = h("div", {class: "flash"});
  const load = async () => {
    const [list, stats, versions] = await Promise.all([api("GET", "/v1/functions"),
      api("GET", "/v1/stats/functions"), api("GET", "/v1/versions")]);
    const byId = new Map(stats.map((s) => [s.id, s]));
    const versionsOf = new Map(versions.map((v) => [v.function_id, v]));
    body.replaceChildren(list.length ? h("table", {class: "table functions-table"},
      h("thead", {}, h("tr", {}, h("th", {}, "Function"), h("th", {}, "Triggers"),
        h("th", {}, "Configuration"), h("th", {}, "Runs"), h("th", {}, "Versions"))),
      h("tbody", {}, list.map((fn) => h("tr", {"data-function": fn.id},
        h("td", {}, h("a", {class: "fn", href: functionHref(fn.id)}, fn.id),
          h("div", {class: "muted small fn-meta"}, `app ${fn.app_id}`,
            h("span", {class: `badge kind-${fn.kind}`}, fn.kind === "sdk" ? "SDK" : "native")),
          h("button", {type: "button", class: "link invoke", onclick: () => {
            flash.replaceChildren(invokePanel(view, fn));
          }}, "Invoke…")),
        h("td", {}, triggerList(fn)),
        h("td", {}, configList(fn)),
        h("td", {}, countsList(fn, byId.get(fn.id))),
        h("td", {}, versionsList(versionsOf.get(fn.id)))))))
      : empty("No functions are registered. Define them with @app.function, or sync an SDK app.",
        h("a", {href: "/dashboard/apps"}, "Sync an app")));
  };
  view.show(pageHeader("Functions"), flash, body);
  await load();
  view.every(REFRESH_MS * 2.5, load);
}

/** GET /v1/functions/{id}/pending: the windows that have not fired, or why there are none. */
function heldSection(fn, windows) {
  const config = fn.config || {};
  const body = windows.length ? h("table", {class: "table held-table"},
    h("thead", {}, h("tr", {}, h("th", {}, "Kind"), h("th", {}, "Key"), h("th", {}, "Events"),
      h("th", {}, "Fires at"), h("th", {}, "Opened"), h("th", {}, "Event"))),
    h("tbody", {}, windows.map((w) => h("tr", {"data-kind": w.kind, "data-key": w.key},
      h("td", {}, h("span", {class: "badge"}, w.kind)),
      h("td", {class: "mono key"}, w.key || h("span", {class: "muted"}, "(no key)")),
      h("td", {class: "events"}, String(w.events)),
      h("td", {class: "fires"}, time(w.fires_at),
        h("span", {class: "muted small"}, ` in ${duration(Date.parse(w.fires_at) - Date.now())}`)),
      h("td", {}, time(w.created_at)),
      h("td", {}, w.event_id ? h("a", {class: "mono", href: eventHref(w.event_id)}, w.event_id)
        : h("span", {class: "muted"}, "—"))))))
    : empty(config.batch || config.debounce
      ? "Nothing is held back: no batch or debounce window is open."
      : "This function has no batch or debounce setting: flow control holds no events back " +
        "before a run. Throttled and concurrency-limited runs are in the runs list.");
  return section("Held back by flow control", h("p", {class: "muted small"},
    "Events in a batch or debounce window that has not fired: no run exists for them yet."),
  body);
}

export async function fn(view) {
  const id = view.params[0];
  const pendingPath = `/v1/functions/${id.split("/").map(encodeURIComponent).join("/")}/pending`;
  // The pending windows first: an unknown function is the API's 404 ("Function not found").
  const first = await api("GET", pendingPath);
  const flash = h("div", {class: "flash"});
  const body = h("div", {id: "function"});
  const draw = async (windows) => {
    const [list, stats] = await Promise.all([api("GET", "/v1/functions"),
      api("GET", "/v1/stats/functions")]);
    const found = list.find((f) => f.id === id) || list.find((f) => f.function_id === id ||
      f.slug === id);
    if (!found) return;
    body.replaceChildren(
      h("nav", {class: "crumbs"}, h("a", {href: "/dashboard/functions"}, "Functions"), " / ",
        h("span", {class: "mono"}, found.id)),
      pageHeader(found.id, h("span", {class: `badge kind-${found.kind}`},
        found.kind === "sdk" ? "SDK" : "native"),
      h("button", {type: "button", class: "invoke", onclick: () => {
        flash.replaceChildren(invokePanel(view, found));
      }}, "Invoke…")),
      flash,
      h("dl", {class: "meta"},
        h("dt", {}, "App"), h("dd", {}, found.app_id),
        h("dt", {}, "Triggers"), h("dd", {}, triggerList(found)),
        h("dt", {}, "Runs"), h("dd", {}, countsList(found, stats.find((s) => s.id === found.id)))),
      heldSection(found, windows),
      section("Configuration", configList(found)));
  };
  view.show(body);
  await draw(first);
  view.every(REFRESH_MS, async () => draw(await api("GET", pendingPath)));
}
