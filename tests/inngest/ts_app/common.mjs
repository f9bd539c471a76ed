// Shared plumbing for the TypeScript SDK test apps: an HTTP server that hands `/api/inngest` to
// the SDK's `inngest/node` handler, plus a ledger of the side effects steps performed.
//
// Usage: node app_v4.mjs [PORT]   (or PORT=...; 0 picks a free port). Prints
// "<app> listening on http://127.0.0.1:NNNNN" once it accepts connections.
// GET /_test/ledger lists what the steps did (kind, key, time in seconds, extras), so tests can
// check memoization, retries and ordering from the app's side.
import http from "node:http";

export const LEDGER = [];

export function record(kind, key, extra = {}) {
  LEDGER.push({ kind, key, t: Date.now() / 1000, ...extra });
}

export function work(ms) {
  // Simulated work *inside* a step (the seed's rule is no timers outside steps).
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export function listen(name, inngestHandler) {
  const port = Number(process.argv[2] ?? process.env.PORT ?? 3000);
  const host = process.env.HOST ?? "127.0.0.1";
  const server = http.createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (path === "/_test/ledger") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(LEDGER));
      return;
    }
    if (path === "/api/inngest") {
      inngestHandler(req, res);
      return;
    }
    res.writeHead(404, { "content-type": "application/json" });
    res.end(JSON.stringify({ error: `no route ${path}` }));
  });
  server.listen(port, host, () => {
    console.log(`${name} listening on http://${host}:${server.address().port}`);
  });
  for (const signal of ["SIGTERM", "SIGINT"]) {
    process.on(signal, () => process.exit(0));
  }
  return server;
}
