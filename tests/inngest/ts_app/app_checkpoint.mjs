// A real app on the official Inngest TypeScript SDK v4 for the checkpointing tests, served with
// `inngest/node`. v4 checkpoints by default (the SDK runs steps inside one call and POSTs each
// result to /v1/checkpoint/{runId}/async); CHECKPOINTING=0 turns it off the documented way
// (`new Inngest({ checkpointing: false })`), so the same functions also run on the plain
// protocol. Written as the SDK's docs write them; nothing here knows about stepwell.
import { Inngest, experiment } from "inngest";
import { metadataMiddleware } from "inngest/experimental";
import { serve } from "inngest/node";
import { LEDGER, listen, record, work } from "./common.mjs";

const checkpointing = process.env.CHECKPOINTING !== "0";
const appId = checkpointing ? "ts-ckpt" : "ts-plain";
const inngest = new Inngest({
  id: appId,
  ...(checkpointing ? {} : { checkpointing: false }),
  middleware: [metadataMiddleware()],
});

// Held steps: a step that waits until the test releases it (GET /_test/release?key=...).
const released = new Set();

export const threeSteps = inngest.createFunction(
  { id: "three-steps", triggers: [{ event: "ckpt/three" }] },
  async ({ event, step }) => {
    const key = event.data.key;
    const a = await step.run("a", async () => {
      record("a", key);
      return 1;
    });
    const b = await step.run("b", async () => {
      record("b", key);
      return a + 1;
    });
    const c = await step.run("c", async () => {
      record("c", key);
      return { sum: a + b, nothing: null };
    });
    return { a, b, c };
  },
);

export const sleepy = inngest.createFunction(
  { id: "sleepy", triggers: [{ event: "ckpt/sleepy" }] },
  async ({ event, step }) => {
    const key = event.data.key;
    const before = await step.run("before", async () => {
      record("before", key);
      return "before";
    });
    await step.sleep("nap", "1s");
    const after = await step.run("after", async () => {
      record("after", key);
      return "after";
    });
    return [before, after];
  },
);

export const flaky = inngest.createFunction(
  { id: "flaky", retries: 3, triggers: [{ event: "ckpt/flaky" }] },
  async ({ event, step }) => {
    const key = event.data.key;
    const first = await step.run("first", async () => {
      record("first", key);
      return "first";
    });
    const shaky = await step.run("shaky", async () => {
      const tries = LEDGER.filter((e) => e.kind === "shaky" && e.key === key).length;
      record("shaky", key, { tries });
      if (tries < 2) throw new Error(`shaky failure ${tries}`);
      return `ok after ${tries}`;
    });
    const last = await step.run("last", async () => {
      record("last", key);
      return "last";
    });
    return { first, shaky, last };
  },
);

export const doomed = inngest.createFunction(
  { id: "doomed", retries: 1, triggers: [{ event: "ckpt/doomed" }] },
  async ({ event, step }) => {
    const key = event.data.key;
    await step.run("fine", async () => {
      record("fine", key);
      return true;
    });
    await step.run("broken", async () => {
      record("broken", key);
      throw new Error("broken for good");
    });
    return "unreachable";
  },
);

export const fanOut = inngest.createFunction(
  { id: "fan-out", triggers: [{ event: "ckpt/fan-out" }] },
  async ({ event, step }) => {
    const key = event.data.key;
    const head = await step.run("head", async () => {
      record("head", key);
      return "head";
    });
    const [left, right] = await Promise.all([
      step.run("left", async () => {
        record("left", key);
        return "left";
      }),
      step.run("right", async () => {
        record("right", key);
        return "right";
      }),
    ]);
    const tail = await step.run("tail", async () => {
      record("tail", key);
      return `${head}-${left}-${right}`;
    });
    return { tail };
  },
);

export const held = inngest.createFunction(
  { id: "held", triggers: [{ event: "ckpt/held" }] },
  async ({ event, step }) => {
    const key = event.data.key;
    await step.run("one", async () => {
      record("one", key);
      return 1;
    });
    await step.run("hold", async () => {
      record("hold", key);
      while (!released.has(key)) await work(20);
      return 2;
    });
    await step.run("three", async () => {
      record("three", key);
      return 3;
    });
    return "done";
  },
);

export const tryVariants = inngest.createFunction(
  { id: "try-variants", triggers: [{ event: "ckpt/experiment" }] },
  async ({ event, step, group }) => {
    const key = event.data.key;
    await step.metadata("tag-run").set({ customer: key, tier: "gold" });
    const chosen = await group.experiment("checkout-flow", {
      variants: {
        control: () =>
          step.run("old-checkout", async () => {
            record("variant", key, { variant: "control" });
            return "control";
          }),
        fresh: () =>
          step.run("new-checkout", async () => {
            record("variant", key, { variant: "fresh" });
            return "fresh";
          }),
      },
      select: experiment.fixed("fresh"),
    });
    await step.sleep("settle", "1s");
    const done = await step.run("after-experiment", async () => {
      record("after-experiment", key);
      return "after";
    });
    return { chosen, done };
  },
);

// step.metadata() aimed at another run goes through the API (POST /v1/runs/{id}/metadata).
export const tagOther = inngest.createFunction(
  { id: "tag-other", retries: 0, triggers: [{ event: "ckpt/tag-other" }] },
  async ({ event, step }) => {
    await step.metadata("tag-other-run").run(event.data.otherRun).set({ seen: true });
    return "tagged";
  },
);

// Rerun from a step with edited input (REST v2): `price` takes its quantity as step input.
export const priced = inngest.createFunction(
  { id: "priced", triggers: [{ event: "ckpt/priced" }] },
  async ({ event, step }) => {
    const key = event.data.key;
    const base = await step.run("base", async () => {
      record("base", key);
      return 5;
    });
    const price = await step.run(
      "price",
      async (qty) => {
        record("price", key, { qty });
        return base * qty;
      },
      event.data.qty,
    );
    return { price };
  },
);

export const functions = [threeSteps, sleepy, flaky, doomed, fanOut, held, tryVariants, priced,
  tagOther];

const handler = serve({ client: inngest, functions });
listen(appId, (req, res) => {
  const url = new URL(req.url ?? "/", "http://localhost");
  if (url.pathname === "/api/inngest" && url.searchParams.get("release")) {
    released.add(url.searchParams.get("release"));
    res.writeHead(200, { "content-type": "application/json" });
    res.end("{}");
    return;
  }
  handler(req, res);
});
