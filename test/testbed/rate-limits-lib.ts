// rate-limits-lib.ts — rate limits through the library, on a real sandbox; prints one JSON line.
//   node rate-limits-lib.js live WORLD_IP   iperf3 world->guest (-R, 4 s, 0.5 s intervals) under
//                                           limitIngress("50mbit"), lowered to 20mbit by
//                                           setLimits() 2 s in, on the flow already open:
//                                           {"intervals": [[start, Mbit/s], ...], "limits": {...}}
//   node rate-limits-lib.js dns WORLD_IP    20 queries one after the other (dig, UDP), then 3 over
//                                           TCP, under limitDnsRate(1, 5) with WORLD_IP as upstream:
//                                           {"udp": [status, ...], "tcp": [status, ...], "metrics":
//                                           "...", "events": [limit-hit events]}
import { Writable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { Sandbox, type GatewayEvent } from "../../orchestrator/src/index.js";

const [mode, worldIp] = process.argv.slice(2);
const env = { PATH: "/usr/sbin:/usr/bin:/sbin:/bin" };

/** A stream that keeps what is written to it. */
function collector(): { stream: Writable; text: () => string } {
  const chunks: Buffer[] = [];
  return { stream: new Writable({ write(c: Buffer, _e, cb) { chunks.push(c); cb(); } }), text: () => Buffer.concat(chunks).toString() };
}

if (mode === "live") {
  const sandbox = await Sandbox.builder(`limits-live-${process.pid}`).network((n) => n.dnsForward("none").limitIngress("50mbit")).create();
  const out = collector();
  const err = collector();
  const done = sandbox.run(["iperf3", "-c", worldIp!, "-R", "-t", "4", "-i", "0.5", "--json"], { stdout: out.stream, stderr: err.stream, env });
  await sleep(2000);
  const limits = await sandbox.setLimits({ ingress: "20mbit" });
  const status = await done;
  await sandbox.destroy({ graceMs: 0 });
  if (status !== 0) throw new Error(`iperf3 exited ${status}: ${err.text()}${out.text()}`);
  const r = JSON.parse(out.text()) as { intervals: { sum: { start: number; bits_per_second: number } }[] };
  process.stdout.write(JSON.stringify({ intervals: r.intervals.map((i) => [i.sum.start, i.sum.bits_per_second / 1e6]), limits }) + "\n");
} else if (mode === "dns") {
  const events: GatewayEvent[] = [];
  const sandbox = await Sandbox.builder(`limits-dns-${process.pid}`)
    .network((n) => n.dns((d) => d.nameservers([worldIp!])).limitDnsRate(1, 5).onEvent((e) => { if (e.kind === "limit-hit") events.push(e); }))
    .create();
  const out = collector();
  const status = (args: string) => `dig ${args} +tries=1 +time=3 +noall +comments allowed.test | sed -n 's/.*status: \\([A-Z]*\\).*/\\1/p'`;
  await sandbox.run(["sh", "-c", `for i in $(seq 20); do ${status("")}; done; echo tcp; for i in 1 2 3; do ${status("+tcp")}; done`], { stdout: out.stream, stderr: process.stderr, env });
  await sleep(1200); // the limits are looked at every second
  const metrics = await sandbox.metrics();
  await sandbox.destroy({ graceMs: 0 });
  const [udp, tcp] = out.text().split("tcp\n");
  process.stdout.write(JSON.stringify({ udp: udp!.trim().split("\n"), tcp: tcp!.trim().split("\n"), metrics, events }) + "\n");
} else {
  throw new Error(`unknown mode ${mode}`);
}
