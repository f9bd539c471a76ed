// Steps the *server* performs or resolves: step.fetch (and `fetch` from the SDK used inside a
// function), step.ai.infer, step.waitForSignal and step.sendSignal. Shared by app_v3.mjs and
// app_v4.mjs: `define(config, trigger, handler)` hides how each version takes its trigger.
// The URLs (a small upstream HTTP server the test starts) come in the events' data.
import { record } from "./common.mjs";

export function serverStepFunctions(define, fetch) {
  const fetchQuote = define(
    { id: "fetch-quote", retries: 1 },
    { event: "tools/fetch.quote" },
    async ({ event, step }) => {
      const { baseUrl, key } = event.data;
      const quoteRes = await step.fetch(`${baseUrl}/quote?key=${key}`, {
        headers: { "x-request-key": key },
      });
      const quote = await quoteRes.json();
      // `fetch` from the SDK, called in the handler (outside a step), is a durable step too.
      const echoRes = await fetch(`${baseUrl}/echo`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ key }),
      });
      const echoed = await echoRes.json();
      const missing = await step.fetch(`${baseUrl}/missing`);
      const doubled = await step.run("after-fetch", async () => {
        record("after-fetch", key);
        return quote.price * 2;
      });
      return {
        quote,
        status: quoteRes.status,
        source: quoteRes.headers.get("x-quote-source"),
        echoed,
        missing: { status: missing.status, ok: missing.ok, body: await missing.text() },
        doubled,
      };
    },
  );

  const fetchUnreachable = define(
    { id: "fetch-unreachable", retries: 1 },
    { event: "tools/fetch.unreachable" },
    async ({ event, step }) => {
      const res = await step.fetch(event.data.url);
      return { status: res.status };
    },
  );

  const aiSummarize = define(
    { id: "ai-summarize", retries: 1 },
    { event: "tools/ai.summarize" },
    async ({ event, step }) => {
      const { baseUrl, apiKey, text } = event.data;
      const completion = await step.ai.infer("summarize", {
        model: step.ai.models.openai({ model: "gpt-test", apiKey, baseUrl }),
        body: { messages: [{ role: "user", content: text }] },
      });
      return { summary: completion.choices[0].message.content, model: completion.model };
    },
  );

  const awaitApproval = define(
    { id: "await-approval", retries: 0 },
    { event: "flow/approval.requested" },
    async ({ event, step }) => {
      const { signal, timeout, onConflict } = event.data;
      const approval = await step.waitForSignal("wait-approval", { signal, timeout, onConflict });
      const decided = await step.run("decide", async () => {
        record("decide", signal, { approved: approval !== null });
        return approval ? approval.data : "timed out";
      });
      return { approval, decided };
    },
  );

  const grantApproval = define(
    { id: "grant-approval" },
    { event: "flow/approval.granted" },
    async ({ event, step }) => {
      const sent = await step.sendSignal("send-approval", {
        signal: event.data.signal,
        data: event.data.decision,
      });
      return { runId: sent.runId ?? null };
    },
  );

  return [fetchQuote, fetchUnreachable, aiSummarize, awaitApproval, grantApproval];
}
