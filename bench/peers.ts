// peers.ts — moat side by side with the userspace peers and the kernel, in one run.
//
//   sudo node dist/bench/peers.js [--time SECONDS] [--only moat,slirp4netns,pasta,veth] [--bulk-runs N]
//
// Every contender gives a fresh network namespace (the "guest") a path to the same test world:
// an iperf3 server and a TCP echo server at 203.0.113.10 in their own namespace, reached through
// a "host" namespace that has no route off this machine (test/testbed/world.ts). Measured from
// inside the guest with public tools and small Node clients:
//   - iperf3 guest->world and world->guest (-R), Gbit/s at the receiver
//   - connections per second: connect, 1-byte request, response, close, in a loop
//   - request/response latency: 1-byte ping-pong on one connection, p50 and p99
//   - many connections: 1000 concurrent connections each moving 1 MiB each way through the echo
//     server, every byte checked: seconds until the last one finished ("-" if any stalled
//     past 120 s or failed)
//   - CPU: the contender's process time (user+sys) during the iperf3 runs, as cores per Gbit/s
//     (veth has no process: its cost is in the kernel and is not shown)
//   - the whole machine: its busy cores during each iperf3 run (client, server, contender and
//     kernel together; veth included), and Gbit per busy core-second, the work each path does per
//     byte (what caps a transfer once every core is busy)
// and, inbound, through a published port (moat -p, pasta -t, slirp4netns's add_hostfwd over its
// API socket; veth: the guest's address itself, no forwarding): an iperf3 server and a TCP echo
// server inside the guest, measured from the host namespace's loopback
//   - iperf3 host->guest and guest->host (-R), Gbit/s
//   - connections per second through the published port (the same loop as outbound)
// and printed with the ratios moat / each peer.
import { execFileSync, spawn } from "node:child_process";
import { readFileSync, rmSync } from "node:fs";
import { World, WORLD_IP4, TESTBED_JS, MOAT_BIN } from "../test/testbed/world.js";
import { machineCpu, machineCores, benchArgs, option, sleep, killTree, run, iperfClient, iperfGbps, crrRate, benchWorld, endBenchWorld, fmt, median, printTable, sandboxNetns } from "./harness.js";

benchArgs(["time", "only", "bulk-runs"]);

const SECONDS = Number(option("time", "5"));
const ONLY = option("only", "moat,slirp4netns,pasta,veth").split(",");
// The 1000 x 1 MiB echo, run this many times per contender (its figure is the median; with more
// than one run, the spread is printed: the slowest run against the fastest, and against veth).
const BULK_RUNS = Number(option("bulk-runs", "1"));

// Published ports (inbound rows): host side 127.0.0.1:IN_IPERF / IN_ECHO -> guest 5201 / 7, for
// clients on the host's loopback; and NET_HOST:NET_IPERF / NET_ECHO, for clients in the world
// namespace reaching the host over its network (pasta splices loopback connections socket to
// socket inside the kernel, and serves the others through its tap path like everyone else).
const IN_IPERF = 15201;
const IN_ECHO = 15007;
const NET_HOST = "203.0.113.1";
const NET_IPERF = 15202;
const NET_ECHO = 15008;
interface InboundAt { host: string; iperf: number; echo: number }

interface Contender {
  name: string;
  /**
   * Prepare the guest namespace, with IN_IPERF and IN_ECHO published; returns how to run a
   * command in it, the process to bill CPU to, and where the host side reaches the published ports.
   */
  up(world: World, guest: string): Promise<{ pid?: number; stop: () => void; exec: (cmd: string[]) => string[]; inbound?: { loopback: InboundAt; net: InboundAt } }>;
}

function ip(...a: string[]): void { execFileSync("ip", a, { stdio: ["ignore", "ignore", "pipe"] }); }
function cpuSeconds(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return (Number(f[11]) + Number(f[12])) / 100; // utime + stime, clock ticks (USER_HZ = 100)
}

const nsExec = (ns: string) => (cmd: string[]) => ["ip", "netns", "exec", ns, ...cmd];

// pasta: the world host is the host namespace's default gateway, which pasta by default maps
// to the host's loopback; --no-map-gw makes it reach the real world host like the others.
const PUBLISHED = { loopback: { host: "127.0.0.1", iperf: IN_IPERF, echo: IN_ECHO }, net: { host: NET_HOST, iperf: NET_IPERF, echo: NET_ECHO } };
const contenders: Contender[] = [
  {
    name: "moat",
    async up(world) {
      // moat makes its own guest namespace: run the measurements through `moat run` by keeping a
      // long-lived sandbox open and entering it.
      // nsenter (not `ip netns exec`) keeps the mount namespace, so the namespace moat creates
      // is visible to the measuring commands.
      const p = spawn("nsenter", [`--net=/run/netns/${world.host}`, process.execPath, MOAT_BIN, "run", "-p", `${IN_IPERF}:5201`, "-p", `${IN_ECHO}:7`,
        "-p", `${NET_HOST}:${NET_IPERF}:5201`, "-p", `${NET_HOST}:${NET_ECHO}:7`, "--", "sleep", "3600"], { stdio: "ignore" });
      try {
        const ns = await sandboxNetns(p.pid!);
        await sleep(500);
        // nsenter execs the command: the process is moat itself.
        return { pid: p.pid, stop: () => killTree(p), exec: nsExec(ns), inbound: PUBLISHED };
      } catch (e) {
        killTree(p);
        throw e;
      }
    },
  },
  {
    name: "slirp4netns",
    async up(world, guest) {
      ip("netns", "add", guest);
      const api = `/tmp/moat-bench-slirp-${process.pid}.sock`;
      const p = spawn("ip", ["netns", "exec", world.host, "slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback", "--api-socket", api, "--netns-type=path", `/run/netns/${guest}`, "tap0"], { stdio: "ignore" });
      await sleep(1000);
      // Port forwarding is added at run time through the API socket (add_hostfwd).
      for (const [addr, host, guestPort] of [["127.0.0.1", IN_IPERF, 5201], ["127.0.0.1", IN_ECHO, 7], [NET_HOST, NET_IPERF, 5201], [NET_HOST, NET_ECHO, 7]] as const) {
        const reply = run(["socat", "-t", "2", "-", `UNIX-CONNECT:${api}`], 5000, JSON.stringify({ execute: "add_hostfwd", arguments: { proto: "tcp", host_addr: addr, host_port: host, guest_port: guestPort } }));
        if (!reply.includes("return")) throw new Error(`slirp4netns add_hostfwd: ${reply}`);
      }
      return { pid: p.pid, stop: () => { killTree(p); ip("netns", "del", guest); rmSync(api, { force: true }); }, exec: nsExec(guest), inbound: PUBLISHED };
    },
  },
  {
    name: "pasta",
    async up(world, guest) {
      ip("netns", "add", guest);
      const p = spawn("ip", ["netns", "exec", world.host, "pasta", "--runas", "0", "-f", "-q", "--config-net", "--no-map-gw", "--mtu", "65520",
        "-t", `127.0.0.1/${IN_IPERF}:5201`, "-t", `127.0.0.1/${IN_ECHO}:7`, "-t", `${NET_HOST}/${NET_IPERF}:5201`, "-t", `${NET_HOST}/${NET_ECHO}:7`,
        "--netns", `/run/netns/${guest}`], { stdio: "ignore" });
      await sleep(1000);
      return { pid: p.pid, stop: () => { killTree(p); ip("netns", "del", guest); }, exec: nsExec(guest), inbound: PUBLISHED };
    },
  },
  {
    name: "veth",
    async up(world, guest) {
      ip("netns", "add", guest);
      ip("-n", world.host, "link", "add", "vg0", "mtu", "65520", "type", "veth", "peer", "name", "eth0", "netns", guest);
      ip("-n", world.host, "addr", "add", "10.99.0.1/30", "dev", "vg0");
      ip("-n", world.host, "link", "set", "vg0", "up");
      ip("-n", guest, "link", "set", "lo", "up");
      ip("-n", guest, "link", "set", "eth0", "mtu", "65520", "up");
      ip("-n", guest, "addr", "add", "10.99.0.2/30", "dev", "eth0");
      ip("-n", guest, "route", "add", "default", "via", "10.99.0.1");
      execFileSync("ip", ["netns", "exec", world.host, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
      ip("-n", world.world, "route", "add", "10.99.0.0/30", "via", "203.0.113.1");
      return { stop: () => { ip("netns", "del", guest); ip("-n", world.world, "route", "del", "10.99.0.0/30"); }, exec: nsExec(guest), inbound: { loopback: { host: "10.99.0.2", iperf: 5201, echo: 7 }, net: { host: "10.99.0.2", iperf: 5201, echo: 7 } } };
    },
  },
];

function iperf(exec: (c: string[]) => string[], reverse: boolean, target = WORLD_IP4, port = 5201): number {
  return iperfGbps(run(exec(iperfClient(target, port, SECONDS, reverse))));
}

interface InboundFigures { toGuest: number; fromGuest: number; crr: number }
interface Inbound { loopback: InboundFigures; net: InboundFigures }
interface Row { name: string; up: number; down: number; crr: number; p50: number; p99: number; coresPerGbit: number | undefined; upCores: number; downCores: number; bulkSeconds: number | undefined; bulkRuns: number[]; inbound?: Inbound }

/** Through the published ports: servers inside the guest, clients in the host namespace. */
async function measureInbound(world: World, env: Awaited<ReturnType<Contender["up"]>>): Promise<Inbound | undefined> {
  const at = env.inbound;
  if (!at) return undefined;
  run(env.exec(["iperf3", "-s", "-D", "-p", "5201"]));
  const argv = env.exec([process.execPath, `${TESTBED_JS}servers.js`, "tcp-echo", "7"]);
  const echo = spawn(argv[0]!, argv.slice(1), { stdio: ["ignore", "pipe", "ignore"] });
  try {
    await new Promise((resolve) => echo.stdout!.once("data", resolve));
    await sleep(200);
    const figures = (exec: (c: string[]) => string[], to: InboundAt): InboundFigures => ({
      toGuest: iperf(exec, false, to.host, to.iperf),
      fromGuest: iperf(exec, true, to.host, to.iperf),
      crr: crrRate(run(exec([process.execPath, `${TESTBED_JS}tcp-clients.js`, "crr", to.host, String(to.echo), String(Math.min(SECONDS, 3))]))),
    });
    return { loopback: figures(nsExec(world.host), at.loopback), net: figures(nsExec(world.world), at.net) };
  } finally {
    killTree(echo);
    try { run(env.exec(["pkill", "-f", "iperf3 -s -D -p 5201"])); } catch { /* gone */ }
  }
}

async function measure(world: World, c: Contender): Promise<Row> {
  const env = await c.up(world, `peer-${c.name}`);
  try {
    const client = (m: string, ...a: string[]) => run(env.exec([process.execPath, `${TESTBED_JS}tcp-clients.js`, m, WORLD_IP4, "7", ...a]));
    if (client("connect").trim() !== "connected") throw new Error("the echo server is not reachable from the guest");
    const cpu0 = env.pid ? cpuSeconds(env.pid) : 0;
    const t0 = performance.now();
    let machine = machineCpu();
    const up = iperf(env.exec, false);
    const upCores = machine.busyCores();
    machine = machineCpu();
    const down = iperf(env.exec, true);
    const downCores = machine.busyCores();
    const wall = (performance.now() - t0) / 1000;
    const cores = env.pid ? (cpuSeconds(env.pid) - cpu0) / wall : undefined;
    const crr = crrRate(client("crr", String(Math.min(SECONDS, 3))));
    const rr = /p50=(\d+) p99=(\d+)/.exec(client("rr", "2000"))!;
    const bulkRuns: number[] = [];
    for (let k = 0; k < BULK_RUNS; k++) {
      try {
        bulkRuns.push(Number(/ok 1000 ([\d.]+) s/.exec(client("bulk", "1000", String(1 << 20), "120"))![1]));
      } catch (e) {
        process.stderr.write(`peers: ${c.name}: 1000 x 1 MiB failed (run ${k + 1}): ${((e as { stderr?: string }).stderr ?? (e as Error).message).trim().split("\n").pop()}\n`);
      }
    }
    // (a contender with a failed run has no figure: a stall is not averaged away)
    const bulkSeconds = bulkRuns.length === BULK_RUNS ? median(bulkRuns) : undefined;
    let inbound: Inbound | undefined;
    try {
      inbound = await measureInbound(world, env);
    } catch (e) {
      process.stderr.write(`peers: ${c.name}: inbound failed: ${((e as { stderr?: string }).stderr ?? (e as Error).message).trim().split("\n").pop()}\n`);
    }
    return { name: c.name, up, down, crr, p50: Number(rr[1]), p99: Number(rr[2]), coresPerGbit: cores === undefined ? undefined : cores / ((up + down) / 2), upCores, downCores, bulkSeconds, bulkRuns, inbound };
  } finally {
    env.stop();
    await sleep(300);
  }
}

const world = await benchWorld("peers");
const rows: Row[] = [];
try {
  for (const c of contenders.filter((c) => ONLY.includes(c.name))) {
    process.stderr.write(`peers: measuring ${c.name} (${SECONDS} s each way)...\n`);
    try {
      rows.push(await measure(world, c));
    } catch (e) {
      process.stderr.write(`peers: ${c.name} failed: ${(e as Error).message.split("\n")[0]}\n`);
    }
  }
} finally {
  endBenchWorld(world);
}

const table = [["contender", "guest->world Gbit/s", "world->guest Gbit/s", "conn/s", "RR p50 us", "RR p99 us", "CPU cores per Gbit/s", "1000x1MiB echo s"]];
for (const r of rows) table.push([r.name, fmt(r.up), fmt(r.down), fmt(r.crr, 0), fmt(r.p50, 0), fmt(r.p99, 0), fmt(r.coresPerGbit, 3), fmt(r.bulkSeconds)]);
const moat = rows.find((r) => r.name === "moat");
if (moat) {
  for (const r of rows.filter((r) => r !== moat)) {
    table.push([`moat / ${r.name}`, fmt(moat.up / r.up), fmt(moat.down / r.down), fmt(moat.crr / r.crr), fmt(r.p50 / moat.p50), fmt(r.p99 / moat.p99),
      moat.coresPerGbit !== undefined && r.coresPerGbit !== undefined ? fmt(r.coresPerGbit / moat.coresPerGbit) : "-",
      moat.bulkSeconds !== undefined && r.bulkSeconds !== undefined ? fmt(r.bulkSeconds / moat.bulkSeconds) : "-"]);
  }
}
printTable(table);
console.log(`(${SECONDS} s per iperf3 direction; ratios > 1 favour moat: throughput and conn/s as moat/peer, latency, CPU and 1000x1MiB time as peer/moat)`);
// The whole machine during each iperf3 run: what every party (client, server, contender, kernel)
// took together, and so the work each path does per byte.
console.log(`\nthe whole machine (${machineCores()} cores) during iperf3: Gbit/s on busy cores = Gbit per busy core-second`);
for (const r of rows) {
  console.log(`  ${r.name}: guest->world ${fmt(r.up)} on ${fmt(r.upCores)} = ${fmt(r.up / r.upCores)}; world->guest ${fmt(r.down)} on ${fmt(r.downCores)} = ${fmt(r.down / r.downCores)}`);
}
if (BULK_RUNS > 1) {
  const veth = rows.find((r) => r.name === "veth");
  for (const r of rows) {
    const runs = [...r.bulkRuns].sort((a, b) => a - b);
    if (!runs.length) { console.log(`1000x1MiB echo, ${r.name}: 0 of ${BULK_RUNS} runs completed`); continue; }
    const vs = r !== veth && veth?.bulkSeconds !== undefined ? `; slowest / veth's median ${fmt(runs.at(-1)! / veth.bulkSeconds)}` : "";
    console.log(`1000x1MiB echo, ${r.name}: ${runs.length} of ${BULK_RUNS} runs completed, ${fmt(runs[0])}-${fmt(runs.at(-1))} s (median ${fmt(median(runs))}; slowest / fastest ${fmt(runs.at(-1)! / runs[0]!)}${vs})`);
  }
}

// Inbound: through a published port, from the host's loopback and from the network.
const inTable = [["inbound (published port)", "lo->guest Gbit/s", "guest->lo Gbit/s", "lo conn/s", "net->guest Gbit/s", "guest->net Gbit/s", "net conn/s"]];
const inCells = (i: Inbound | undefined) => [fmt(i?.loopback.toGuest), fmt(i?.loopback.fromGuest), fmt(i?.loopback.crr, 0), fmt(i?.net.toGuest), fmt(i?.net.fromGuest), fmt(i?.net.crr, 0)];
for (const r of rows) inTable.push([r.name, ...inCells(r.inbound)]);
const mi = moat?.inbound;
if (mi) {
  for (const r of rows.filter((r) => r !== moat && r.inbound)) {
    const p = r.inbound!;
    inTable.push([`moat / ${r.name}`, ...[
      mi.loopback.toGuest / p.loopback.toGuest, mi.loopback.fromGuest / p.loopback.fromGuest, mi.loopback.crr / p.loopback.crr,
      mi.net.toGuest / p.net.toGuest, mi.net.fromGuest / p.net.fromGuest, mi.net.crr / p.net.crr].map((v) => fmt(v))]);
  }
}
console.log("");
printTable(inTable);
console.log("(lo: clients on the host namespace's loopback, to 127.0.0.1:PORT; net: clients in the world namespace, to the host's 203.0.113.1:PORT.\n veth: the guest's own address, no forwarding: the kernel's figure)");

