// embedder-exit.ts — an embedder that ends without destroy(): a sandbox runs a command (which
// starts a daemon of its own), then the process ends as HOW says:
//   exit       process.exit(3)
//   throw      an uncaught exception (Node exits 1)
//   sigterm    SIGTERM with Node's default action (no handler: no exit hooks run)
//   node embedder-exit.js HOW POOL MARKER
import { NetnsSandbox } from "../../orchestrator/src/index.js";

const [how, pool, marker] = process.argv.slice(2);
const sandbox = await NetnsSandbox.create({ dnsForward: "none", ipv4Pool: pool });
sandbox.spawn(["sh", "-c", `setsid sleep ${marker}1 </dev/null >/dev/null 2>&1 & exec sleep ${marker}0`], "ignore");
process.stdout.write(`up ${sandbox.netns}\n`);
setTimeout(() => {
  if (how === "exit") process.exit(3);
  if (how === "throw") throw new Error("an embedder's bug");
  if (how === "sigterm") process.kill(process.pid, "SIGTERM");
}, 300);
setTimeout(() => {}, 60000);
