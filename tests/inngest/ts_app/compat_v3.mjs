// The compatibility app on the official TypeScript SDK v3 (`inngest@3`), served with
// `inngest/node`; its functions are in compat_common.mjs. `node compat_v3.mjs [PORT]`.
// v3 has no race mode for parallel steps.
import * as sdk from "inngest-v3";
import { Inngest } from "inngest-v3";
import { serve } from "inngest-v3/node";
import { compatFunctions } from "./compat_common.mjs";
import { listen } from "./common.mjs";

const appId = process.env.COMPAT_APP_ID ?? "ts-compat-v3";
const inngest = new Inngest({ id: appId });
const define = (config, trigger, handler) => inngest.createFunction(config, trigger, handler);

const functions = compatFunctions(appId, define, sdk, null);
listen(appId, serve({ client: inngest, functions }));
