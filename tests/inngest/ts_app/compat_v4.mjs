// The compatibility app on the official TypeScript SDK v4 (`inngest@4`), served with
// `inngest/node`; its functions are in compat_common.mjs. `node compat_v4.mjs [PORT]`.
import * as sdk from "inngest";
import { Inngest } from "inngest";
import { serve } from "inngest/node";
import { compatFunctions } from "./compat_common.mjs";
import { listen } from "./common.mjs";

const appId = process.env.COMPAT_APP_ID ?? "ts-compat-v4";
const inngest = new Inngest({ id: appId });
const define = (config, trigger, handler) =>
  inngest.createFunction({ ...config, triggers: [trigger] }, handler);
// v4: `group.parallel` gives every step inside it `parallelMode: "race"`.
const race = (step, group, start) => group.parallel(async () => Promise.race(start()));

const functions = compatFunctions(appId, define, sdk, race);
listen(appId, serve({ client: inngest, functions }));
