// events-lib.ts — the library's one event stream, from a real sandbox: prints one JSON line
// {"option": [...], "listener": [...], "metrics": "..."} with every event the onEvent option saw,
// every event an on("event") listener (subscribed after create) saw, and a metrics scrape.
//   node events-lib.js WORLD_IP PRIVATE_IP ECHO_PORT
// What it does in the sandbox: a connection to PRIVATE_IP (denied by public-only), four held
// connections to WORLD_IP:ECHO_PORT with maxConnections 2 (two refused: a limit), a port
// published and withdrawn.
import { PassThrough } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { NetnsSandbox, type GatewayEvent } from "../../orchestrator/src/index.js";

const [worldIp, privateIp, echoPort] = process.argv.slice(2);
const option: GatewayEvent[] = [];
const listener: GatewayEvent[] = [];
const sandbox = await NetnsSandbox.create({ dnsForward: "none", name: `events-${process.pid}`, maxConnections: 2, onEvent: (e) => option.push(e) });
sandbox.on("event", (e) => listener.push(e));
const sink = new PassThrough();
sink.resume();
const env = { PATH: "/usr/sbin:/usr/bin:/sbin:/bin" };
await sandbox.run(["sh", "-c", `socat -u /dev/null TCP:${privateIp}:80,connect-timeout=1 2>/dev/null; true`], { stdout: sink, stderr: sink, env });
// Four connections held open at once: the third and fourth are over the limit.
await sandbox.run(["sh", "-c", `for i in 1 2 3 4; do (sleep 2 | socat - TCP:${worldIp}:${echoPort},connect-timeout=1 >/dev/null 2>&1 &); sleep 0.2; done; sleep 2.5`], { stdout: sink, stderr: sink, env });
const p = await sandbox.publish(0, 8080);
await sandbox.unpublish(p.host);
await sleep(1200); // the limit check runs every second
const metrics = await sandbox.metrics();
await sandbox.destroy({ graceMs: 0 });
process.stdout.write(JSON.stringify({ option, listener, metrics }) + "\n");
