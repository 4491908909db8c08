// inbound.ts — published ports exercised from the host side with real clients, through the
// library (run inside the testbed's host namespace: the ports bind that namespace's loopback).
//
//   node inbound.js
//
// One sandbox runs the testbed servers inside (servers.js: tcp-sink, tcp-source, tcp-echo,
// tcp-reset, udp-echo) and python3's http.server; the host side connects to the published ports
// with curl and Node clients. Prints one JSON object of findings on stdout (the system test
// asserts them):
//   http          curl's body from the guest's http.server
//   upload        { sent, got } SHA-256 of 64 MiB sent and of what tcp-sink received
//   download      { want, got } SHA-256 of the 64 MiB test stream and of what arrived
//   concurrent    connections (of 200, 64 KiB each way through tcp-echo) whose echo was exact
//   halfClose     what came back after the client's FIN, and whether the guest's FIN followed
//   ipv6          the echo through a [::1] bind
//   peerReset     the engine's TCP_HOST_RESETS grew when a client reset its connection
//   guestReset    the error a client saw when the guest reset it
//   closedPort    { error, ms } for a published port with nothing listening in the guest
//   denied        { error, events } a peer that an ingress rule denies, and the audit events
//   udp           the replies two UDP peers got (each its own)
//   live          { before, published, after } errors/echo around publish() and unpublish()
//   limit         { errors, flowLimit } a 4th connection over --max-connections 3
//   leftovers     { flows, sockets } once everything closed
import { createConnection, type Socket } from "node:net";
import { createSocket } from "node:dgram";
import { createHash, randomBytes } from "node:crypto";
import { execFileSync, type ChildProcess } from "node:child_process";
import { writeFileSync, rmSync } from "node:fs";
import { NetnsSandbox, NetworkPolicy } from "../../orchestrator/src/index.js";
import { parseRule } from "../../orchestrator/src/policy/rule-parser.js";
import type { DenyEvent } from "../../orchestrator/src/policy/audit.js";
import { CHUNK, streamHash } from "./stream-data.js";
import { sandboxReadableDir } from "./world.js";

const MiB = 1 << 20;
const SERVERS = new URL("./servers.js", import.meta.url).pathname;
const out: Record<string, unknown> = {};
const denies: DenyEvent[] = [];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const sb = await NetnsSandbox.create({
  dnsForward: "none",
  exitGraceMs: 0,
  udpIdleMs: 1000, // the UDP peers' flows expire before the leftovers are counted
  policy: new NetworkPolicy("deny", [parseRule("deny:ingress@127.0.0.2:tcp")]),
  onDeny: (e) => denies.push(e),
  ports: [
    { host: 0, guest: 9001 },
    { host: 0, guest: 9002 },
    { host: 0, guest: 9003 },
    { bind: "::1", host: 0, guest: 9003 },
    { host: 0, guest: 9004 },
    { host: 0, guest: 9005 },
    { host: 0, guest: 9006, protocol: "udp" },
    { host: 0, guest: 8000 },
  ],
});
const port = (guest: number, protocol = "tcp", bind = "127.0.0.1") => sb.ports.find((p) => p.guest === guest && p.protocol === protocol && p.bind === bind)!.host;
const children: ChildProcess[] = [];

async function guestServer(s: NetnsSandbox, kind: string, p: number): Promise<void> {
  const c = s.spawn([process.execPath, SERVERS, kind, String(p)], ["ignore", "pipe", "inherit"]);
  children.push(c);
  await new Promise<void>((resolve, reject) => {
    c.stdout!.once("data", () => resolve());
    c.once("exit", () => reject(new Error(`${kind} exited`)));
  });
}

/** Connect, run `f`, and report the error (code) the socket ended with, if any. */
function connect(p: number, host = "127.0.0.1", localAddress?: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = createConnection({ port: p, host, localAddress }, () => resolve(s));
    s.once("error", reject);
  });
}

/** Everything the socket delivers until it ends (or fails: the error code). */
function readAll(s: Socket): Promise<{ data: Buffer; error?: string; ended: boolean }> {
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    let ended = false;
    s.on("data", (d) => parts.push(d));
    s.on("end", () => { ended = true; });
    s.on("error", (e: NodeJS.ErrnoException) => resolve({ data: Buffer.concat(parts), error: e.code, ended }));
    s.on("close", () => resolve({ data: Buffer.concat(parts), ended }));
  });
}

/** The error a fresh connection meets (after writing a byte), and after how long. */
async function failure(p: number, host = "127.0.0.1", localAddress?: string): Promise<{ error?: string; ms: number }> {
  const t0 = performance.now();
  try {
    const s = await connect(p, host, localAddress);
    s.write("x");
    const r = await Promise.race([readAll(s), sleep(5000).then(() => ({ error: "TIMEOUT" }))]);
    s.destroy();
    return { error: r.error ?? "CLOSED", ms: Math.round(performance.now() - t0) };
  } catch (e) {
    return { error: (e as NodeJS.ErrnoException).code, ms: Math.round(performance.now() - t0) };
  }
}

async function echoOnce(p: number, bytes: number, host = "127.0.0.1"): Promise<boolean> {
  const data = randomBytes(bytes);
  const s = await connect(p, host);
  const r = readAll(s);
  s.end(data);
  const got = await r;
  return got.error === undefined && got.data.equals(data);
}

try {
  await guestServer(sb, "tcp-sink", 9001);
  await guestServer(sb, "tcp-source", 9002);
  await guestServer(sb, "tcp-echo", 9003);
  await guestServer(sb, "tcp-reset", 9004);
  await guestServer(sb, "udp-echo", 9006);
  const dir = sandboxReadableDir("moat-http-");
  writeFileSync(`${dir}/hello.txt`, "hello from inside the sandbox\n");
  children.push(sb.spawn(["python3", "-m", "http.server", "--bind", "0.0.0.0", "--directory", dir, "8000"], "ignore"));

  // HTTP with curl (retry while http.server starts).
  for (let i = 0; i < 50 && out.http === undefined; i++) {
    try {
      out.http = execFileSync("curl", ["-sS", "--fail", "-m", "5", `http://127.0.0.1:${port(8000)}/hello.txt`], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
    } catch {
      await sleep(100);
    }
  }
  rmSync(dir, { recursive: true, force: true });

  // 64 MiB each way.
  {
    const data = randomBytes(64 * MiB);
    const s = await connect(port(9001));
    const r = readAll(s);
    s.end(data);
    out.upload = { sent: createHash("sha256").update(data).digest("hex"), got: (await r).data.toString().trim() };
  }
  {
    const s = await connect(port(9002));
    const r = readAll(s);
    s.write(`${64 * MiB}\n`);
    const got = await r;
    out.download = { want: streamHash(64 * MiB), got: createHash("sha256").update(got.data).digest("hex"), bytes: got.data.length, chunk: CHUNK };
  }

  // 200 at once.
  out.concurrent = (await Promise.all(Array.from({ length: 200 }, () => echoOnce(port(9003), 65536).catch(() => false)))).filter(Boolean).length;

  // Half-close: the client's FIN reaches the guest; its echo and FIN come back.
  {
    const s = await connect(port(9003));
    const r = readAll(s);
    s.end("half-closed hello");
    const got = await r;
    out.halfClose = { data: got.data.toString(), ended: got.ended, error: got.error };
  }
  out.ipv6 = await echoOnce(port(9003, "tcp", "::1"), 100000, "::1");

  // Resets both ways.
  {
    const before = sb.counters().TCP_HOST_RESETS ?? 0;
    const s = await connect(port(9003));
    s.write(randomBytes(1000));
    await sleep(100);
    s.resetAndDestroy();
    await sleep(300);
    out.peerReset = (sb.counters().TCP_HOST_RESETS ?? 0) - before;
  }
  out.guestReset = (await failure(port(9004))).error;
  out.closedPort = await failure(port(9005));
  {
    const f = await failure(port(9003), "127.0.0.1", "127.0.0.2");
    for (let i = 0; i < 50 && !denies.some((e) => e.direction === "inbound"); i++) await sleep(20); // the audit ring is drained asynchronously
    out.denied = { ...f, events: denies.filter((e) => e.direction === "inbound") };
  }

  // UDP: two peers, each gets its own reply.
  {
    const replies = await Promise.all(["peer-one", "peer-two"].map((msg) => new Promise<string>((resolve) => {
      const u = createSocket("udp4");
      const timer = setTimeout(() => { u.close(); resolve("TIMEOUT"); }, 3000);
      u.on("message", (m) => { clearTimeout(timer); u.close(); resolve(m.toString()); });
      u.send(msg, port(9006, "udp"), "127.0.0.1");
    })));
    out.udp = replies;
  }

  // Publish and withdraw on the running sandbox.
  {
    const p = await sb.publish({ host: 0, guest: 9003 });
    const published = await echoOnce(p.host, 1000);
    await sb.unpublish(p.host);
    out.live = { published, after: (await failure(p.host)).error };
  }

  // The connection limit applies to inbound connections too.
  {
    const lim = await NetnsSandbox.create({ dnsForward: "none", exitGraceMs: 0, maxConnections: 3, ports: [{ host: 0, guest: 9003 }] });
    try {
      await guestServer(lim, "tcp-echo", 9003);
      const lp = lim.ports[0]!.host;
      const held: Socket[] = [];
      for (let i = 0; i < 3; i++) {
        const s = await connect(lp);
        s.on("error", () => {});
        s.write("hold");
        held.push(s);
      }
      await sleep(200);
      const fourth = await failure(lp);
      out.limit = { fourth: fourth.error, flowLimit: lim.counters().DROP_FLOW_LIMIT ?? 0, refused: lim.counters().INBOUND_REFUSED ?? 0 };
      for (const s of held) s.destroy();
    } finally {
      await lim.destroy({ graceMs: 0 });
    }
  }

  // Everything closed: the table and the host sockets drain (lingering flows go after 2 s).
  const deadline = Date.now() + 8000;
  while ((sb.flowStats().flows > 0 || (await sb.liveSockets()) > 0) && Date.now() < deadline) await sleep(100);
  out.leftovers = { flows: sb.flowStats().flows, sockets: await sb.liveSockets() };
  out.counters = sb.counters(true);
} catch (e) {
  out.failure = (e as Error).stack ?? String(e);
} finally {
  for (const c of children) c.kill("SIGKILL");
  await sb.destroy({ graceMs: 0 });
}
process.stdout.write(JSON.stringify(out) + "\n");
process.exit(0);
