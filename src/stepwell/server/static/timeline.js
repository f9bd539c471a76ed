// stepwell dashboard: what a run is doing (its derived `state`) and its timeline, a waterfall on
// one time axis: each step a row, its failed attempts as segments with the backoff between them
// visible, sleeps and waits as spans up to when they are due, overlapping (parallel) steps side
// by side in time, and the current time marked while the run is active.

import {duration, h, time} from "./lib.js";

const ACTIVE = new Set(["Queued", "Running"]);
const ms = (iso) => (iso ? Date.parse(iso) : null);

/** What an active run is doing, as a line of text with times in the viewer's zone. */
export function stateLine(run) {
  const s = run.state;
  if (!s || !ACTIVE.has(run.status)) return null;
  const step = s.step ? [" · step ", h("strong", {}, s.step)] : [];
  const expires = s.expires_at ? [", expires ", time(s.expires_at)] : [];
  const parts = {
    sleeping: () => ["Sleeping until ", time(s.until), ...step],
    waiting_for_event: () => ["Waiting for event ", h("code", {}, s.event),
      s.match ? [" matching ", h("code", {}, s.match)] : null,
      s.if ? [" if ", h("code", {}, s.if)] : null, ...expires, ...step],
    waiting_for_signal: () => ["Waiting for signal ", h("code", {}, s.signal), ...expires, ...step],
    waiting_for_run: () => ["Waiting for invoked run ",
      s.invoked_run_id ? h("a", {href: `/dashboard/runs/${encodeURIComponent(s.invoked_run_id)}`,
        class: "mono"}, s.invoked_run_id) : "(starting)",
      s.function ? [" of ", h("strong", {}, s.function)] : null, ...expires, ...step],
    retrying: () => [`Retrying: attempt ${s.attempt} of ${s.max_attempts} at `, time(s.at),
      ...step, s.error ? [" · last error ", h("span", {class: "error-inline"},
        `${s.error.name || "Error"}: ${s.error.message ?? ""}`)] : null],
    throttled: () => ["Throttled", s.key ? [" (key ", h("code", {}, s.key), ")"] : null,
      " until ", time(s.until)],
    concurrency_limited: () => ["Waiting for a concurrency slot: ",
      s.keys.map((k, i) => [i ? ", " : "", h("code", {}, k.key), ` (limit ${k.limit})`])],
    orphaned: () => ["Orphaned: no worker defines ", h("strong", {}, s.function)],
    scheduled: () => ["Queued until ", time(s.until)],
    queued: () => ["Queued: waiting for a worker"],
  }[s.kind];
  if (s.kind === "running") return null;       // the status badge says it already
  return h("div", {class: `state state-${s.kind}`, "data-state": s.kind},
    parts ? parts() : s.summary || s.kind);
}

/** The segments of one step on the axis: [start, end, class, title]. */
function segments(step, run) {
  const out = [];
  const start = ms(step.started_at);
  const failures = step.failures || [];
  let previous = null;
  failures.forEach((failure, i) => {
    const at = typeof failure.at === "number" ? failure.at : ms(failure.at);
    if (at === null) return;
    if (previous !== null) out.push([previous, at, "gap", "backoff before the next attempt"]);
    out.push([at, at, "attempt-failed", `attempt ${i + 1} failed: ${failure.error?.message ?? ""}`]);
    previous = at;
  });
  const current = run.state && run.state.step === step.id ? run.state : null;
  if (step.status === "retrying") {
    const next = current ? ms(current.at) : null;
    if (previous !== null && next !== null) {
      out.push([previous, next, "gap", "backoff until the next attempt"]);
    }
    return out;
  }
  if (start === null) return out;
  if (previous !== null && start > previous) {
    out.push([previous, start, "gap", "backoff before the next attempt"]);
  }
  let end = ms(step.ended_at);
  let cls = step.status;
  if (end === null && current) {
    end = ms(current.until || current.expires_at) || Date.now();
    cls = `${step.status} pending`;
  }
  out.push([start, end ?? Date.now(), cls, `${step.kind} ${step.status}`]);
  return out;
}

/** The run's waterfall (a <figure>), or null without steps. */
export function waterfall(run) {
  if (!run.steps.length) return null;
  const now = Date.now();
  const rows = run.steps.map((step) => [step, segments(step, run)]);
  const points = [ms(run.run_started_at)];
  for (const [, segs] of rows) for (const [a, b] of segs) points.push(a, b);
  if (ACTIVE.has(run.status)) points.push(now);
  if (run.ended_at) points.push(ms(run.ended_at));
  const known = points.filter((p) => p !== null && !Number.isNaN(p));
  const lo = Math.min(...known);
  const hi = Math.max(...known, lo + 1);
  const pct = (t) => `${(((t - lo) / (hi - lo)) * 100).toFixed(3)}%`;
  const track = (segs) => h("div", {class: "wf-track"}, segs.map(([a, b, cls, title]) => {
    const seg = h("div", {class: `wf-seg wf-${cls.split(" ").join(" wf-")}`, title});
    seg.style.left = pct(a);
    seg.style.width = b > a ? `max(3px, ${(((b - a) / (hi - lo)) * 100).toFixed(3)}%)` : "3px";
    return seg;
  }));
  const marker = ACTIVE.has(run.status) && now <= hi
    ? h("div", {class: "wf-now", title: `now (${new Date(now).toISOString()})`}) : null;
  if (marker) {
    marker.style.left = `calc(var(--wf-label) + (100% - var(--wf-label)) * ${(now - lo) / (hi - lo)})`;
  }
  return h("figure", {class: "waterfall", "aria-label": "Timeline"},
    h("div", {class: "wf-axis"}, h("span", {}, time(new Date(lo).toISOString())),
      h("span", {class: "muted small"}, duration(hi - lo)),
      h("span", {}, time(new Date(hi).toISOString()))),
    h("div", {class: "wf-body"}, marker, rows.map(([step, segs]) => h("div",
      {class: `wf-row wf-row-${step.status}`, "data-step": step.id},
      h("div", {class: "wf-label", title: step.id}, h("span", {class: `kind kind-${step.kind}`},
        step.kind), " ", step.id),
      track(segs)))));
}
