// engine-pool.ts — three sandboxes of one process on ONE engine worker (setEngineThreads(1)),
// one of them hostile: it floods its link with malformed frames and fills its UDP flow table.
// Its neighbours must not notice. Prints one JSON line of what was seen:
//   node engine-pool.js WORLD_IP4 CLIENTS_JS INJECT_PY
import { NetnsSandbox, setEngineThreads, engineWorkers } from "../../orchestrator/src/index.js";

type Sandbox = NetnsSandbox;

const [world, clients, inject] = process.argv.slice(2) as [string, string, string];
setEngineThreads(1);

/** Run `command` in `s`; its exit code and stdout. */
async function run(s: Sandbox, command: string[]): Promise<{ code: number; out: string }> {
  let out = "";
  const c = s.spawn(command, ["ignore", "pipe", "inherit"]);
  c.stdout!.on("data", (d: Buffer) => (out += d));
  const code = await new Promise<number>((r) => c.on("close", (n) => r((n as number | null) ?? -1)));
  return { code, out: out.trim() };
}
const udp = (s: Sandbox, text: string) => run(s, [process.execPath, clients, "udp", world, "7", text]);

const hostile = await NetnsSandbox.create({ name: "pool-hostile", maxUdpFlows: 16, dnsForward: "none" });
const a = await NetnsSandbox.create({ name: "pool-a", dnsForward: "none" });
const b = await NetnsSandbox.create({ name: "pool-b", dnsForward: "none" });
const shared = engineWorkers();
const before = { a: await udp(a, "a-before"), b: await udp(b, "b-before") };
// The hostile one: 20000 malformed frames while holding more UDP flows than its table takes.
const gw = hostile.addresses.gatewayMac;
const flood = run(hostile, ["sh", "-c", `${process.execPath} ${clients} udp-many ${world} 7 64 >/dev/null 2>&1; /usr/bin/python3 ${inject} eth0 ${gw} 20000 ${hostile.addresses.guestIp4}`]);
// Its neighbours, meanwhile and after.
const during = { a: await udp(a, "a-during"), b: await udp(b, "b-during") };
const flooded = await flood;
const after = { a: await udp(a, "a-after"), b: await udp(b, "b-after") };
const drops = (s: Sandbox) => Object.fromEntries(Object.entries(s.counters(true)).filter(([k]) => k.startsWith("DROP_")).map(([k, v]) => [k, Number(v)]));
const counters = { hostile: drops(hostile), a: drops(a), b: drops(b) };
await hostile.destroy();
const afterDestroy = { a: await udp(a, "a-alone"), workers: engineWorkers() };
await Promise.all([a.destroy(), b.destroy()]);
process.stdout.write(JSON.stringify({ shared, before, during, flooded, after, counters, afterDestroy, end: engineWorkers() }) + "\n");
