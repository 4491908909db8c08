// policy-live.ts — replace the policy of a running sandbox (library API) and show that new
// connections see the new one at once:
//   node policy-live.js HOST PORT   prints "before=<result> after=<result> back=<result>"
import { spawnSync } from "node:child_process";
import { Sandbox, NetworkPolicy } from "../../orchestrator/src/index.js";

const [host, port] = process.argv.slice(2);
const sandbox = await Sandbox.builder("live").network((n) => n.policy(NetworkPolicy.publicOnly()).denyResponse("reject").dnsForward("none")).create();
const probe = () => {
  const r = spawnSync("ip", ["netns", "exec", sandbox.netns, process.execPath, new URL("./tcp-clients.js", import.meta.url).pathname, "connect", host!, port!, "3000"], { encoding: "utf8" });
  return r.stdout.trim();
};
const before = probe();
sandbox.setPolicy(NetworkPolicy.allowAll());
const after = probe();
sandbox.setPolicy(NetworkPolicy.publicOnly());
const back = probe();
await sandbox.destroy();
process.stdout.write(`before=${before} after=${after} back=${back}\n`);
