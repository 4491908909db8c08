// sandbox-run.ts — run a command in a moat sandbox through the library (not the CLI), then
// report what tests need to see inside the engine: after the command exits, wait (up to 6 s:
// TIME_WAIT-like lingering is 2 s) for the flow table to drain, and print on stderr
//   __MOAT__ {"code":..,"counters":{..},"flows":{..},"sockets":N}
//   node sandbox-run.js [--max-tcp N] -- CMD [ARGS...]
import { NetnsSandbox } from "../../orchestrator/src/index.js";

const argv = process.argv.slice(2);
const sep = argv.indexOf("--");
const cmd = argv.slice(sep + 1);
const sandbox = await NetnsSandbox.create({ dnsForward: "none" });
const child = sandbox.spawn(cmd, ["ignore", "inherit", "inherit"]);
const code = await new Promise<number>((r) => child.on("exit", (c, s) => r(c ?? (s ? 128 : 1))));
const deadline = Date.now() + 6000;
while (sandbox.flowStats().flows > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
const report = { code, counters: sandbox.counters(true), flows: sandbox.flowStats(), sockets: await sandbox.liveSockets() };
await sandbox.destroy();
process.stderr.write(`__MOAT__ ${JSON.stringify(report)}\n`);
process.exit(0);
