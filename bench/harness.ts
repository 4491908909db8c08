// harness.ts — what the side-by-side network benchmarks (peers.ts, vm.ts) share: command-line
// options, the test world with its servers, iperf3 and the connection-rate figure, and the
// printed tables.
//
// The world (test/testbed/world.ts) keeps all traffic on this machine: an iperf3 server
// (`iperf3 -s -D`, port 5201) and a TCP echo server (port 7) run at WORLD_IP4 in the world
// namespace, reached through a host namespace that has no route off the machine.
import { execFileSync, type ChildProcess } from "node:child_process";
import { readFileSync, rmSync } from "node:fs";
import { World, systemTestSkipReason } from "../test/testbed/world.js";

/**
 * A bench's command line, judged before anything is set up: `--help` (or -h) prints the bench's
 * own header comment (its usage and what it measures) and exits; an option it does not take, or
 * one without its value, is refused (a typo would otherwise be ignored, and the bench run for
 * minutes with its defaults). `options` take a value; `flags` do not.
 */
export function benchArgs(options: readonly string[], flags: readonly string[] = []): void {
  const args = process.argv.slice(2);
  const script = process.argv[1]!;
  if (args.includes("--help") || args.includes("-h")) {
    const head: string[] = [];
    for (const line of readFileSync(script, "utf8").split("\n")) {
      if (!line.startsWith("//")) break;
      head.push(line.replace(/^\/\/ ?/, ""));
    }
    process.stdout.write(`${head.join("\n")}\n`);
    process.exit(0);
  }
  const refuse = (why: string) => {
    process.stderr.write(`${script.split("/").pop()}: ${why} (options: ${[...options, ...flags].map((o) => `--${o}`).join(" ") || "none"}; see --help)\n`);
    process.exit(2);
  };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const name = a.startsWith("--") ? a.slice(2) : undefined;
    if (name !== undefined && flags.includes(name)) continue;
    if (name === undefined || !options.includes(name)) refuse(`unknown ${name === undefined ? "argument" : "option"} ${JSON.stringify(a)}`);
    if (i + 1 >= args.length || args[i + 1]!.startsWith("--")) refuse(`${a} needs a value`);
    i++;
  }
}

/** `--NAME VALUE` from this process's arguments, or dflt. */
export function option(name: string, dflt: string): string {
  const args = process.argv.slice(2);
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1]! : dflt;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function killTree(p: ChildProcess | undefined): void {
  try { p?.kill("SIGTERM"); } catch { /* gone */ }
}

/** Runs argv to its end; its stdout (throws on a non-zero exit, with stderr in the error). */
export function run(argv: string[], timeoutMs = 120000, input?: string): string {
  return execFileSync(argv[0]!, argv.slice(1), { encoding: "utf8", timeout: timeoutMs, stdio: [input === undefined ? "ignore" : "pipe", "pipe", "pipe"], input });
}

/** The iperf3 client command: SECONDS toward target:port, JSON out; reverse (-R): the server sends. */
export function iperfClient(target: string, port: number, seconds: number, reverse: boolean): string[] {
  return ["iperf3", "-J", "-c", target, "-p", String(port), "-t", String(seconds), ...(reverse ? ["-R"] : [])];
}

/** Gbit/s at the receiver, from iperf3 -J's output. */
export function iperfGbps(json: string): number {
  const out = JSON.parse(json) as { end: { sum_received: { bits_per_second: number } } };
  return out.end.sum_received.bits_per_second / 1e9;
}

/** Connections per second from a connection-rate client's "crr N/s" line. */
export function crrRate(out: string): number {
  const m = /crr (\d+)\/s/.exec(out);
  if (!m) throw new Error(`no "crr N/s" in the client's output: ${out.trim()}`);
  return Number(m[1]);
}

/**
 * The test world with the iperf3 server and the TCP echo server running in it; exits (status 2)
 * saying why when system tests cannot run here.
 */
export async function benchWorld(bench: string): Promise<World> {
  const skip = systemTestSkipReason();
  if (skip) {
    console.error(`${bench}: cannot run: ${skip}`);
    process.exit(2);
  }
  const world = World.create();
  try {
    await world.startServer("tcp-echo", 7);
    execFileSync("ip", ["netns", "exec", world.world, "iperf3", "-s", "-D", "-I", iperfPidFile(world)]);
    await sleep(300);
  } catch (e) {
    endBenchWorld(world);
    throw e;
  }
  return world;
}

const iperfPidFile = (world: World) => `/tmp/moat-bench-iperf3-${world.world}.pid`;

export function endBenchWorld(world: World): void {
  try {
    process.kill(Number(readFileSync(iperfPidFile(world), "utf8")), "SIGTERM");
    rmSync(iperfPidFile(world), { force: true });
  } catch { /* not started, or gone */ }
  world.teardown();
}

/** The cores this machine's kernel schedules on (one cpuN line each in /proc/stat). */
export function machineCores(): number {
  return readFileSync("/proc/stat", "utf8").split("\n").filter((l) => /^cpu\d/.test(l)).length;
}

/**
 * The whole machine's CPU from now on, from /proc/stat's aggregate line: `busyCores()` is the
 * average number of cores busy since the call (user, system, interrupts; not idle, I/O wait or
 * time stolen by the hypervisor). What a contender without a process of its own costs (veth's
 * work is all in the kernel, in whichever thread sends), and what every party of a transfer
 * costs together. Gbit per busy core-second compares paths by their work per byte, which is what
 * caps a transfer once every core is busy.
 */
export function machineCpu(): { busyCores(): number } {
  const sample = () => readFileSync("/proc/stat", "utf8").split("\n", 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
  const cores = machineCores();
  const t0 = sample();
  return {
    busyCores() {
      // fields: user nice system idle iowait irq softirq steal (then guest time, already in user)
      const d = sample().slice(0, 8).map((v, i) => v - t0[i]!);
      const all = d.reduce((a, b) => a + b, 0);
      const free = d[3]! + d[4]! + d[7]!;
      return all > 0 ? ((all - free) / all) * cores : 0;
    },
  };
}

/** The median of `xs` (the mean of the middle two when their count is even). */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return (s[(s.length - 1) >> 1]! + s[s.length >> 1]!) / 2;
}

/** A figure with d decimals, "-" when there is none. */
export function fmt(v: number | undefined, d = 2): string {
  return v === undefined || !Number.isFinite(v) ? "-" : v.toFixed(d);
}

/** Columns padded to their widest cell; the first row is the header. */
export function printTable(t: string[][]): void {
  const w = t[0]!.map((_, i) => Math.max(...t.map((row) => row[i]!.length)));
  for (const row of t) console.log(row.map((c, i) => c.padEnd(w[i]!)).join("  "));
}

/**
 * The network namespace of the sandbox that moat process `pid` created, read from its slot lease
 * (never "the first moat namespace there is": a concurrent run would be measured by mistake).
 */
export async function sandboxNetns(pid: number, timeoutMs = 15000): Promise<string> {
  return (await sandboxNetnses(pid, 1, timeoutMs))[0]!;
}

/** The network namespaces of the `count` sandboxes moat process `pid` (a daemon) created, from their leases. */
export async function sandboxNetnses(pid: number, count: number, timeoutMs = 15000): Promise<string[]> {
  const { leaseFiles } = await import("../orchestrator/src/sandbox/leases.js");
  const { readOwned } = await import("../orchestrator/src/sandbox/ownership.js");
  const { existsSync } = await import("node:fs");
  for (const end = Date.now() + timeoutMs; Date.now() < end;) {
    const found: string[] = [];
    for (const f of leaseFiles()) {
      const r = readOwned(f.path);
      if (r && r.pid === pid && typeof r.netns === "string" && existsSync(`/run/netns/${r.netns}`)) found.push(r.netns);
    }
    if (found.length >= count) return found.sort();
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`moat (pid ${pid}) made fewer than ${count} sandbox namespaces in ${timeoutMs} ms`);
}
