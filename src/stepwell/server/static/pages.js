// stepwell dashboard: the pages. Each one reads the REST API (/v1/...) and builds its DOM from
// the answer; list pages refresh themselves every 2 seconds, detail pages while something in
// them can still change.

import {
  ApiError, BASE, api, apiEnvelope, between, duration, empty, errorBlock, h, jsonBlock, notice,
  shortId, statusBadge, time, withQuery,
} from "./lib.js";
import {bulkCancelPanel, rerunPanel, resendPanel} from "./actions.js";
import {stateLine, waterfall} from "./timeline.js";

export const RUN_STATUSES = ["Queued", "Running", "Completed", "Failed", "Cancelled", "Skipped"];
// What an active run is doing, as the `status` filter takes it (derived by the server).
const DOING = ["sleeping", "waiting", "invoking", "retrying", "orphaned"];
const ACTIVE = new Set(["Queued", "Running"]);
export const REFRESH_MS = 2000;

const runHref = (id) => `/dashboard/runs/${encodeURIComponent(id)}`;
export const eventHref = (id) => `/dashboard/events/${encodeURIComponent(id)}`;

/** Run `load` now and on every refresh, rendering only the newest answer (a slow answer to
 * an old filter must not overwrite a newer one). */
function latest(load) {
  let seq = 0;
  return async () => {
    const mine = ++seq;
    const result = await load();
    return mine === seq ? result : undefined;
  };
}

/** A run's running time: until it ended, or until now. */
function runDuration(run) {
  const start = run.started_at || run.run_started_at;
  if (!run.started_at && ACTIVE.has(run.status)) return "—";
  return duration(between(start, run.ended_at));
}

export function section(title, ...body) {
  const name = title.split(" ")[0].toLowerCase();
  return h("section", {class: "section", "data-section": name}, h("h2", {}, title), ...body);
}

export function pageHeader(title, ...extra) {
  return h("header", {class: "page-header"}, h("h1", {}, title), ...extra);
}

// --- runs ----------------------------------------------------------------------------------------

/** The runs table shared by the runs page and an event's page. */
function runsTable(runs, {showEvent = true} = {}) {
  const rows = runs.map((run) => {
    const link = h("a", {href: runHref(run.run_id), class: "mono run-link"}, run.run_id);
    return h("tr", {class: "clickable", "data-run-id": run.run_id, onclick: (event) => {
      if (!event.target.closest("a, button")) link.click();
    }},
    h("td", {class: "status-cell"}, statusBadge(run.status), stateLine(run)),
    h("td", {class: "fn"}, run.function_id),
    h("td", {}, link),
    showEvent ? h("td", {}, run.event_id
      ? h("a", {href: eventHref(run.event_id)}, run.event_name || shortId(run.event_id))
      : h("span", {class: "muted"}, run.parent_run_id ? "invoked" : "—")) : null,
    h("td", {}, time(run.run_started_at)),
    h("td", {class: "num"}, runDuration(run)));
  });
  return h("table", {class: "table runs-table"},
    h("thead", {}, h("tr", {}, h("th", {}, "Status"), h("th", {}, "Function"),
      h("th", {}, "Run ID"), showEvent ? h("th", {}, "Trigger") : null,
      h("th", {}, "Started"), h("th", {class: "num"}, "Duration"))),
    h("tbody", {}, rows));
}

/** "2026-01-01T10:00" (a datetime-local input, the viewer's zone) as RFC 3339 in UTC. */
const fromLocal = (value) => (value ? new Date(value).toISOString() : "");

export async function runs(view) {
  const q = (name) => view.query.get(name) || "";
  const filters = {status: q("status"), fn: q("function"), id: q("id"), query: q("query"),
    since: q("since"), until: q("until")};
  const functions = await api("GET", "/v1/functions");
  const ids = functions.map((fn) => fn.id);
  if (filters.fn && !ids.includes(filters.fn)) ids.push(filters.fn);
  const body = h("div", {class: "table-wrap", id: "runs"});
  const footer = h("div", {class: "pager muted small"});
  const flash = h("div", {class: "flash"});
  const live = h("input", {type: "checkbox", id: "live", checked: true});
  const cursors = [];          // the cursors of the pages before this one (Back)
  let cursor = "";
  let shown = [];
  const params = (extra) => ({status: filters.status, function_id: filters.fn,
    query: filters.query, since: fromLocal(filters.since), until: fromLocal(filters.until),
    limit: 50, outputs: "false", ...extra});
  const fetchPage = async () => {
    const base = params({cursor});
    if (!filters.id) return apiPage(withQuery("/v1/runs", base));
    const byRun = await apiPage(withQuery("/v1/runs", {...base, run_id: filters.id}));
    return byRun.runs.length ? byRun : apiPage(withQuery("/v1/runs", {...base, event_id: filters.id}));
  };
  const load = latest(async () => {
    const page = await fetchPage();
    shown = page.runs;
    const filtered = Object.values(filters).some(Boolean);
    body.replaceChildren(page.runs.length ? runsTable(page.runs) : empty(
      filtered ? "No runs match these filters."
        : "No runs yet. Send an event to trigger a function.",
      h("a", {href: "/dashboard/events"}, "Send an event")));
    footer.replaceChildren(...[
      cursors.length ? h("button", {type: "button", class: "link", id: "newer-page",
        onclick: () => { cursor = cursors.pop() || ""; load().catch((e) => view.fail(e)); }},
      "← Newer") : null,
      page.next ? h("button", {type: "button", class: "link", id: "older-page",
        onclick: () => {
          cursors.push(cursor);
          cursor = page.next;
          live.checked = false;        // an older page holds still
          load().catch((e) => view.fail(e));
        }}, "Older →") : null].filter(Boolean));
  });
  const refilter = () => {
    view.setQuery({status: filters.status, function: filters.fn, id: filters.id,
      query: filters.query, since: filters.since, until: filters.until});
    cursor = "";
    cursors.length = 0;
    flash.replaceChildren();
    load().catch((err) => view.fail(err));
  };
  const input = (name, props) => h("input", {id: `filter-${name}`, value: filters[name],
    onchange: (event) => { filters[name] = event.target.value.trim(); refilter(); }, ...props});
  const statusSelect = h("select", {id: "filter-status", "aria-label": "Status",
    onchange: (event) => { filters.status = event.target.value; refilter(); }},
  h("option", {value: ""}, "All statuses"),
  RUN_STATUSES.map((s) => h("option", {value: s, selected: s === filters.status}, s)),
  h("optgroup", {label: "Active runs that are"},
    DOING.map((s) => h("option", {value: s, selected: s === filters.status}, s))));
  const fnSelect = h("select", {id: "filter-function", "aria-label": "Function",
    onchange: (event) => { filters.fn = event.target.value; refilter(); }},
  h("option", {value: ""}, "All functions"),
  ids.map((id) => h("option", {value: id, selected: id === filters.fn}, id)));
  const bulk = h("button", {type: "button", class: "danger", id: "bulk-cancel",
    title: "Cancel the queued and running runs of the selected function that match the filters",
    onclick: () => {
      const fn = functions.find((f) => f.id === filters.fn);
      if (!fn) {
        flash.replaceChildren(notice("info", "Choose a function first: a bulk cancel is per function."));
        return;
      }
      flash.replaceChildren(bulkCancelPanel(view, fn, {since: fromLocal(filters.since),
        until: fromLocal(filters.until), query: filters.query,
        active: shown.filter((r) => ACTIVE.has(r.status)).length,
        done: (text) => { flash.replaceChildren(notice("success", text)); load(); }}));
    }}, "Cancel matching…");
  view.show(
    pageHeader("Runs", h("label", {class: "live"}, live, " Auto-refresh")),
    h("div", {class: "filters"}, statusSelect, fnSelect,
      input("id", {placeholder: "Run or event ID", "aria-label": "Run or event ID",
        spellcheck: "false", class: "id-filter"}),
      input("query", {placeholder: "event.data.userId == 42", "aria-label": "Event query",
        spellcheck: "false", class: "query-filter"}),
      h("label", {class: "inline"}, "From ", input("since", {type: "datetime-local",
        "aria-label": "From"})),
      h("label", {class: "inline"}, "to ", input("until", {type: "datetime-local",
        "aria-label": "To"})),
      bulk),
    flash, body, footer);
  await load();
  view.every(REFRESH_MS, () => (live.checked && !cursor ? load() : undefined));
}

/** A runs page: its runs and the cursor of the next (older) page. */
async function apiPage(path) {
  const reply = await apiEnvelope("GET", path);
  return {runs: reply.data, next: reply.metadata?.next_cursor || ""};
}

function meta(pairs) {
  return h("dl", {class: "meta"}, pairs.filter(Boolean).map(([label, value]) => [
    h("dt", {}, label), h("dd", {}, value)]));
}

/** A step's failed attempts, folded under its error: one line each (time and message), the
 * full error of an attempt only when it differs from the one shown above. */
function failuresList(step, key) {
  if (!step.failures || !step.failures.length) return null;
  const count = step.failures.length;
  const shownMessage = step.error ? step.error.message : null;
  return h("details", {class: "failures"},
    h("summary", {}, `${count} failed attempt${count === 1 ? "" : "s"}`),
    h("ol", {}, step.failures.map((failure, i) => h("li", {class: "failure"},
      h("span", {class: "muted small"}, `Attempt ${(failure.attempt ?? i) + 1} · `,
        time(failure.at ? new Date(failure.at).toISOString() : null), " · "),
      h("span", {class: "small"}, `${failure.error?.name || "Error"}: ${failure.error?.message ?? ""}`),
      failure.error && failure.error.message !== shownMessage && failure.error.stack
        ? errorBlock(failure.error, `${key}:failure:${i}`) : null))));
}

function stepsSection(run) {
  if (!run.steps.length) {
    return section("Steps", empty(ACTIVE.has(run.status)
      ? "No step has run yet." : "This run recorded no steps."));
  }
  const items = run.steps.map((step, index) => {
    const key = `${run.run_id}:step:${index}:${step.id}`;
    const attempts = `${step.attempts} attempt${step.attempts === 1 ? "" : "s"}`;
    const hasOutput = step.output !== null && step.output !== undefined;
    return h("li", {class: `step step-${step.status}`, "data-step": step.id},
      h("div", {class: "step-head"},
        h("span", {class: `kind kind-${step.kind}`}, step.kind),
        h("strong", {class: "step-id"}, step.id),
        statusBadge(step.status),
        h("span", {class: "muted small attempts"}, attempts),
        h("span", {class: "small"}, time(step.started_at), " → ",
          step.ended_at ? time(step.ended_at) : h("span", {class: "muted"}, "…")),
        h("span", {class: "small num"}, duration(between(step.started_at, step.ended_at)))),
      step.error ? errorBlock(step.error, `${key}:error`) : null,
      hasOutput ? jsonBlock(step.output, `${key}:output`) : null,
      failuresList(step, key));
  });
  return section("Steps", h("ol", {class: "steps"}, items));
}

function resultSection(run) {
  if (run.status === "Completed") return section("Output", jsonBlock(run.output, "output"));
  if (run.status === "Failed") return section("Error", errorBlock(run.error, "error"));
  if (run.error) return section("Reason", errorBlock(run.error, "error"));
  if (ACTIVE.has(run.status)) return section("Output", empty("The run has not finished yet."));
  return null;
}

function triggerSection(events, resend) {
  if (!events.length) return section("Trigger", empty("No triggering event is recorded."));
  return section(events.length > 1 ? `Trigger (batch of ${events.length} events)` : "Trigger",
    events.map((event, i) => h("div", {class: "event-payload"},
      h("div", {class: "event-title"}, h("a", {href: eventHref(event.id)}, event.name), " ",
        h("span", {class: "mono muted small"}, event.id), " ",
        resend ? h("button", {type: "button", class: "link resend-event",
          onclick: () => resend(event)}, "Resend (edit)…") : null),
      jsonBlock({name: event.name, data: event.data, id: event.id, ts: event.ts,
        user: event.user}, `trigger:${i}`))));
}

export async function run(view) {
  const id = view.params[0];
  const [first, events] = await Promise.all([
    api("GET", `/v1/runs/${encodeURIComponent(id)}`),
    api("GET", `/v1/runs/${encodeURIComponent(id)}/events`)]);
  const flash = h("div", {class: "flash"});
  let shown = first;
  const draw = (current) => {
    shown = current;
    const cancel = ACTIVE.has(current.status)
      ? h("button", {type: "button", class: "danger", id: "cancel-run", onclick: cancelRun},
        "Cancel run") : null;
    const replay = h("button", {type: "button", id: "replay-run", onclick: replayRun,
      title: "Run the function again with the same event(s), as a new run"}, "Replay");
    const rerun = current.steps.length ? h("button", {type: "button", id: "rerun-run",
      title: "A new run that reuses the results of the steps before a step you choose",
      onclick: () => flash.replaceChildren(rerunPanel(view, current))}, "Rerun from step…")
      : null;
    view.show(
      h("nav", {class: "crumbs"}, h("a", {href: "/dashboard/runs"}, "Runs"), " / ",
        h("span", {class: "mono"}, current.run_id)),
      pageHeader(current.function_id, statusBadge(current.status), replay, rerun, cancel),
      stateLine(current),
      flash,
      meta([
        ["Run ID", h("span", {class: "mono"}, current.run_id)],
        ["Function", h("a", {href: withQuery("/dashboard/runs", {function: current.function_id})},
          current.function_id)],
        ["Queued", time(current.run_started_at)],
        ["Started", time(current.started_at)],
        ["Ended", time(current.ended_at)],
        ["Duration", runDuration(current)],
        current.parent_run_id ? ["Invoked by", h("a", {href: runHref(current.parent_run_id)},
          current.parent_run_id)] : null,
        current.replay_of ? ["Replay of", h("a", {href: runHref(current.replay_of),
          id: "replay-of"}, current.replay_of)] : null,
        current.version ? ["Version", h("span", {class: "mono", id: "run-version"},
          current.version)] : null,
        current.usage && current.usage.requests ? ["Tokens", h("span", {id: "run-tokens",
          title: current.usage.models.map((m) =>
            `${m.model}: ${m.input_tokens} in, ${m.output_tokens} out`).join("\n")},
          `${current.usage.input_tokens} in, ${current.usage.output_tokens} out ` +
          `(${current.usage.requests} model request${current.usage.requests === 1 ? "" : "s"})`)]
          : null,
      ]),
      current.warnings.length ? h("div", {class: "warnings"}, current.warnings.map(
        (w) => notice("warning", w))) : null,
      resultSection(current),
      triggerSection(events, (event) => flash.replaceChildren(resendPanel(view, event))),
      current.steps.length ? section("Timeline", waterfall(current)) : null,
      stepsSection(current));
  };
  async function replayRun(event) {
    const button = event.target;
    button.disabled = true;
    button.textContent = "Replaying…";
    try {
      const fresh = await api("POST", `/v1/runs/${encodeURIComponent(id)}/replay`);
      view.go(runHref(fresh.run_id));
    } catch (err) {
      if (err instanceof ApiError && err.unauthorized) {
        view.fail(err);
        return;
      }
      draw(shown);
      flash.replaceChildren(notice("error", `Could not replay the run: ${err.message}`));
    }
  }
  async function cancelRun(event) {
    const button = event.target;
    button.disabled = true;
    button.textContent = "Cancelling…";
    try {
      const after = await api("POST", `/v1/runs/${encodeURIComponent(id)}/cancel`);
      draw(after);
      flash.replaceChildren(notice("success", after.status === "Cancelled" ? "Run cancelled."
        : "Cancellation requested: the run stops after its current step."));
    } catch (err) {
      if (err instanceof ApiError && err.unauthorized) {
        view.fail(err);
        return;
      }
      draw(shown);
      flash.replaceChildren(notice("error", `Could not cancel the run: ${err.message}`));
    }
  }
  draw(first);
  view.every(REFRESH_MS, async () => {
    if (!ACTIVE.has(shown.status) && !shown.steps.some((s) => s.status === "retrying")) {
      return false;
    }
    draw(await api("GET", `/v1/runs/${encodeURIComponent(id)}`));
    return true;
  });
}

// --- events --------------------------------------------------------------------------------------

function sendForm(view, onSent) {
  const name = h("input", {id: "event-name", name: "name",
    placeholder: "shop/order.created", autocomplete: "off", spellcheck: "false"});
  const data = h("textarea", {id: "event-data", name: "data", rows: 5, spellcheck: "false"});
  data.value = "{}";
  const result = h("div", {class: "form-result", id: "send-result"});
  const submit = h("button", {type: "submit"}, "Send event");
  const form = h("form", {class: "card send-form", id: "send-event", onsubmit: async (event) => {
    event.preventDefault();
    let payload;
    try {
      payload = JSON.parse(data.value.trim() || "{}");
    } catch (err) {
      result.replaceChildren(notice("error", `The data is not valid JSON: ${err.message}`));
      data.focus();
      return;
    }
    submit.disabled = true;
    try {
      const sent = await api("POST", "/v1/events", {name: name.value.trim(), data: payload});
      const [eventId] = sent.ids;
      result.replaceChildren(notice("success", h("span", {}, "Event sent: ",
        h("a", {href: eventHref(eventId), class: "mono"}, eventId))));
      onSent();
    } catch (err) {
      if (err instanceof ApiError && err.unauthorized) {
        view.fail(err);
        return;
      }
      result.replaceChildren(notice("error", `The event was not sent: ${err.message}`));
    } finally {
      submit.disabled = false;
    }
  }},
  h("h2", {}, "Send an event"),
  h("label", {for: "event-name"}, "Name"), name,
  h("label", {for: "event-data"}, "Data (a JSON object)"), data,
  h("div", {class: "row"}, submit), result);
  return form;
}

function eventsTable(events) {
  return h("table", {class: "table events-table"},
    h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Event ID"),
      h("th", {}, "Received"))),
    h("tbody", {}, events.map((event) => {
      const link = h("a", {href: eventHref(event.id), class: "event-link"}, event.name);
      return h("tr", {class: "clickable", onclick: (e) => {
        if (!e.target.closest("a, button")) link.click();
      }}, h("td", {}, link), h("td", {class: "mono"}, event.id), h("td", {}, time(event.receivedAt)));
    })));
}

export async function events(view) {
  let name = view.query.get("name") || "";
  const body = h("div", {class: "table-wrap", id: "events"});
  const load = latest(async () => {
    const found = await api("GET", withQuery("/v1/events", {name, limit: 100}));
    body.replaceChildren(found.length ? eventsTable(found)
      : empty(name ? `No events named ${name}.` : "No events yet."));
  });
  const functions = await api("GET", "/v1/functions");
  const known = new Set(functions.flatMap((fn) => fn.triggers.map((t) => t.event))
    .filter((n) => n && !n.endsWith("*")));
  const filter = h("input", {id: "filter-name", type: "search", value: name, list: "event-names",
    placeholder: "Filter by event name", "aria-label": "Event name"});
  const apply = () => {
    name = filter.value.trim();
    view.setQuery({name});
    load().catch((err) => view.fail(err));
  };
  filter.addEventListener("change", apply);
  filter.addEventListener("search", apply);
  const form = sendForm(view, () => load().catch((err) => view.fail(err)));
  view.show(pageHeader("Events"), form,
    h("div", {class: "filters"}, filter,
      h("datalist", {id: "event-names"}, [...known].sort().map((n) => h("option", {value: n})))),
    body);
  await load();
  view.every(REFRESH_MS, load);
}

export async function event(view) {
  const id = view.params[0];
  const path = `/v1/events/${encodeURIComponent(id)}`;
  // The runs through /v1/runs (not /v1/events/{id}/runs) to leave their outputs out.
  const runsPath = withQuery("/v1/runs", {event_id: id, outputs: "false"});
  const [found, triggered] = await Promise.all([api("GET", path), api("GET", runsPath)]);
  const runsBox = h("div", {class: "table-wrap", id: "event-runs"});
  const drawRuns = (list) => runsBox.replaceChildren(list.length
    ? runsTable(list, {showEvent: false})
    : empty("This event has not triggered any function run."));
  drawRuns(triggered);
  view.show(
    h("nav", {class: "crumbs"}, h("a", {href: "/dashboard/events"}, "Events"), " / ",
      h("span", {class: "mono"}, found.id)),
    pageHeader(found.name),
    meta([["Event ID", h("span", {class: "mono"}, found.id)],
      ["Sent", time(found.ts ? new Date(found.ts).toISOString() : null)]]),
    section("Payload", jsonBlock({name: found.name, data: found.data, id: found.id, ts: found.ts,
      user: found.user}, `event:${found.id}`)),
    section("Runs", runsBox));
  // Runs can appear after the event (debounce, batches, throttles) and change status.
  view.every(REFRESH_MS, async () => drawRuns(await api("GET", runsPath)));
}

// --- apps ----------------------------------------------------------------------------------------

export async function apps(view) {
  const body = h("div", {id: "apps"});
  const url = h("input", {id: "app-url", type: "text", autocomplete: "off", spellcheck: "false",
    placeholder: "http://127.0.0.1:3000/api/inngest"});
  const result = h("div", {class: "form-result", id: "sync-result"});
  const submit = h("button", {type: "submit"}, "Sync app");
  const load = async () => {
    const [synced, functions] = await Promise.all([api("GET", "/v1/apps"),
      api("GET", "/v1/functions")]);
    const native = new Map();
    for (const fn of functions.filter((f) => f.kind === "native")) {
      native.set(fn.app_id, [...(native.get(fn.app_id) || []), fn.function_id]);
    }
    body.replaceChildren(
      section("SDK apps", synced.length ? h("table", {class: "table apps-table"},
        h("thead", {}, h("tr", {}, h("th", {}, "App"), h("th", {}, "URL"),
          h("th", {}, "Functions"), h("th", {}, "Checksum"))),
        h("tbody", {}, synced.map((app) => h("tr", {"data-app": app.app_id || app.url},
          h("td", {class: "fn"}, app.app_id || h("span", {class: "muted"}, "(unknown)")),
          h("td", {class: "mono"}, app.url),
          h("td", {}, app.functions.join(", ") || h("span", {class: "muted"}, "none"),
            // A refused sync names the function and why (the SDK itself may say nothing).
            app.error ? h("div", {class: "sync-error status-failed"}, app.error) : null),
          h("td", {class: "mono muted"}, shortId(app.checksum || "")))))) : empty(
        "No SDK app is synced. Point an app at this server (INNGEST_DEV=" +
        `${location.origin}${BASE}) or sync it by its URL above.`)),
      native.size ? section("In-process apps", h("table", {class: "table"},
        h("thead", {}, h("tr", {}, h("th", {}, "App"), h("th", {}, "Functions"))),
        h("tbody", {}, [...native].map(([app, fns]) => h("tr", {},
          h("td", {class: "fn"}, app), h("td", {}, fns.join(", "))))))) : null);
  };
  const form = h("form", {class: "card", id: "sync-app", onsubmit: async (event) => {
    event.preventDefault();
    submit.disabled = true;
    result.replaceChildren(h("span", {class: "muted"}, "Syncing…"));
    try {
      const app = await api("POST", "/v1/apps/sync", {url: url.value.trim()});
      result.replaceChildren(notice("success", `Synced ${app.app_id}: ` +
        `${app.functions.length} function${app.functions.length === 1 ? "" : "s"}.`));
      await load();
    } catch (err) {
      if (err instanceof ApiError && err.unauthorized) return view.fail(err);
      result.replaceChildren(notice("error", `The app was not synced: ${err.message}`));
    } finally {
      submit.disabled = false;
    }
  }},
  h("h2", {}, "Sync an app by URL"),
  h("label", {for: "app-url"}, "The app's serve URL"),
  h("div", {class: "row"}, url, submit), result);
  view.show(pageHeader("Apps"), form, body);
  await load();
  view.every(REFRESH_MS * 2.5, load);
}
