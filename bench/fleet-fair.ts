// fleet-fair.ts — sandboxes sharing one engine thread under load (run by fleet.ts inside the test
// world's host namespace, the world serving an echo on 7 and iperf3 on 5201). Prints one JSON
// line: { rrIdle, rrBesideFlood: [p50, p99] µs of a quiet sandbox's 1-byte round trips, alone and
// while a neighbour uploads flat out; aggregate: { busy: Gbit/s } with 1, 2 and 8 busy sandboxes }
//   node fleet-fair.js WORLD_IP4 TCP_CLIENTS_JS
import { NetnsSandbox, setEngineThreads } from "../orchestrator/src/index.js";

const [world, clients] = process.argv.slice(2) as [string, string];
setEngineThreads(1); // every sandbox here on the same engine thread: the case fairness is about

async function out(s: NetnsSandbox, command: string[]): Promise<string> {
  let text = "";
  const c = s.spawn(command, ["ignore", "pipe", "inherit"]);
  c.stdout!.on("data", (d: Buffer) => (text += d));
  await new Promise((r) => c.on("close", r));
  return text;
}
const rr = async (s: NetnsSandbox): Promise<[number, number]> => {
  const m = /p50=(\d+) p99=(\d+)/.exec(await out(s, [process.execPath, clients, "rr", world, "7", "2000"]));
  if (!m) throw new Error("rr printed nothing");
  return [Number(m[1]), Number(m[2])];
};
const upload = (s: NetnsSandbox, seconds: number) => out(s, ["iperf3", "-J", "-c", world, "-p", "5201", "-t", String(seconds), "-P", "2"]);
const gbps = (json: string) => (JSON.parse(json) as { end: { sum_received: { bits_per_second: number } } }).end.sum_received.bits_per_second / 1e9;

const boxes: NetnsSandbox[] = [];
for (let i = 0; i < 8; i++) boxes.push(await NetnsSandbox.create({ dnsForward: "none" }));
const [quiet, flood] = [boxes[0]!, boxes[1]!];
const rrIdle = await rr(quiet);
const flooding = upload(flood, 8);
await new Promise((r) => setTimeout(r, 1500)); // the flood at full rate
const rrBesideFlood = await rr(quiet);
await flooding;
// Aggregate throughput with 1, 2 and 8 uploading at once. An iperf3 server takes one client at a
// time, so each busy sandbox uploads to a server port of its own (fleet.ts starts eight).
const aggregate: Record<string, number> = {};
for (const busy of [1, 2, 8]) {
  const runs = await Promise.all(boxes.slice(0, busy).map((b, i) => out(b, ["iperf3", "-J", "-c", world, "-p", String(5201 + i), "-t", "4"])));
  aggregate[busy] = runs.reduce((a, j) => a + gbps(j), 0);
}
await Promise.all(boxes.map((b) => b.destroy()));
process.stdout.write(JSON.stringify({ rrIdle, rrBesideFlood, aggregate }) + "\n");
