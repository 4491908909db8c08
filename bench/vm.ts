// vm.ts — a microVM guest's network through moat against QEMU's user networking (libslirp) and
// passt, side by side in one run (issue 13, DESIGN §11).
//
//   sudo node dist/bench/vm.js [--time SECONDS] [--only moat-vhost-user,moat-stream,qemu-user,passt]
//                              [--accel auto|tcg|kvm] [--rounds N]
//
// Every contender boots the same guest image (image.ts, with iperf3 and moat-crr below added as
// extra binaries) on the same QEMU machine (q35, 256 MiB, 1 vCPU, the same accelerator: "auto"
// picks KVM only where a guest boots on it, TCG on this machine) with the same NIC:
// virtio-net-pci,host_mtu=65520,vectors=0. vectors=0 (INTx, no MSI-X) is what moat's vhost-user
// link needs under TCG (QEMU 7.2 crashes setting up MSI-X for a vhost-user device there); every
// contender gets it so that the guest's driver does the same work everywhere.
//   moat-vhost-user  VmSandbox, link "vhost-user": moat's gateway serves the virtqueues in the
//                    guest's shared memory
//   moat-stream      VmSandbox, link "stream": QEMU's -netdev stream to moat's gateway
//   qemu-user        QEMU's -netdev user (libslirp, inside QEMU). Not restrict=on: that lets the
//                    guest reach only guestfwd targets, which QEMU serves through one chardev (or a
//                    program per connection), not the path being measured; the namespace below is
//                    what keeps its traffic home
//   passt            passt --runas 0, QEMU connecting to its socket with -netdev stream;
//                    --no-map-gw: the host namespace's gateway is the world host itself, which
//                    passt would otherwise map to the host's loopback
// Each contender's QEMU, moat gateway or passt runs in the test world's host namespace (this
// script runs itself there, one process per contender, as world.ts's moat() does), which has no
// route off this machine: the guest reaches only the world's servers at 203.0.113.10.
//
// Measured from inside the guest, one contender at a time:
//   - iperf3 guest->world and world->guest (-R), Gbit/s at the receiver, SECONDS each
//   - connections per second: moat-crr (C, static, below) connects, writes 1 byte, reads the echo
//     and closes, in a loop for 3 s against the world's echo server, timed by the guest's clock:
//     the exchange peers.ts's crr makes, in one process (a busybox nc per connection would
//     measure process creation, ~15 ms each under TCG)
//   - boot s: QEMU spawned to the guest agent's READY (kernel, modules, DHCP lease), from
//     VmSandbox.bootMs or vm.ready
// and printed with the ratios moat-vhost-user / qemu-user and / passt against issue 13's
// targets (>= 1.5 and >= 1.0). With --rounds N (default 1) every contender is measured N times,
// the contenders taking turns, and each figure is the median of its N. Progress goes to stderr.
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Writable } from "node:stream";
import { WORLD_IP4, hasTool } from "../test/testbed/world.js";
import { ensureVmImage } from "../orchestrator/src/vm/image.js";
import { startVm, qemuValue, type VmAccel } from "../orchestrator/src/vm/qemu.js";
import { VmSandbox } from "../orchestrator/src/vm/vm-sandbox.js";
import { benchArgs, option, sleep, killTree, iperfClient, iperfGbps, crrRate, benchWorld, endBenchWorld, fmt, median, printTable } from "./harness.js";

benchArgs(["time", "only", "accel", "rounds", "guest"]);

const SECONDS = Number(option("time", "5"));
const CRR_SECONDS = Math.min(SECONDS, 3);
const ACCEL = option("accel", "auto") as VmAccel | "auto";
const CONTENDERS = ["moat-vhost-user", "moat-stream", "qemu-user", "passt"];
const ONLY = option("only", CONTENDERS.join(",")).split(",");
const ROUNDS = Number(option("rounds", "1"));
/** The same NIC for every contender (VmSandbox builds this one for moat's, with its own MAC). */
const NIC = ["-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,host_mtu=65520,vectors=0"];
const log = (line: string) => process.stderr.write(`vm: ${line}\n`);

/** A figure set from one contender's guest (the child prints it as JSON). */
interface Row { name: string; accel: string; bootMs: number; up: number; down: number; crr: number }

// ---- the connection-rate client (compiled here, static: the guest image has no C library of its own)

const CRR_C = String.raw`
/* moat-crr HOST PORT SECONDS: connect, write 1 byte, read the echo, close, in a loop for
 * SECONDS; prints "crr N/s failed K". Connect and read give up after 3 s. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  if (argc != 4) { fprintf(stderr, "usage: moat-crr HOST PORT SECONDS\n"); return 2; }
  struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])) };
  if (inet_pton(AF_INET, argv[1], &to.sin_addr) != 1) { fprintf(stderr, "moat-crr: bad address %s\n", argv[1]); return 2; }
  double seconds = atof(argv[3]), t0 = now(), elapsed;
  long ok = 0, failed = 0;
  struct timeval limit = { .tv_sec = 3 };
  int one = 1;
  while ((elapsed = now() - t0) < seconds) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) { perror("moat-crr: socket"); return 1; }
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
    char c = 'x';
    if (connect(s, (struct sockaddr *)&to, sizeof to) == 0 && write(s, &c, 1) == 1 && read(s, &c, 1) == 1) ok++;
    else failed++;
    close(s);
  }
  printf("crr %.0f/s failed %ld\n", ok / elapsed, failed);
  return ok > 0 ? 0 : 1;
}
`;

/** Compiles moat-crr into dir; its path. */
function compileCrr(dir: string): string {
  writeFileSync(join(dir, "moat-crr.c"), CRR_C);
  execFileSync("cc", ["-static", "-O2", "-s", "-o", join(dir, "moat-crr"), join(dir, "moat-crr.c")], { stdio: ["ignore", "ignore", "pipe"] });
  return join(dir, "moat-crr");
}

// ---- one contender's guest (in the child process, inside the host namespace) -------------------

interface Guest {
  accel: VmAccel;
  bootMs: number;
  /** Runs argv in the guest: its stdout; throws on a non-zero status or after timeoutMs. */
  run(argv: string[], timeoutMs: number): Promise<string>;
  stop(): Promise<void>;
}

type Exec = (argv: string[], o: { stdout: Writable; stderr: Writable }) => Promise<number>;

function guestRunner(exec: Exec, signal: (signo: number) => void): Guest["run"] {
  return async (argv, timeoutMs) => {
    let out = "";
    let err = "";
    const sink = (add: (s: string) => void) => new Writable({ write(chunk, _enc, done) { add(chunk.toString()); done(); } });
    let timedOut = false;
    const timer = setTimeout(() => { timedOut = true; signal(9); }, timeoutMs);
    try {
      const code = await exec(argv, { stdout: sink((s) => (out += s)), stderr: sink((s) => (err += s)) });
      if (code !== 0) throw new Error(`${argv.join(" ")} ${timedOut ? `timed out after ${timeoutMs} ms` : `exited ${code}`}: ${(err || out).trim().split("\n").slice(-3).join(" / ")}`);
      return out;
    } finally {
      clearTimeout(timer);
    }
  };
}

async function moatGuest(link: "vhost-user" | "stream"): Promise<Guest> {
  const sandbox = await VmSandbox.create({ vm: { link, accel: ACCEL } });
  return {
    accel: sandbox.accel!, bootMs: sandbox.bootMs,
    run: guestRunner((argv, o) => sandbox.run(argv, o), (n) => sandbox.signal(n)),
    stop: () => sandbox.destroy({ graceMs: 0 }),
  };
}

async function qemuGuest(netdev: string[]): Promise<Guest> {
  const image = await ensureVmImage(); // the extra binaries come from $MOAT_VM_EXTRA_BINARIES, as for VmSandbox
  const vm = await startVm({ image, netdev: [...netdev, ...NIC], accel: ACCEL });
  try {
    const { bootMs } = await vm.ready;
    return { accel: vm.accel, bootMs, run: guestRunner((argv, o) => vm.exec(argv, o), (n) => vm.signal(n)), stop: async () => { await vm.shutdown(3000); } };
  } catch (e) {
    await vm.kill();
    throw e;
  }
}

async function passtGuest(): Promise<Guest> {
  const dir = mkdtempSync(join(tmpdir(), "moat-bench-passt-"));
  const socket = join(dir, "passt.sock");
  // -1: passt exits when QEMU goes; -f: in the foreground, so it is this child.
  const passt = spawn("passt", ["--runas", "0", "-f", "-q", "-1", "--no-map-gw", "-s", socket], { stdio: "ignore" });
  const stop = () => { killTree(passt); rmSync(dir, { recursive: true, force: true }); };
  try {
    for (let i = 0; i < 50 && !existsSync(socket); i++) await sleep(100);
    if (!existsSync(socket)) throw new Error(`passt did not create ${socket}`);
    const g = await qemuGuest(["-netdev", `stream,id=n0,server=off,addr.type=unix,addr.path=${qemuValue(socket)}`]);
    return { ...g, stop: async () => { await g.stop(); stop(); } };
  } catch (e) {
    stop();
    throw e;
  }
}

const boot: Record<string, () => Promise<Guest>> = {
  "moat-vhost-user": () => moatGuest("vhost-user"),
  "moat-stream": () => moatGuest("stream"),
  "qemu-user": () => qemuGuest(["-netdev", "user,id=n0"]),
  "passt": passtGuest,
};

async function measure(name: string): Promise<Row> {
  const g = await boot[name]!();
  try {
    const eth0 = await g.run(["sh", "-c", "ip -o -4 addr show dev eth0; ip -o link show dev eth0"], 30_000);
    const at = `eth0 ${/inet (\S+)/.exec(eth0)?.[1] ?? "without an address"} mtu ${/ mtu (\d+)/.exec(eth0)?.[1] ?? "?"}`;
    log(`${name}: up in ${(g.bootMs / 1000).toFixed(2)} s (${g.accel}), ${at}; iperf3 ${SECONDS} s each way, then conn/s ${CRR_SECONDS} s`);
    const iperfMs = (SECONDS + 30) * 1000;
    const up = iperfGbps(await g.run(iperfClient(WORLD_IP4, 5201, SECONDS, false), iperfMs));
    const down = iperfGbps(await g.run(iperfClient(WORLD_IP4, 5201, SECONDS, true), iperfMs));
    const out = await g.run(["moat-crr", WORLD_IP4, "7", String(CRR_SECONDS)], (CRR_SECONDS + 30) * 1000);
    const failed = Number(/failed (\d+)/.exec(out)?.[1] ?? 0);
    if (failed) log(`${name}: ${failed} connections failed during conn/s`);
    return { name, accel: g.accel, bootMs: g.bootMs, up, down, crr: crrRate(out) };
  } finally {
    await g.stop();
  }
}

// ---- the run ------------------------------------------------------------------------------------

const child = option("guest", "");
if (child) {
  // One contender, inside the host namespace: the figures as the last line of stdout. SIGTERM
  // (the parent's timeout) exits through the exit hooks, which kill QEMU.
  process.on("SIGTERM", () => process.exit(143));
  const row = await measure(child);
  process.stdout.write(JSON.stringify(row) + "\n");
  process.exit(0);
}

const unknown = ONLY.filter((c) => !CONTENDERS.includes(c));
if (unknown.length) {
  console.error(`vm: unknown contender ${unknown.join(", ")}: choose among ${CONTENDERS.join(", ")}`);
  process.exit(2);
}
const missing = [["qemu-system-x86_64", "--version", "qemu-system-x86"], ["passt", "--version", "passt"], ["iperf3", "--version", "iperf3"], ["cc", "--version", "gcc"]]
  .filter(([tool, arg]) => !hasTool(tool!, arg!));
if (missing.length) {
  console.error(`vm: cannot run: ${missing.map(([t, , pkg]) => `${t} (apt-get install ${pkg})`).join(", ")} missing`);
  process.exit(2);
}
const work = mkdtempSync(join(tmpdir(), "moat-bench-vm-"));
const runs: Row[] = [];
try {
  // The guest image with iperf3 and moat-crr: built (or found in the cache) once, here; the
  // children, and VmSandbox in them, find it by the same $MOAT_VM_EXTRA_BINARIES.
  process.env.MOAT_VM_EXTRA_BINARIES = ["iperf3", compileCrr(work)].join(":");
  await ensureVmImage({ onProgress: log });
  const world = await benchWorld("vm");
  try {
    for (let round = 1; round <= ROUNDS; round++) for (const name of CONTENDERS.filter((c) => ONLY.includes(c))) {
      log(`measuring ${name}${ROUNDS > 1 ? ` (round ${round} of ${ROUNDS})` : ""}...`);
      try {
        runs.push(await inHostNamespace(world.host, name));
      } catch (e) {
        log(`${name} failed: ${(e as Error).message.split("\n")[0]}`);
      }
    }
  } finally {
    endBenchWorld(world);
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}

/** This script with --guest NAME in the host namespace; its row. */
function inHostNamespace(ns: string, name: string): Promise<Row> {
  const argv = ["netns", "exec", ns, process.execPath, fileURLToPath(import.meta.url), "--guest", name, "--time", String(SECONDS), "--accel", ACCEL];
  return new Promise((resolve, reject) => {
    const p = spawn("ip", argv, { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    p.stdout!.on("data", (d) => (out += d));
    const timer = setTimeout(() => p.kill("SIGTERM"), 120_000 + 4 * SECONDS * 1000);
    p.on("exit", (code, signal) => {
      clearTimeout(timer);
      const last = out.trim().split("\n").pop() ?? "";
      if (code === 0 && last.startsWith("{")) resolve(JSON.parse(last) as Row);
      else reject(new Error(`the ${name} run ended with ${signal ?? `status ${code}`}`));
    });
  });
}

const rows: Row[] = CONTENDERS.map((name) => runs.filter((r) => r.name === name)).filter((rs) => rs.length > 0).map((rs) => ({
  name: rs[0]!.name, accel: [...new Set(rs.map((r) => r.accel))].join("/"),
  bootMs: median(rs.map((r) => r.bootMs)), up: median(rs.map((r) => r.up)), down: median(rs.map((r) => r.down)), crr: median(rs.map((r) => r.crr)),
}));
const table = [["contender", "guest->world Gbit/s", "world->guest Gbit/s", "conn/s", "boot s", "accel", "target"]];
for (const r of rows) table.push([r.name, fmt(r.up), fmt(r.down), fmt(r.crr, 0), fmt(r.bootMs / 1000), r.accel, ""]);
const moat = rows.find((r) => r.name === "moat-vhost-user");
for (const [peer, target] of [["qemu-user", "1.5"], ["passt", "1.0"]] as const) {
  const r = rows.find((x) => x.name === peer);
  if (moat && r) table.push([`moat-vhost-user / ${peer}`, fmt(moat.up / r.up), fmt(moat.down / r.down), fmt(moat.crr / r.crr), fmt(r.bootMs / moat.bootMs), "", `>= ${target}`]);
}
printTable(table);
console.log(`(${SECONDS} s per iperf3 direction, conn/s over ${CRR_SECONDS} s, one guest at a time${ROUNDS > 1 ? `, medians of ${ROUNDS} rounds` : ""}; ratios > 1 favour moat: throughput and conn/s as`);
console.log(` moat/peer, boot time as peer/moat; targets from issue 13. Same image and NIC for all: virtio-net-pci, host_mtu=65520, vectors=0)`);
