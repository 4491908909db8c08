// fleet-child.ts — one process holding N idle namespace sandboxes, as an embedder's fleet would
// (run by fleet.ts inside the test world's host namespace). Prints one JSON line:
//   { n, rssBaseMiB, rssMiB, supervisorPssMiB, threadsBase, threads, createMs: [...], pings, destroyMs: [...] }
//   node fleet-child.js N
import { readFileSync, readdirSync } from "node:fs";
import { availableParallelism } from "node:os";
import { Writable } from "node:stream";
import { NetnsSandbox } from "../orchestrator/src/index.js";

const n = Number(process.argv[2] ?? 10);

/**
 * The proportional set size of this process's sandbox supervisors (moat-sandbox: each holds its
 * sandbox's namespaces, containment.ts), in MiB: their own cost, shared pages split.
 */
function supervisorsPss(): number {
  let kib = 0;
  for (const pid of readdirSync("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      const after = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(after[1]) !== process.pid || !stat.includes("(moat-sandbox)")) continue;
      kib += Number(/^Pss:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, "utf8"))![1]);
    } catch { /* gone */ }
  }
  return kib / 1024;
}

function status(): { rss: number; threads: number } {
  const s = readFileSync("/proc/self/status", "utf8");
  return { rss: Number(/VmRSS:\s+(\d+)/.exec(s)![1]) / 1024, threads: Number(/Threads:\s+(\d+)/.exec(s)![1]) };
}

// Warm: the engine module compiled, the pool's workers started (one per core: a fleet's steady
// state; their threads and isolates are the process's, not any sandbox's).
const warm: NetnsSandbox[] = [];
for (let i = 0; i < availableParallelism(); i++) warm.push(await NetnsSandbox.create({ dnsForward: "none" }));
for (const w of warm) await w.destroy();
global.gc?.();
const base = status();

const boxes: NetnsSandbox[] = [];
const createMs: number[] = [];
for (let i = 0; i < n; i++) {
  const t0 = performance.now();
  boxes.push(await NetnsSandbox.create({ dnsForward: "none" }));
  createMs.push(performance.now() - t0);
}
await new Promise((r) => setTimeout(r, 1000)); // idle: what the fleet costs at rest
global.gc?.();
const full = status();
const supervisorPssMiB = supervisorsPss();

let pings = 0;
const nowhere = () => new Writable({ write: (_c, _e, cb) => cb() });
for (const b of boxes) {
  if ((await b.run(["ping", "-c", "1", "-W", "2", b.addresses.gatewayIp4], { stdout: nowhere(), stderr: nowhere() })) === 0) pings++;
}

const destroyMs: number[] = [];
for (const b of boxes) {
  const t0 = performance.now();
  await b.destroy();
  destroyMs.push(performance.now() - t0);
}
process.stdout.write(`${JSON.stringify({ n, rssBaseMiB: base.rss, rssMiB: full.rss, supervisorPssMiB, threadsBase: base.threads, threads: full.threads, createMs, pings, destroyMs })}\n`);
