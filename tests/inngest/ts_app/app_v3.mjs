// A real app on the official Inngest TypeScript SDK v3 (`inngest@3`, installed under the npm
// alias `inngest-v3`), served with `inngest-v3/node`.
//
// The seed's examples as written (step.run, step.sleep, step.waitForEvent with match + timeout,
// Promise.all parallel steps, loops with dynamic ids, retries, NonRetriableError, onFailure,
// rateLimit + throttle, debounce, priority with `===`), plus cancelOn, step.invoke and
// step.sendEvent, with durations shortened so tests run on the real clock. v3 takes the trigger
// as the second argument: createFunction(config, trigger, handler), as the seed writes it.
// Nothing here knows about stepwell: the tests point it at `stepwell serve` with INNGEST_DEV /
// INNGEST_BASE_URL, as a user would.
import { Inngest, NonRetriableError, fetch } from "inngest-v3";
import { serve } from "inngest-v3/node";
import { listen, record, work } from "./common.mjs";
import { serverStepFunctions } from "./server_steps.mjs";

const inngest = new Inngest({ id: "ts-v3" });

// 1. Multi-step execution
export const processOrder = inngest.createFunction(
  { id: "process-order" },
  { event: "shop/order.created" },
  async ({ event, step }) => {
    // 1. Step: Validate (Retriable)
    const user = await step.run("get-user", async () => {
      record("get-user", event.data.orderId);
      return { id: event.data.userId, name: `user-${event.data.userId}` };
    });
    // 2. Step: Sleep (Durable pause) -- seed: "1h"
    await step.sleep("wait-for-payment", "1s");
    // 3. Step: Wait for Event (Human/System interaction) -- seed: "24h"
    const payment = await step.waitForEvent("wait-payment", {
      event: "shop/payment.success",
      match: "data.orderId",
      timeout: "4s",
    });
    // 4. Step: Conditional Logic
    if (!payment) {
      await step.run("cancel-order", async () => {
        record("cancel-order", event.data.orderId);
        return "cancelled";
      });
    }
    return {
      user,
      paid: Boolean(payment),
      payment: payment ? { name: payment.name, data: payment.data } : null,
    };
  },
);

// 2. Parallelism
export const loadDashboard = inngest.createFunction(
  { id: "load-dashboard" },
  { event: "app/dashboard.load" },
  async ({ event, step }) => {
    const userId = event.data.userId;
    const [user, subscription] = await Promise.all([
      step.run("fetch-user", async () => {
        record("fetch-user", userId);
        return { id: userId, email: `${userId}@example.com` };
      }),
      step.run("fetch-sub", async () => {
        record("fetch-sub", userId);
        return { user: userId, plan: "pro" };
      }),
    ]);
    const summary = await step.run("combine", async () => {
      record("combine", userId);
      return `${user.email}:${subscription.plan}`;
    });
    return { user, subscription, summary };
  },
);

// 3. Working with loops
export const processCart = inngest.createFunction(
  { id: "process-cart" },
  { event: "shop/cart.checkout" },
  async ({ event, step }) => {
    const cartId = event.data.cartId;
    const items = event.data.items;
    const processed = [];
    for (const item of items) {
      // Use dynamic ID to ensure uniqueness per item
      processed.push(
        await step.run(`process-item-${item.id}`, async () => {
          record("process-item", cartId, { item: item.id });
          return { id: item.id, done: true };
        }),
      );
    }
    // The same id in a loop: the SDK makes it unique (`tick`, `tick:1`, `tick:2`).
    const ticks = [];
    for (let n = 0; n < 3; n++) {
      ticks.push(
        await step.run("tick", async () => {
          record("tick", cartId, { n });
          return n;
        }),
      );
    }
    return { processed, ticks };
  },
);

// 4. Automatic retries (customised: { retries: 3 })
export const flakySync = inngest.createFunction(
  { id: "flaky-sync", retries: 3 },
  { event: "app/flaky.sync" },
  async ({ event, step, attempt }) => {
    const key = event.data.key;
    const result = await step.run("flaky-call", async () => {
      record("flaky-call", key, { attempt });
      if (attempt < 2) {
        throw new Error(`flaky failure on attempt ${attempt}`);
      }
      return { ok: true, attempt };
    });
    return { result };
  },
);

export const doomedCall = inngest.createFunction(
  { id: "doomed-call", retries: 1 },
  { event: "app/doomed.call" },
  async ({ event, step, attempt }) => {
    await step.run("call-api", async () => {
      record("call-api", event.data.key, { attempt });
      throw new Error("upstream down");
    });
  },
);

// Non-retriable errors + failure handlers (rollbacks)
export const riskyTransfer = inngest.createFunction(
  {
    id: "risky-transfer",
    // Runs if main handler fails. `event` is `inngest/function.failed`; the original event is
    // `event.data.event`.
    onFailure: async ({ error, event, step }) => {
      const transferId = event.data.event.data.transferId;
      await step.run("rollback-funds", async () => {
        record("rollback-funds", transferId);
        return `reversed ${transferId}`;
      });
      const alert = await step.run("notify-admin", async () => {
        const message = `Transfer failed: ${error.message}`;
        record("notify-admin", transferId, { message });
        return message;
      });
      return { transferId, alert, failedFunction: event.data.function_id };
    },
  },
  { event: "bank/transfer.init" },
  async ({ event, step }) => {
    await step.run("validate", async () => {
      record("validate", event.data.transferId);
      if (!event.data.valid) throw new NonRetriableError("Invalid payload");
      return true;
    });
    return await step.run("transfer", async () => {
      record("transfer", event.data.transferId);
      return { transferred: event.data.amount };
    });
  },
);

// 5. Configuration & flow control
export const syncCrm = inngest.createFunction(
  {
    id: "sync-crm",
    // Max 10 requests per minute per user
    rateLimit: { limit: 10, period: "1m", key: "event.data.userId" },
    // Seed comment: "Drop events if queue is full"; a throttle delays starts, it never drops
    throttle: { limit: 5, period: "1s" },
  },
  { event: "crm/contact.updated" },
  async ({ event, step }) => {
    const seq = await step.run("push-contact", async () => {
      record("sync-crm", event.data.userId, { seq: event.data.seq });
      return event.data.seq;
    });
    return { userId: event.data.userId, seq };
  },
);

export const indexProduct = inngest.createFunction(
  {
    id: "index-product",
    // Wait 2s (seed: 10s) for more events; only run with the latest data
    debounce: { period: "2s", key: "event.data.productId" },
  },
  { event: "shop/product.updated" },
  async ({ event, step }) => {
    const indexedVersion = await step.run("index", async () => {
      record("index-product", event.data.productId, { version: event.data.version });
      return event.data.version;
    });
    return { productId: event.data.productId, indexedVersion };
  },
);

export const generateReport = inngest.createFunction(
  {
    id: "generate-report",
    // High number = High priority
    priority: { run: "event.data.plan === 'enterprise' ? 100 : 0" },
  },
  { event: "report/generate" },
  async ({ event, step }) => {
    const report = await step.run("build-report", async () => {
      record("generate-report", event.data.batch, { plan: event.data.plan });
      return `report for ${event.data.plan}`;
    });
    return { report };
  },
);

export const generateReportQueued = inngest.createFunction(
  {
    id: "generate-report-queued",
    // The seed's priority, plus a one-at-a-time limit so a backlog forms and priority decides
    // which queued run goes next.
    priority: { run: "event.data.plan === 'enterprise' ? 100 : 0" },
    concurrency: 1,
  },
  { event: "report/generate.queued" },
  async ({ event, step }) => {
    const report = await step.run("build-report", async () => {
      record("generate-report-queued", event.data.batch, {
        plan: event.data.plan,
        n: event.data.n,
      });
      await work(300);
      return `report ${event.data.n} for ${event.data.plan}`;
    });
    return { report };
  },
);

// 6. Cancel on event
export const nurtureLead = inngest.createFunction(
  {
    id: "nurture-lead",
    cancelOn: [{ event: "crm/lead.converted", match: "data.leadId" }],
  },
  { event: "crm/lead.created" },
  async ({ event, step }) => {
    const lead = event.data.leadId;
    await step.run("send-welcome", async () => {
      record("send-welcome", lead);
      return "welcomed";
    });
    await step.sleep("wait-before-followup", "30s");
    await step.run("send-followup", async () => {
      record("send-followup", lead);
      return "followed up";
    });
    return "nurtured";
  },
);

// 7. Invoke another function
export const computeTotal = inngest.createFunction(
  { id: "compute-total", retries: 0 },
  { event: "shop/total.compute" },
  async ({ event, step }) => {
    const total = await step.run("add-up", async () => {
      const items = event.data.items;
      if (!items.length) throw new NonRetriableError("Cart is empty");
      return items.reduce((sum, i) => sum + i.price * i.qty, 0);
    });
    return { total };
  },
);

export const checkout = inngest.createFunction(
  { id: "checkout" },
  { event: "shop/checkout.requested" },
  async ({ event, step }) => {
    try {
      const result = await step.invoke("compute-total", {
        function: computeTotal,
        data: { items: event.data.items },
      });
      return { total: result.total };
    } catch (err) {
      return { error: err.message };
    }
  },
);

// 8. Send events from a function
export const userSignup = inngest.createFunction(
  { id: "user-signup" },
  { event: "app/user.signup" },
  async ({ event, step }) => {
    const { ids } = await step.sendEvent("send-welcome-email", {
      name: "app/email.requested",
      data: { to: event.data.email, template: "welcome" },
    });
    return { sent: ids };
  },
);

export const sendEmail = inngest.createFunction(
  { id: "send-email" },
  { event: "app/email.requested" },
  async ({ event, step }) => {
    const delivered = await step.run("deliver", async () => {
      record("deliver-email", event.data.to, { template: event.data.template });
      return `${event.data.template} -> ${event.data.to}`;
    });
    return { delivered };
  },
);

// v3 takes the trigger as the second argument.
const define = (config, trigger, handler) => inngest.createFunction(config, trigger, handler);

export const functions = [
  processOrder, loadDashboard, processCart, flakySync, doomedCall, riskyTransfer,
  syncCrm, indexProduct, generateReport, generateReportQueued, nurtureLead,
  computeTotal, checkout, userSignup, sendEmail,
  // step.fetch, step.ai.infer, step.waitForSignal / step.sendSignal (server_steps.mjs)
  ...serverStepFunctions(define, fetch),
];

listen("ts-v3", serve({ client: inngest, functions }));
