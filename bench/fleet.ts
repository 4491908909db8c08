// fleet.ts — what a sandbox costs a fleet: N idle namespace sandboxes in one process, against N
// slirp4netns and N pasta processes (each serving a namespace of its own), in one run.
//
//   sudo node dist/bench/fleet.js [--n 10,100] [--peers-max 100] [--no-fairness]
//
// moat's figures come from one embedder process (bench/fleet-child.ts) inside the test world's
// host namespace, which has no route off this machine: RSS and threads added per sandbox (after a
// warm-up sandbox, so the engine's compiled module is not counted), create and destroy times
// (p50/p99), and how many sandboxes answered a ping to their gateway. The peers' figures are the
// summed RSS of their N processes (one per sandbox, by their design) and their start time.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { World, WORLD_IP4, TESTBED_JS } from "../test/testbed/world.js";
import { benchArgs, option, sleep, fmt, printTable } from "./harness.js";
import { systemTestSkipReason, hasTool } from "../test/testbed/world.js";

benchArgs(["n", "peers-max"], ["no-fairness"]);

const skip = systemTestSkipReason();
if (skip) {
  console.error(`fleet bench: cannot run: ${skip}`);
  process.exit(2);
}
const sizes = option("n", "10,100").split(",").map(Number);
const PEERS_MAX = Number(option("peers-max", "100"));
const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((xs.length * p) / 100))]!;
const rssMiB = (pid: number) => { try { return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) / 1024; } catch { return 0; } };
const childJs = new URL("./fleet-child.js", import.meta.url).pathname;

interface MoatFigures { n: number; rssBaseMiB: number; rssMiB: number; supervisorPssMiB: number; threadsBase: number; threads: number; createMs: number[]; pings: number; destroyMs: number[] }

interface Fairness { rrIdle: [number, number]; rrBesideFlood: [number, number]; aggregate: Record<string, number> }
let fairness: Fairness | undefined;

const world = World.create();
const rows: string[][] = [["", "N", "MiB / sandbox", "+ supervisor PSS MiB", "threads / sandbox", "create ms p50 / p99", "destroy ms p50 / p99", "pings answered"]];
try {
  for (const n of sizes) {
    process.stderr.write(`fleet bench: moat, ${n} sandboxes...\n`);
    const out = execFileSync("ip", ["netns", "exec", world.host, process.execPath, "--expose-gc", childJs, String(n)], { encoding: "utf8", timeout: 60000 + n * 5000, maxBuffer: 16 << 20 });
    const m = JSON.parse(out.trim().split("\n").pop()!) as MoatFigures;
    rows.push(["moat (one process)", String(n), fmt((m.rssMiB - m.rssBaseMiB) / n), fmt(m.supervisorPssMiB / n), fmt((m.threads - m.threadsBase) / n), `${fmt(pct(m.createMs, 50), 0)} / ${fmt(pct(m.createMs, 99), 0)}`,
      `${fmt(pct(m.destroyMs, 50), 0)} / ${fmt(pct(m.destroyMs, 99), 0)}`, `${m.pings}/${n}`]);
    for (const [peer, start] of [["slirp4netns", startSlirp], ["pasta", startPasta]] as const) {
      if (!hasTool(peer === "pasta" ? "pasta" : "slirp4netns", "--version")) continue;
      // A process each, at a constant cost each: past PEERS_MAX (1000 pasta processes would take
      // ~30 GiB) the figures at PEERS_MAX stand for them.
      if (n > PEERS_MAX) continue;
      process.stderr.write(`fleet bench: ${peer}, ${n} processes...\n`);
      const procs: ChildProcess[] = [];
      const servers: number[] = [];
      const times: number[] = [];
      try {
        for (let i = 0; i < n; i++) {
          const t0 = performance.now();
          const { server, others } = await start(i);
          times.push(performance.now() - t0);
          procs.push(server, ...others);
          servers.push(server.pid!);
        }
        await sleep(1000);
        const total = servers.reduce((a, pid) => a + rssMiB(pid), 0);
        rows.push([`${peer} (a process each)`, String(n), fmt(total / n), "-", "1 process", `${fmt(pct(times, 50), 0)} / ${fmt(pct(times, 99), 0)}`, "-", "-"]);
      } finally {
        for (const p of procs) try { p.kill("SIGKILL"); } catch { /* gone */ }
        await sleep(300);
      }
    }
  }
  if (!process.argv.includes("--no-fairness")) {
    // Eight sandboxes on ONE engine thread: a quiet one's round trips beside a flooding one, and
    // what 1, 2 and 8 busy ones move together (fleet-fair.ts).
    process.stderr.write("fleet bench: fairness on one engine thread...\n");
    await world.startServer("tcp-echo", 7);
    for (let i = 0; i < 8; i++) await world.startIperf3(5201 + i);
    const out = execFileSync("ip", ["netns", "exec", world.host, process.execPath, new URL("./fleet-fair.js", import.meta.url).pathname, WORLD_IP4, `${TESTBED_JS}tcp-clients.js`], { encoding: "utf8", timeout: 180000 });
    fairness = JSON.parse(out.trim().split("\n").pop()!) as Fairness;
  }
} finally {
  world.teardown();
}
printTable(rows);
if (fairness) {
  const f = fairness;
  console.log(`\nOne engine thread, 8 sandboxes: a quiet sandbox's 1-byte round trip p50/p99 ${f.rrIdle[0]}/${f.rrIdle[1]} us alone, ` +
    `${f.rrBesideFlood[0]}/${f.rrBesideFlood[1]} us beside a neighbour uploading flat out (${fmt(f.rrBesideFlood[0] / f.rrIdle[0], 2)}x p50); ` +
    `aggregate upload Gbit/s with 1, 2, 8 busy: ${[1, 2, 8].map((b) => fmt(f.aggregate[b] ?? NaN, 2)).join(", ")}`);
}
console.log("(moat: RSS and threads added per idle sandbox in one embedder process, after warming the engine pool, and the PSS of each sandbox's supervisor process (its namespaces' holder); peers: the RSS of the process serving each namespace, start = until it serves)");

/** slirp4netns serving a fresh network namespace (held by `unshare -n sleep`), until it is ready. */
// (`ip netns exec` and `unshare` exec their command: each spawned pid is the program named last.)
async function startSlirp(_i: number): Promise<{ server: ChildProcess; others: ChildProcess[] }> {
  const holder = spawn("ip", ["netns", "exec", world.host, "unshare", "-n", "sleep", "3600"], { stdio: "ignore" });
  for (let i = 0; i < 100 && readFileSync(`/proc/${holder.pid}/comm`, "utf8").trim() !== "sleep"; i++) await sleep(5);
  const slirp = spawn("ip", ["netns", "exec", world.host, "slirp4netns", "--configure", "--mtu=65520", "--ready-fd=3", String(holder.pid), "tap0"],
    { stdio: ["ignore", "ignore", "ignore", "pipe"] });
  await new Promise<void>((resolve) => { slirp.stdio[3]!.once("data", () => resolve()); slirp.once("exit", () => resolve()); });
  return { server: slirp, others: [holder] };
}

/** pasta with a namespace of its own running `sleep`, until it has configured it. */
async function startPasta(_i: number): Promise<{ server: ChildProcess; others: ChildProcess[] }> {
  const p = spawn("ip", ["netns", "exec", world.host, "pasta", "--runas", "0", "--config-net", "-f", "--", "sleep", "3600"], { stdio: ["ignore", "pipe", "ignore"] });
  for (let i = 0; i < 200 && !(await hasChild(p.pid!)); i++) await sleep(10);
  return { server: p, others: [] };
}

async function hasChild(pid: number): Promise<boolean> {
  try { return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().length > 0; } catch { return false; }
}
