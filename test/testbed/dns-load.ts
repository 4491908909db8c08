// dns-load.ts — a small DNS load generator: COUNT A queries for NAME to SERVER (port 53) with
// CONCURRENCY outstanding, one UDP socket; prints JSON {qps, p50us, p99us, answered, lost}.
//   node dns-load.js SERVER NAME COUNT CONCURRENCY
import { createSocket } from "node:dgram";

const [server, name, countText, concText] = process.argv.slice(2);
const count = Number(countText);
const concurrency = Number(concText);

function query(id: number): Buffer {
  const labels = name!.split(".").flatMap((l) => [l.length, ...Buffer.from(l)]);
  return Buffer.from([id >> 8, id & 255, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, ...labels, 0, 0, 1, 0, 1]);
}

const sock = createSocket(server!.includes(":") ? "udp6" : "udp4");
const sentAt = new Map<number, number>();
const lat: number[] = [];
let next = 0;
let lost = 0;
const t0 = performance.now();
const done = new Promise<void>((resolve) => {
  const send = () => {
    if (next >= count) { if (sentAt.size === 0) resolve(); return; }
    const id = next++ & 0xffff;
    sentAt.set(id, performance.now());
    sock.send(query(id), 53, server);
  };
  sock.on("message", (m) => {
    const id = m.readUInt16BE(0);
    const t = sentAt.get(id);
    if (t === undefined) return;
    sentAt.delete(id);
    lat.push((performance.now() - t) * 1000);
    send();
  });
  // Queries lost for 2 s are given up (and replaced) so the run always ends.
  setInterval(() => {
    const now = performance.now();
    for (const [id, t] of sentAt) if (now - t > 2000) { sentAt.delete(id); lost++; send(); }
  }, 200).unref();
  for (let i = 0; i < concurrency; i++) send();
});
await done;
const secs = (performance.now() - t0) / 1000;
sock.close();
lat.sort((a, b) => a - b);
const q = (p: number) => Math.round(lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] ?? NaN);
process.stdout.write(JSON.stringify({ qps: Math.round(lat.length / secs), p50us: q(0.5), p99us: q(0.99), answered: lat.length, lost }) + "\n");
