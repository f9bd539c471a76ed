// stepwell dashboard: acting on runs. Each action opens a panel saying what will happen, with
// its inputs, and does nothing until "Confirm" is pressed; each is one REST call the CLI makes
// too (docs/dashboard.md lists them). Calls carry the page's Origin, which the server checks
// (server/guard.py): another site cannot make them.

import {ApiError, api, h, notice} from "./lib.js";

const runHref = (id) => `/dashboard/runs/${encodeURIComponent(id)}`;
const eventHref = (id) => `/dashboard/events/${encodeURIComponent(id)}`;

/** A confirmation panel: `fields`, then Confirm / Back. `act` returns what to show after. */
function panel(view, {id, title, explain, fields = [], confirm, act}) {
  const result = h("div", {class: "form-result"});
  const button = h("button", {type: "submit", class: "danger", id: `${id}-confirm`}, confirm);
  const box = h("form", {class: "card action-panel", id, onsubmit: async (event) => {
    event.preventDefault();
    button.disabled = true;
    try {
      result.replaceChildren(await act());
    } catch (err) {
      if (err instanceof ApiError && err.unauthorized) {
        view.fail(err);
        return;
      }
      result.replaceChildren(notice("error", err.message));
      button.disabled = false;
    }
  }},
  h("h2", {}, title), h("p", {class: "muted"}, explain), fields,
  h("div", {class: "row"}, button,
    h("button", {type: "button", class: "link", onclick: () => box.remove()}, "Back")),
  result);
  return box;
}

function jsonInput(id, label, value, rows = 6) {
  const area = h("textarea", {id, rows, spellcheck: "false"});
  area.value = value;
  return [h("label", {for: id}, label), area];
}

function parse(text, what) {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`${what} is not valid JSON: ${err.message}`);
  }
}

/** Rerun from a chosen step (REST v2 rerun), optionally with that step's input edited. */
export function rerunPanel(view, run) {
  const steps = [...new Set(run.steps.filter((s) => s.id !== "(handler)").map((s) => s.id))];
  const select = h("select", {id: "rerun-step"},
    steps.map((id) => h("option", {value: id}, id)));
  const [inputLabel, input] = jsonInput("rerun-input",
    "New input for that step (a JSON array of its arguments; empty: its own)", "", 3);
  return panel(view, {
    id: "rerun", title: "Rerun from a step", confirm: "Confirm rerun",
    explain: "A new run of this function with the same events: the steps before the one " +
      "chosen are not run again (their recorded results are reused), that step and the " +
      "following ones run again.",
    fields: [h("label", {for: "rerun-step"}, "From step"), select, inputLabel, input],
    act: async () => {
      const fromStep = {stepId: select.value};
      if (input.value.trim()) fromStep.input = parse(input.value, "The input");
      const out = await api("POST", `/v2/runs/${encodeURIComponent(run.run_id)}/rerun`,
        {fromStep});
      return notice("success", h("span", {}, "New run: ",
        h("a", {href: runHref(out.runId), class: "mono", id: "rerun-link"}, out.runId)));
    },
  });
}

/** Send a (possibly edited) copy of an event as a new event. */
export function resendPanel(view, event) {
  const [label, area] = jsonInput("resend-body", "Event (name, data, user)",
    JSON.stringify({name: event.name, data: event.data, user: event.user || {}}, null, 2), 10);
  return panel(view, {
    id: "resend", title: "Resend the event", confirm: "Confirm send",
    explain: "Sends a new event (with a new id) with this content: every function it " +
      "triggers runs again.",
    fields: [label, area],
    act: async () => {
      const body = parse(area.value, "The event");
      const sent = await api("POST", "/v1/events", body);
      const [id] = sent.ids;
      return notice("success", h("span", {}, "Event sent: ",
        h("a", {href: eventHref(id), class: "mono", id: "resent-link"}, id)));
    },
  });
}

/** Start a run of a function with a payload (`ctx.event.data`). */
export function invokePanel(view, fn) {
  const [label, area] = jsonInput(`invoke-data`, "Data (a JSON object)", "{}", 5);
  return panel(view, {
    id: "invoke", title: `Invoke ${fn.id}`, confirm: "Confirm invoke",
    explain: "Starts one run of this function now, with this data as its event's data (an " +
      "inngest/function.invoked event, as step.invoke sends).",
    fields: [label, area],
    act: async () => {
      const out = await api("POST", `/v1/functions/${encodeURIComponent(fn.id)}/invoke`,
        {data: parse(area.value, "The data")});
      return notice("success", h("span", {}, "Run started: ",
        h("a", {href: runHref(out.run_id), class: "mono", id: "invoked-link"}, out.run_id)));
    },
  });
}

/** Cancel the active runs of one function queued in a time window whose event matches. */
export function bulkCancelPanel(view, fn, {since, until, query, active, done}) {
  const window = since || until
    ? ` queued ${since ? `from ${since}` : ""}${until ? ` before ${until}` : ""}` : "";
  return panel(view, {
    id: "bulk", title: `Cancel runs of ${fn.id}`, confirm: "Confirm cancel",
    explain: `Cancels every queued or running run of ${fn.id}${window}` +
      (query ? ` whose event matches ${query}` : "") +
      ` (${active} such on this page; older pages count too). Runs stop at their next step.`,
    act: async () => {
      const body = {app_id: fn.app_id, function_id: fn.function_id,
        started_before: until || new Date().toISOString()};
      if (since) body.started_after = since;
      if (query) body.if = query;
      const out = await api("POST", "/v1/cancellations", body);
      done(`Cancelled ${out.cancelled} run${out.cancelled === 1 ? "" : "s"}.`);
      return notice("success", `Cancelled ${out.cancelled}.`);
    },
  });
}
