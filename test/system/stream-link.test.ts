// stream-link.test.ts — the stream link (QEMU -netdev stream framing: 4-byte big-endian length,
// then the frame) and `moat serve`: a test client plays the VMM on the unix socket, as QEMU
// would, and talks to the gateway's own services (ARP, ping). Hostile framing (a zero or
// impossible length, a frame longer than a ring slot, a frame dribbled a byte at a time) is
// dropped and counted, the VMM may reconnect, and `moat serve` stops cleanly on SIGTERM.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { connect, type Socket } from "node:net";
import { mkdtempSync, rmSync, writeFileSync, readFileSync, statSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { serveGateway, type ServedGateway } from "../../orchestrator/src/sandbox/serve.js";
import { NetworkPolicy } from "../../orchestrator/src/model/policy.js";
import { eth, ipv4, icmpEcho, arpRequest } from "../helpers/frames.js";
import { systemTestSkipReason } from "../testbed/world.js";

const skip = systemTestSkipReason();
const ETH_IP4 = 0x0800;
const ETH_ARP = 0x0806;
const BCAST = "ff:ff:ff:ff:ff:ff";
const GUEST_MAC = "52:54:00:12:34:56"; // a VMM's MAC: the gateway learns it from the guest's frames

let dir: string;
let served: ServedGateway;
before(async () => {
  if (skip) return;
  dir = mkdtempSync(join(tmpdir(), "moat-stream-"));
  served = await serveGateway({ policy: NetworkPolicy.publicOnly(), dnsForward: "none", exitGraceMs: 0 }, { kind: "stream", path: join(dir, "net.sock") });
});
after(async () => {
  await served?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** The VMM's end of a stream link: frames out with their length, frames in unframed. */
class Vmm {
  private buf = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  readonly frames: Buffer[] = [];
  closed = false;
  private constructor(readonly sock: Socket) {
    sock.on("data", (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      while (this.buf.length >= 4 && this.buf.length >= 4 + this.buf.readUInt32BE(0)) {
        const n = this.buf.readUInt32BE(0);
        this.frames.push(this.buf.subarray(4, 4 + n));
        this.buf = this.buf.subarray(4 + n);
      }
      this.wake();
    });
    sock.on("close", () => { this.closed = true; this.wake(); });
  }
  static open(path: string): Promise<Vmm> {
    return new Promise((resolve, reject) => {
      const s = connect(path, () => resolve(new Vmm(s)));
      s.once("error", reject);
    });
  }
  private wake(): void { for (const w of this.waiters.splice(0)) w(); }
  framed(frame: Uint8Array): Buffer {
    const b = Buffer.alloc(4 + frame.length);
    b.writeUInt32BE(frame.length, 0);
    b.set(frame, 4);
    return b;
  }
  send(frame: Uint8Array): void { this.sock.write(this.framed(frame)); }
  /** The next frame that `match` accepts, within `ms`. */
  async next(match: (f: Buffer) => boolean, ms = 3000): Promise<Buffer> {
    const end = Date.now() + ms;
    for (;;) {
      const i = this.frames.findIndex(match);
      if (i >= 0) return this.frames.splice(i, 1)[0]!;
      if (this.closed) throw new Error("the link closed");
      if (Date.now() > end) throw new Error("no matching frame in time");
      await new Promise<void>((r) => { this.waiters.push(r); setTimeout(r, 50); });
    }
  }
  async whenClosed(ms = 3000): Promise<void> {
    const end = Date.now() + ms;
    while (!this.closed && Date.now() < end) await new Promise<void>((r) => { this.waiters.push(r); setTimeout(r, 50); });
    assert.ok(this.closed, "moat should have closed the connection");
  }
  close(): void { this.sock.destroy(); }
}

const isArpReply = (f: Buffer) => f.readUInt16BE(12) === ETH_ARP && f.readUInt16BE(20) === 2;
const isEchoReply = (id: number) => (f: Buffer) => f.readUInt16BE(12) === ETH_IP4 && f[23] === 1 && f[34] === 0 && f.readUInt16BE(38) === id;

function arpFrame(): Uint8Array {
  const a = served.gateway.addresses;
  return eth(BCAST, GUEST_MAC, ETH_ARP, arpRequest(GUEST_MAC, a.guestIp4, a.gatewayIp4));
}
function pingFrame(id: number, size = 56): Uint8Array {
  const a = served.gateway.addresses;
  return eth(a.gatewayMac, GUEST_MAC, ETH_IP4, ipv4(a.guestIp4, a.gatewayIp4, 1, icmpEcho(id, 1, Array.from({ length: size }, (_, i) => i & 255))));
}
const counter = (name: string) => served.gateway.counters()[name] ?? 0;

test("a VMM on the stream link reaches the gateway: ARP and ping answered, framed", { skip }, async () => {
  const vmm = await Vmm.open(join(dir, "net.sock"));
  try {
    vmm.send(arpFrame());
    const reply = await vmm.next(isArpReply);
    assert.equal(reply.subarray(28, 32).join("."), served.gateway.addresses.gatewayIp4, "the reply names the gateway's address");
    vmm.send(pingFrame(0x101));
    const echo = await vmm.next(isEchoReply(0x101));
    assert.equal(echo.length, 14 + 20 + 8 + 56);
    // A burst in one write and a large frame (60 KiB of ping) are unframed right.
    const burst = [1, 2, 3, 4, 5, 6, 7, 8].map((i) => vmm.framed(pingFrame(0x200 + i)));
    vmm.sock.write(Buffer.concat(burst));
    for (let i = 1; i <= 8; i++) await vmm.next(isEchoReply(0x200 + i));
    vmm.send(pingFrame(0x300, 60000));
    assert.equal((await vmm.next(isEchoReply(0x300))).length, 14 + 20 + 8 + 60000);
  } finally {
    vmm.close();
  }
});

test("a frame dribbled a byte at a time is reassembled", { skip }, async () => {
  const vmm = await Vmm.open(join(dir, "net.sock"));
  try {
    const bytes = vmm.framed(pingFrame(0x401));
    for (const b of bytes) {
      vmm.sock.write(Buffer.from([b]));
      await new Promise((r) => setImmediate(r));
    }
    await vmm.next(isEchoReply(0x401));
  } finally {
    vmm.close();
  }
});

test("hostile framing is dropped and counted; the VMM reconnects and is served again", { skip }, async () => {
  const path = join(dir, "net.sock");
  // A length of 0 and one beyond any frame cannot be resynchronised: the connection is dropped.
  for (const len of [0, 0x7fffffff]) {
    const before = counter("LINK_MALFORMED");
    const vmm = await Vmm.open(path);
    const b = Buffer.alloc(8);
    b.writeUInt32BE(len, 0);
    vmm.sock.write(b);
    await vmm.whenClosed();
    assert.equal(counter("LINK_MALFORMED"), before + 1, `length ${len} is counted once`);
  }
  // A frame longer than a ring slot but within the framing's limit is skipped; the next is served.
  const vmm = await Vmm.open(path);
  try {
    const before = counter("LINK_MALFORMED");
    vmm.send(new Uint8Array(65535 + 14 + 4)); // MAX_FRAME: larger than the 64 KiB slot
    vmm.send(pingFrame(0x501));
    await vmm.next(isEchoReply(0x501));
    assert.equal(counter("LINK_MALFORMED"), before + 1);
    // Garbage that is framed right is the engine's to drop (a runt): the link stays up.
    vmm.send(new Uint8Array([1, 2, 3]));
    vmm.send(pingFrame(0x502));
    await vmm.next(isEchoReply(0x502));
    assert.ok(counter("DROP_RUNT") >= 1);
  } finally {
    vmm.close();
  }
  assert.ok(counter("LINK_PEERS") >= 5, "every connection was a peer");
});

test("the newest VMM connection wins (a VMM restarting before its old socket closed)", { skip }, async () => {
  const path = join(dir, "net.sock");
  const old = await Vmm.open(path);
  const fresh = await Vmm.open(path);
  try {
    await old.whenClosed();
    fresh.send(pingFrame(0x601));
    await fresh.next(isEchoReply(0x601));
  } finally {
    old.close();
    fresh.close();
  }
});

const MOAT = new URL("../../../bin/moat.js", import.meta.url).pathname;

/**
 * `moat serve` started by `argv` (node MOAT serve ..., or through `ip netns exec`), waited for
 * until it says it serves `kind`: the guest's and the gateway's addresses it printed.
 */
async function startServe(argv: string[], kind: string): Promise<{ child: ChildProcess; stderr: () => string; exited: Promise<number | null>; guest: string; gateway: string }> {
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr!.on("data", (d) => { stderr += d; });
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  const start = Date.now();
  while (!stderr.includes(`serving ${kind}`) && Date.now() - start < 10000) await new Promise((r) => setTimeout(r, 50));
  const m = new RegExp(`moat: serving ${kind} .*: guest (172\\.30\\.\\d+\\.\\d+)/30 \\(DHCP\\).*gateway (172\\.30\\.\\d+\\.\\d+)`).exec(stderr);
  if (!m) {
    child.kill("SIGKILL");
    assert.fail(`moat serve did not start serving ${kind}:\n${stderr}`);
  }
  return { child, stderr: () => stderr, exited, guest: m[1]!, gateway: m[2]! };
}

test("moat serve --stream serves a VMM and stops cleanly on SIGTERM", { skip }, async () => {
  const path = join(dir, "serve.sock");
  const served = await startServe([process.execPath, MOAT, "serve", "--stream", path, "--dns-forward", "none"], "stream");
  try {
    const vmm = await Vmm.open(path);
    vmm.send(eth(BCAST, GUEST_MAC, ETH_ARP, arpRequest(GUEST_MAC, served.guest, served.gateway)));
    await vmm.next(isArpReply);
    served.child.kill("SIGTERM");
    assert.equal(await served.exited, 0, served.stderr());
    await vmm.whenClosed();
    assert.match(served.stderr(), /SIGTERM: stopping/);
  } finally {
    served.child.kill("SIGKILL");
  }
});

test("moat serve: a missing or doubled link is a clear error", { skip }, async () => {
  const run = (args: string[]) => new Promise<{ code: number | null; stderr: string }>((resolve) => {
    const c = spawn(process.execPath, [MOAT, "serve", ...args], { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    c.stderr.on("data", (d) => { stderr += d; });
    c.once("exit", (code) => resolve({ code, stderr }));
  });
  const none = await run([]);
  assert.equal(none.code, 125);
  assert.match(none.stderr, /serve: no link given[\s\S]*hint: give exactly one of --vhost-user PATH, --stream PATH, --attach IFNAME, --tap IFNAME/);
  const two = await run(["--stream", "/tmp/a", "--tap", "tap0"]);
  assert.equal(two.code, 125);
  assert.match(two.stderr, /--stream and --tap both given/);
  const badDir = await run(["--stream", "/nonexistent/dir/x.sock"]);
  assert.equal(badDir.code, 125);
  assert.match(badDir.stderr, /stream link at \/nonexistent\/dir\/x\.sock: listen on .*No such file or directory/);
});

test("moat serve --tap attaches to an existing TAP device: its kernel side takes a DHCP lease and pings the gateway", { skip }, async () => {
  const ns = `mt-tap-${process.pid}`;
  const sh = (args: string[]) => execFileSync("ip", args, { stdio: "pipe", encoding: "utf8" });
  try { sh(["netns", "del", ns]); } catch { /* none */ }
  sh(["netns", "add", ns]);
  sh(["-n", ns, "tuntap", "add", "dev", "mtap0", "mode", "tap"]);
  const served = await startServe(["ip", "netns", "exec", ns, process.execPath, MOAT, "serve", "--tap", "mtap0", "--dns-forward", "none"], "tap");
  try {
    assert.match(served.stderr(), /moat: serving tap mtap0: guest 172\.30\.\d+\.\d+\/30 \(DHCP\)/);
    sh(["-n", ns, "link", "set", "mtap0", "up"]);
    const dhcp = execFileSync("ip", ["netns", "exec", ns, "sh", "-c", "busybox udhcpc -i mtap0 -q -n -t 5 -T 1 -s /bin/true 2>&1"], { encoding: "utf8" });
    const lease = /lease of (172\.30\.\d+\.\d+) obtained/.exec(dhcp)?.[1];
    assert.equal(lease, served.guest, dhcp);
    sh(["-n", ns, "addr", "add", `${lease}/30`, "dev", "mtap0"]);
    const ping = execFileSync("ip", ["netns", "exec", ns, "ping", "-c", "1", "-W", "2", served.gateway], { encoding: "utf8" });
    assert.match(ping, /1 received/);
    served.child.kill("SIGTERM");
    assert.equal(await served.exited, 0, served.stderr());
    // A device moat did not make is left as it was: no virtio-net header (IFF_VNET_HDR), which
    // would outlive moat on it and garble every frame for whoever opens it next without one.
    const flags = sh(["netns", "exec", ns, "cat", "/sys/class/net/mtap0/tun_flags"]).trim();
    assert.equal(Number(flags) & 0x4000, 0, `the TAP's flags after moat: ${flags}`);
  } finally {
    served.child.kill("SIGKILL");
    try { sh(["netns", "del", ns]); } catch { /* gone */ }
  }
});

test("the socket path: a file there is never deleted, a live socket never taken over; the socket is 0600 whatever the umask, and gone at stop", { skip }, async () => {
  const file = join(dir, "precious.txt");
  writeFileSync(file, "precious\n");
  await assert.rejects(serveGateway({ dnsForward: "none" }, { kind: "stream", path: file }), /precious\.txt exists and is not a socket \(moat will not delete it\)/);
  assert.equal(readFileSync(file, "utf8"), "precious\n");
  await assert.rejects(serveGateway({ dnsForward: "none" }, { kind: "vhost-user", path: join(dir, "net.sock") }), /net\.sock is a socket something is listening on/);
  const old = process.umask(0);
  let second: ServedGateway | undefined;
  try {
    second = await serveGateway({ dnsForward: "none", exitGraceMs: 0 }, { kind: "stream", path: join(dir, "second.sock") });
  } finally {
    process.umask(old);
  }
  assert.equal(statSync(join(dir, "second.sock")).mode & 0o777, 0o600);
  await second.stop();
  assert.equal(existsSync(join(dir, "second.sock")), false, "the socket file is removed at stop");
  // A stale socket (bound, nobody listening: a moat that died) is replaced.
  execFileSync("python3", ["-c", "import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])", join(dir, "stale.sock")]);
  assert.ok(statSync(join(dir, "stale.sock")).isSocket());
  const third = await serveGateway({ dnsForward: "none", exitGraceMs: 0 }, { kind: "stream", path: join(dir, "stale.sock") });
  await third.stop();
});
