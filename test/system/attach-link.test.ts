// attach-link.test.ts — `moat serve --attach IFNAME`: an interface whose other side someone else
// holds, served from its kernel side (native-vmm/src/packet.cc).
//
// Firecracker-style: a process (test/testbed/tap_holder.py) opens the TAP with TUNSETIFF, a
// virtio-net header and the offloads a Linux guest negotiates, keeps the fd, and moves frames
// between it and a veth whose peer is eth0 of a guest namespace — as Firecracker's virtio-net
// device moves them between the TAP and its guest. The guest is a real Linux stack: busybox
// udhcpc takes a lease from moat's gateway, ping pings it, and TCP in both directions carries
// the guest kernel's partial checksums and segmentation offload (64 KiB superframes) through
// the TAP. The holder going away with its TAP (not persistent, as Firecracker's when it created
// it) and coming back is served again; malformed frames written to the fd are counted and
// serving continues. A veth end is attached directly too. A missing IFNAME is an error for
// --attach and for --tap, which no longer creates it; a held TAP given to --tap is refused with
// the way out (--attach).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { cpus } from "node:os";
import { createInterface } from "node:readline";
import { systemTestSkipReason, hasTool, MOAT_BIN, TESTBED_SRC, World } from "../testbed/world.js";

const skip = systemTestSkipReason()
  ?? (hasTool("busybox", "udhcpc", "--help") ? undefined : "busybox (udhcpc) is not installed")
  ?? (hasTool("python3", "-c", "pass") ? undefined : "python3 is not installed");

const H = `mt-ath-${process.pid}`;   // moat's namespace: the TAP (and the holder) live here
const G = `mt-atg-${process.pid}`;   // the Firecracker-style guest: eth0, udhcpc, ping, TCP
const H2 = `mt-avh-${process.pid}`;  // the veth test: moat's end
const G2 = `mt-avg-${process.pid}`;  // and the guest's
const SERVER = "203.0.113.1";        // a TCP server in moat's namespace (on lo), reached through the gateway
const TAP = "fctap0";

function ip(args: string[]): string {
  return execFileSync("ip", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}
function inNs(ns: string, argv: string[], timeout = 30000): string {
  return execFileSync("ip", ["netns", "exec", ns, ...argv], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout });
}
function dropNs(...names: string[]): void {
  for (const n of names) {
    try { ip(["netns", "del", n]); } catch { /* absent */ }
  }
}
/** Two namespaces joined by a veth: `a` in `nsA`, eth0 in `nsB` (up); lo up in both. */
function vethPair(nsA: string, a: string, nsB: string): void {
  for (const ns of [nsA, nsB]) {
    ip(["netns", "add", ns]);
    ip(["-n", ns, "link", "set", "lo", "up"]);
  }
  ip(["-n", nsA, "link", "add", "name", a, "type", "veth", "peer", "name", "eth0", "netns", nsB]);
  ip(["-n", nsB, "link", "set", "eth0", "up"]);
  ip(["-n", nsA, "addr", "add", `${SERVER}/32`, "dev", "lo"]);
}

interface Serve { child: ChildProcess; stderr: () => string; exited: Promise<number | null>; guest: string; gateway: string; mtu: number }

/** `moat serve ARGS` in namespace `ns`, once it says it serves `IFNAME`. */
async function startServe(ns: string, args: string[]): Promise<Serve> {
  const child = spawn("ip", ["netns", "exec", ns, process.execPath, MOAT_BIN, "serve", ...args], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr!.on("data", (d) => { stderr += d; });
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  const start = Date.now();
  while (!stderr.includes("moat: serving") && Date.now() - start < 15000 && child.exitCode === null) await new Promise((r) => setTimeout(r, 50));
  const m = /moat: serving attach \S+: guest (172\.30\.\d+\.\d+)\/30 \(DHCP\).*gateway (172\.30\.\d+\.\d+), MTU (\d+)/.exec(stderr);
  if (!m) {
    child.kill("SIGKILL");
    assert.fail(`moat serve did not start:\n${stderr}`);
  }
  return { child, stderr: () => stderr, exited, guest: m[1]!, gateway: m[2]!, mtu: Number(m[3]) };
}

/** SIGTERM, a clean exit, and the counters --stats printed. */
async function stopServe(s: Serve): Promise<Record<string, number>> {
  s.child.kill("SIGTERM");
  assert.equal(await s.exited, 0, s.stderr());
  return World.stats(s.stderr());
}

/** The guest's DHCP client: the lease it got (and its server), configured on eth0 with a default route. */
function dhcp(ns: string): { lease: string; server: string } {
  const out = inNs(ns, ["sh", "-c", "busybox udhcpc -i eth0 -q -n -t 8 -T 1 -s /bin/true 2>&1"]);
  const m = /lease of (172\.30\.\d+\.\d+) obtained from (172\.30\.\d+\.\d+)/.exec(out);
  assert.ok(m, `no DHCP lease:\n${out}`);
  ip(["-n", ns, "addr", "flush", "dev", "eth0"]);
  ip(["-n", ns, "addr", "add", `${m[1]}/30`, "dev", "eth0"]);
  ip(["-n", ns, "route", "replace", "default", "via", m[2]!]);
  return { lease: m[1]!, server: m[2]! };
}

function ping(ns: string, addr: string): void {
  assert.match(inNs(ns, ["ping", "-c", "2", "-i", "0.2", "-W", "2", addr]), /2 received/);
}

/**
 * N bytes from the guest to a server in moat's namespace and N back, through the gateway (TCP
 * terminated by the engine, re-originated): each side's length and SHA-256 agree.
 */
async function tcpBothWays(guestNs: string, serverNs: string, n: number, port: number): Promise<void> {
  const blob = `${TESTBED_SRC}tcp_blob.py`;
  for (const [server, client] of [["sink", "send"], ["source", "recv"]] as const) {
    const srv = spawn("ip", ["netns", "exec", serverNs, "python3", blob, server, SERVER, String(port), String(n)], { stdio: ["ignore", "pipe", "inherit"] });
    const lines = createInterface({ input: srv.stdout! })[Symbol.asyncIterator]();
    try {
      assert.equal((await lines.next()).value, "listening");
      const mine = inNs(guestNs, ["python3", blob, client, SERVER, String(port), String(n)], 60000).trim();
      const theirs = (await lines.next()).value as string;
      assert.equal(mine, theirs, `${client}: what one side sent is what the other read`);
      assert.match(mine, new RegExp(`^${n} [0-9a-f]{64}$`));
    } finally {
      srv.kill("SIGKILL");
    }
  }
}

/** The holder: the TAP held as Firecracker holds it, bridged to the guest namespace's eth0. */
class Holder {
  private lines: AsyncIterator<string>;
  private constructor(readonly proc: ChildProcess) {
    this.lines = createInterface({ input: proc.stdout! })[Symbol.asyncIterator]();
  }
  static async start(): Promise<Holder> {
    const proc = spawn("ip", ["netns", "exec", H, "python3", `${TESTBED_SRC}tap_holder.py`, TAP, "hold0"], { stdio: ["pipe", "pipe", "inherit"] });
    const h = new Holder(proc);
    assert.equal(await h.line(), `holding ${TAP}`);
    return h;
  }
  async line(): Promise<string> {
    const r = await Promise.race([this.lines.next(), new Promise<never>((_, rej) => setTimeout(() => rej(new Error("the holder said nothing")), 10000))]);
    return r.value as string;
  }
  async hostile(): Promise<number> {
    this.proc.stdin!.write("hostile\n");
    const m = /^hostile (\d+)$/.exec(await this.line());
    assert.ok(m);
    return Number(m[1]);
  }
  async exit(): Promise<void> {
    const gone = new Promise((r) => this.proc.once("exit", r));
    this.proc.stdin!.end("exit\n");
    await gone;
  }
}

let holder: Holder | undefined;
let served: Serve | undefined;
let hostileFrames = 0;

before(async () => {
  if (skip) return;
  dropNs(H, G, H2, G2);
  vethPair(H, "hold0", G);
  ip(["-n", H, "link", "set", "hold0", "up"]);
  // The holder reads the guest's frames off a veth: flow steering keeps them in the order the
  // guest sent them, as a VMM's one thread would (a veth hands frames sent from two CPUs over
  // out of order).
  const mask = ((1 << Math.min(cpus().length, 30)) - 1).toString(16);
  inNs(H, ["sh", "-c", `echo ${mask} > /sys/class/net/hold0/queues/rx-0/rps_cpus`]);
  holder = await Holder.start();
});

after(async () => {
  served?.child.kill("SIGKILL");
  holder?.proc.kill("SIGKILL");
  dropNs(H, G, H2, G2);
});

test("a Firecracker-style TAP holder's guest gets a DHCP lease, pings the gateway and moves TCP both ways through moat serve --attach", { skip }, async () => {
  assert.doesNotMatch(ip(["-n", H, "link", "show", TAP]), /[<,]UP[,>]/, "the holder's new TAP starts down");
  served = await startServe(H, ["--attach", TAP, "--net", "allow-all", "--dns-forward", "none", "--stats"]);
  assert.equal(served.mtu, 1500, "the gateway's MTU is the TAP's");
  assert.match(ip(["-n", H, "link", "show", TAP]), /[<,]UP[,>]/, "moat brought the TAP up");
  const { lease, server } = dhcp(G);
  assert.equal(lease, served.guest);
  assert.equal(server, served.gateway);
  ping(G, served.gateway);
  await tcpBothWays(G, H, 8 << 20, 5101);
});

test("moat serve --tap on a TAP a VMM holds is refused, with --attach as the way", { skip }, async () => {
  const r = await runServe(H, ["--tap", TAP]);
  assert.equal(r.code, 125, "moat's own failure");
  assert.match(r.stderr, new RegExp(`another process holds the TAP device[\\s\\S]*--attach ${TAP}`));
});

test("malformed frames from the VMM's side (over-long, lengths that lie) are dropped and counted; serving continues", { skip }, async () => {
  hostileFrames = await holder!.hostile();
  assert.ok(hostileFrames >= 4, `the kernel took ${hostileFrames} of the frames`);
  ping(G, served!.gateway);
});

test("the VMM going away with its TAP and coming back (a new TAP of the same name) is served again", { skip }, async () => {
  await holder!.exit();
  holder = undefined;
  for (let i = 0; i < 50 && ip(["-n", H, "link", "show"]).includes(TAP); i++) await new Promise((r) => setTimeout(r, 100));
  assert.doesNotMatch(ip(["-n", H, "link", "show"]), new RegExp(TAP), "the TAP went with its holder");
  holder = await Holder.start();
  for (let i = 0; i < 50 && !/[<,]UP[,>]/.test(ip(["-n", H, "link", "show", TAP])); i++) await new Promise((r) => setTimeout(r, 100));
  assert.match(ip(["-n", H, "link", "show", TAP]), /[<,]UP[,>]/, "moat bound the new TAP and brought it up");
  assert.equal(dhcp(G).lease, served!.guest);
  ping(G, served!.gateway);
  const c = await stopServe(served!);
  served = undefined;
  assert.equal(c.LINK_MALFORMED, hostileFrames, "each malformed frame counted once, nothing else");
  assert.ok((c.LINK_PEERS ?? 0) >= 2, `the holder was seen twice (LINK_PEERS ${c.LINK_PEERS})`);
  assert.ok((c.TCP_BYTES_TO_HOST ?? 0) >= 8 << 20 && (c.TCP_BYTES_TO_GUEST ?? 0) >= 8 << 20);
});

test("a veth end attached: DHCP, ping, and TCP carrying the peer's segmentation offload", { skip }, async () => {
  vethPair(H2, "vm0", G2);
  const s = await startServe(H2, ["--attach", "vm0", "--net", "allow-all", "--dns-forward", "none", "--stats"]);
  try {
    assert.equal(dhcp(G2).lease, s.guest);
    ping(G2, s.gateway);
    await tcpBothWays(G2, H2, 8 << 20, 5102);
    // Frames stay in order: moat turned on flow steering for the veth it serves.
    assert.notEqual(inNs(H2, ["cat", "/sys/class/net/vm0/queues/rx-0/rps_cpus"]).replace(/[0,\n]/g, ""), "");
    const c = await stopServe(s);
    assert.equal(c.LINK_MALFORMED, undefined);
  } finally {
    s.child.kill("SIGKILL");
  }
});

test("faults toward a guest behind an attached interface: what the fault link copies, holds and duplicates reaches it intact", { skip }, async () => {
  // The packet link batches pointers to frames until the batch is sent; the fault link's frames
  // live in buffers it reuses and frees, so it must have each one sent before handing on another.
  const ns = [`mt-afh-${process.pid}`, `mt-afg-${process.pid}`] as const;
  dropNs(...ns);
  vethPair(ns[0], "vm1", ns[1]);
  process.env.MOAT_FAULTS = "delay=0.2,delay-ms=3,reorder=0.05,dup=0.02,seed=11,direction=to-guest";
  let s: Serve | undefined;
  try {
    s = await startServe(ns[0], ["--attach", "vm1", "--net", "allow-all", "--dns-forward", "none", "--stats"]);
    assert.equal(dhcp(ns[1]).lease, s.guest);
    await tcpBothWays(ns[1], ns[0], 4 << 20, 5103);
  } finally {
    delete process.env.MOAT_FAULTS;
    s?.child.kill("SIGKILL");
    dropNs(...ns);
  }
});

function runServe(ns: string, args: string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn("ip", ["netns", "exec", ns, process.execPath, MOAT_BIN, "serve", ...args, "--dns-forward", "none"], { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    c.stderr!.on("data", (d) => { stderr += d; });
    const timer = setTimeout(() => c.kill("SIGKILL"), 15000); // one that serves instead of failing
    c.once("exit", (code) => { clearTimeout(timer); resolve({ code, stderr }); });
  });
}

test("a missing IFNAME is an error for --attach and --tap, which creates nothing; an interface that is no point-to-point link is refused", { skip }, async () => {
  const ns = `mt-atx-${process.pid}`;
  dropNs(ns);
  ip(["netns", "add", ns]);
  try {
    const attach = await runServe(ns, ["--attach", "nosuch0"]);
    assert.equal(attach.code, 125);
    assert.match(attach.stderr, /moat: attach link nosuch0: no network interface named nosuch0 in this network namespace/);
    assert.match(attach.stderr, /moat: hint: start the VMM first .*or create the interface \(ip tuntap add dev nosuch0 mode tap/);
    const tap = await runServe(ns, ["--tap", "nosuch0"]);
    assert.equal(tap.code, 125);
    assert.match(tap.stderr, /moat: tap link nosuch0: no network interface named nosuch0 in this network namespace/);
    assert.match(tap.stderr, /moat: hint: create it \(ip tuntap add dev nosuch0 mode tap\)/);
    assert.doesNotMatch(ip(["-n", ns, "link", "show"]), /nosuch0/, "--tap created nothing");
    const lo = await runServe(ns, ["--attach", "lo"]);
    assert.equal(lo.code, 125);
    assert.match(lo.stderr, /attach link lo: not an Ethernet interface/);
    let bridge = true;
    try { ip(["-n", ns, "link", "add", "br0", "type", "bridge"]); } catch { bridge = false; /* a kernel without bridges */ }
    if (bridge) {
      const br = await runServe(ns, ["--attach", "br0"]);
      assert.equal(br.code, 125);
      assert.match(br.stderr, /attach link br0: a bridge driver interface, and moat serves only point-to-point links/);
    }
    ip(["-n", ns, "tuntap", "add", "dev", "small0", "mode", "tap"]);
    const mtu = await runServe(ns, ["--attach", "small0", "--mtu", "9000"]);
    assert.equal(mtu.code, 125);
    assert.match(mtu.stderr, /--mtu 9000 is larger than small0's MTU \(1500\)[\s\S]*hint: raise the interface's first \(ip link set small0 mtu 9000\)/);
  } finally {
    dropNs(ns);
  }
});
