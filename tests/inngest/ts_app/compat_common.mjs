// Functions of the TypeScript compatibility apps (compat_v4.mjs, compat_v3.mjs), written as the
// SDK's docs write them. Their ids hold slashes, unicode and punctuation, as Inngest allows.
// Each exercises one behaviour of the Inngest dev server (tests/inngest/test_compat.py).
import { record } from "./common.mjs";

export const CRAZY_ID = "crazy%$^&*(_+{|:<?☃️";

const seen = new Map();
const flags = new Map();

function firstTime(key) {
  const n = (seen.get(key) ?? 0) + 1;
  seen.set(key, n);
  return n === 1;
}

function flag(key) {
  if (!flags.has(key)) {
    let resolve;
    const promise = new Promise((r) => { resolve = r; });
    flags.set(key, { promise, resolve });
  }
  return flags.get(key);
}

// `define(config, trigger, handler)` hides how v3 and v4 take triggers; `sdk` holds the SDK's
// exports; `race(step, group, start)` races the branches `start()` returns with race semantics
// where the SDK has them (v4: `group.parallel`), else null.
export function compatFunctions(appId, define, sdk, race) {
  const { NonRetriableError, referenceFunction } = sdk;
  const charge = define({ id: "billing/charge" }, { event: "compat/charge" },
    async ({ event, step }) => step.run("charge/card ☃", async () => {
      record("charge", event.data.key, { amount: event.data.amount });
      return { charged: event.data.amount };
    }));

  const crazy = define({ id: CRAZY_ID }, { event: "compat/crazy" },
    async ({ event, step }) => ({
      said: await step.run("say", async () => `hello ${event.data.who}`), fn: CRAZY_ID }));

  const perUnit = define({ id: "retry/per-unit", retries: 1 }, { event: "compat/units" },
    async ({ event, step, attempt, runId }) => {
      const key = event.data.key;
      await step.run("one", async () => { record("step-one", key); return 1; });
      // Code outside steps after step "one": fails once (a transient error), then goes on.
      record("unit-a", key, { attempt });
      if (firstTime(`${runId}:a`)) throw new Error("transient failure after step one");
      await step.run("two", async () => { record("step-two", key); return 2; });
      // A new unit of work: its attempts start again at 0, so this failure is retried too.
      record("unit-b", key, { attempt });
      if (firstTime(`${runId}:b`)) throw new Error("transient failure after step two");
      return { ok: true };
    });

  const nonRetriable = define({ id: "errors/non-retriable" }, { event: "compat/nonretriable" },
    async ({ step }) => {
      await step.run("before", async () => 1);
      throw new NonRetriableError("the card was declined");
    });

  const noRetry = define({ id: "steps/no-retry", retries: 3 }, { event: "compat/noretry" },
    async ({ event, step, attempt }) => {
      try {
        await step.run("refuse", async () => {
          record("refuse", event.data.key, { attempt });
          throw new NonRetriableError("this step must not be retried");
        });
      } catch (err) {
        return { caught: err.message };
      }
      return { caught: null };
    });

  const unexpected = define({ id: "parallel_steps/child", retries: 0 },
    { event: "compat/unexpected" },
    async ({ step, runId }) => {
      // Not deterministic on purpose: from the second request on, a step appears before the
      // parallel steps, so the targeted call for "a" reaches that step instead.
      const n = seen.get(runId) ?? 0;
      seen.set(runId, n + 1);
      if (n > 0) await step.run(`pre-${n}`, async () => "pre");
      await Promise.all([step.run("a", async () => "a"), step.run("b", async () => "b")]);
      return "unreachable";
    });

  const invokeMissing = define({ id: "invoke/missing" }, { event: "compat/missing" },
    async ({ step }) => {
      try {
        await step.invoke("call", {
          function: referenceFunction({ appId, functionId: "does/not-exist" }), data: {} });
      } catch (err) {
        return { name: err.name, message: err.message };
      }
      return { name: null, message: null };
    });

  const invokeCharge = define({ id: "invoke/charge" }, { event: "compat/invoke" },
    async ({ event, step }) => step.invoke("call", {
      function: charge, data: { amount: event.data.amount } }));

  // step.ai.infer in Anthropic's format: the server sends the key as `X-Api-Key`.
  const aiAnthropic = define({ id: "ai/anthropic" }, { event: "compat/ai" },
    async ({ event, step }) => step.ai.infer("ask", {
      model: step.ai.models.anthropic({
        model: "claude-test", apiKey: event.data.key, baseUrl: event.data.base_url,
        defaultParameters: { max_tokens: 16 } }),
      body: { max_tokens: 16, messages: [{ role: "user", content: "hi" }] } }));

  const waitLong = define({ id: "cancel/me" }, { event: "compat/wait" },
    async ({ step }) => step.waitForEvent("never", { event: "compat/never", timeout: "1h" }));

  const functions = [charge, crazy, perUnit, nonRetriable, noRetry, unexpected, invokeMissing,
    invokeCharge, aiAnthropic, waitLong];

  if (race) {
    functions.push(define({ id: "parallel_steps/race" }, { event: "compat/race" },
      async ({ event, step, group }) => {
        const key = event.data.key;
        const fastChain = async () => {
          await step.run("fast-1", async () => { record("fast-1", key); return "f1"; });
          return step.run("fast-2", async () => {
            record("fast-2", key);
            flag(key).resolve(true);
            return "f2";
          });
        };
        const slow = () => step.run("slow", async () => {
          // Finishes only once the fast branch's second step ran (or gives up after 20 s):
          // in race mode that step runs while this one is still running.
          const saw = await Promise.race([flag(key).promise,
            new Promise((r) => setTimeout(() => r(false), 20000))]);
          record("slow", key, { saw_fast_2: saw });
          return saw ? "saw fast-2" : "fast-2 had not run";
        });
        // The branches start inside `race` so that their steps get the race option.
        const fast = await race(step, group, () => [fastChain(), slow()]);
        return { fast };
      }));
  }
  return functions;
}
