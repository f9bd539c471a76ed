// The TypeScript SDK v4 app `bench/sdk.py` measures: functions of 1, 3 and 10 `step.run` with
// trivial bodies, served with `inngest/node`. CHECKPOINTING=0 turns checkpointing off the
// documented way. `POST /_bench/noop` answers `{}` at once: the app's own trivial-POST rate is
// the ceiling the SDK path is compared with. The SDK comes from the test suite's npm install
// (tests/inngest/ts_app, lockfile committed).
import http from "node:http";
import { Inngest } from "../../tests/inngest/ts_app/node_modules/inngest/index.js";
import { serve } from "../../tests/inngest/ts_app/node_modules/inngest/node.js";

const checkpointing = process.env.CHECKPOINTING !== "0";
const inngest = new Inngest({
  id: checkpointing ? "bench-ts" : "bench-ts-plain",
  ...(checkpointing ? {} : { checkpointing: false }),
  logger: { info() {}, warn() {}, error: console.error, debug() {} },
});

const stepsFn = (n) =>
  inngest.createFunction(
    { id: `steps-${n}`, retries: 0, triggers: [{ event: `bench/steps.${n}` }] },
    async ({ step }) => {
      let total = 0;
      for (let i = 0; i < n; i++) {
        total += await step.run(`s${i}`, async () => i);
      }
      return total;
    },
  );

const handler = serve({ client: inngest, functions: [1, 3, 10].map(stepsFn) });
const server = http.createServer((req, res) => {
  if ((req.url ?? "").startsWith("/_bench/noop")) {
    req.resume();
    req.on("end", () => {
      res.writeHead(200, { "content-type": "application/json", "content-length": "2" });
      res.end("{}");
    });
    return;
  }
  handler(req, res);
});
server.listen(Number(process.env.PORT ?? 0), "127.0.0.1", () => {
  console.log(`bench app listening on http://127.0.0.1:${server.address().port}`);
});
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));
