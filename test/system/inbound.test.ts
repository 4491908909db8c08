// inbound.test.ts — published ports (-p, sandbox.publish): host clients reach servers inside the
// sandbox through the engine's active opens, judged by ingress rules and the connection limit.
// The library scenario (testbed/inbound.ts) runs once; each test checks one of its findings.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { rmSync, writeFileSync } from "node:fs";
import { World, sandboxReadableDir, systemTestSkipReason, hasTool } from "../testbed/world.js";

const skip = systemTestSkipReason() ?? (hasTool("curl", "--version") ? undefined : "curl is not installed");
let world: World;
let found: Record<string, any> = {};


before(async () => {
  if (skip) return;
  world = World.create();
  const r = await world.sandboxScript("inbound.js", [], 180000);
  assert.equal(r.code, 0, r.stderr);
  found = JSON.parse(r.stdout.trim().split("\n").pop()!);
  assert.equal(found.failure, undefined, `the scenario failed: ${found.failure}`);
});
after(() => world?.teardown());

test("curl on the host reaches an HTTP server inside the sandbox through a published port", { skip }, () => {
  assert.equal(found.http, "hello from inside the sandbox\n");
});

test("64 MiB cross a published port each way, hash-checked", { skip }, () => {
  assert.equal(found.upload.got, found.upload.sent, "upload");
  assert.equal(found.download.bytes, 64 * 1024 * 1024);
  assert.equal(found.download.got, found.download.want, "download");
});

test("200 concurrent inbound connections all echo exactly", { skip }, () => {
  assert.equal(found.concurrent, 200);
});

test("half-close and resets cross in both directions", { skip }, () => {
  assert.deepEqual(found.halfClose, { data: "half-closed hello", ended: true }, "the client's FIN reached the guest and the guest's came back");
  assert.equal(found.peerReset, 1, "a peer's reset reached the engine (and the guest)");
  assert.equal(found.guestReset, "ECONNRESET", "the guest's reset reached the peer");
});

test("an IPv6 bind ([::1]) serves the same guest port", { skip }, () => {
  assert.equal(found.ipv6, true);
});

test("a published port with nothing listening in the guest resets the client at once", { skip }, () => {
  assert.equal(found.closedPort.error, "ECONNRESET");
  assert.ok(found.closedPort.ms < 1000, `took ${found.closedPort.ms} ms`);
});

test("an ingress deny rule resets the peer and writes an inbound audit event", { skip }, () => {
  assert.equal(found.denied.error, "ECONNRESET");
  const [e] = found.denied.events;
  assert.ok(e, "no audit event");
  assert.equal(e.direction, "inbound");
  assert.match(e.source, /^127\.0\.0\.2:\d+$/);
  assert.equal(e.port, 9003);
  assert.match(e.rule, /deny:ingress@127\.0\.0\.2\/32:tcp/);
  assert.equal(found.denied.events.length, 1, "only the denied peer is audited");
});

test("UDP: each peer of a published port gets its own replies", { skip }, () => {
  assert.deepEqual(found.udp, ["peer-one", "peer-two"]);
});

test("ports are published and withdrawn on a running sandbox", { skip }, () => {
  assert.equal(found.live.published, true);
  assert.equal(found.live.after, "ECONNREFUSED");
});

test("inbound connections count against --max-connections: over it, a reset", { skip }, () => {
  assert.equal(found.limit.fourth, "ECONNRESET");
  assert.equal(found.limit.flowLimit, 1);
});

test("afterwards the flow table and the host sockets are empty", { skip }, () => {
  assert.deepEqual(found.leftovers, { flows: 0, sockets: 0 });
});

test("moat run -p: a port in use is an error before the command starts", { skip }, async () => {
  // Something listens on 127.0.0.1:18080 in the host namespace first (until teardown).
  await world.startProcess(["python3", "-c", "import socket,time;s=socket.socket();s.bind(('127.0.0.1',18080));s.listen();print('ready',flush=True);time.sleep(600)"], "host");
  const r = await world.moat(["run", "-p", "18080:80", "--", "echo", "the command ran"]);
  assert.equal(r.code, 125, r.stderr);
  assert.match(r.stderr, /cannot publish 127\.0\.0\.1:18080\/tcp: the port is already in use/);
  assert.equal(r.stdout, "", "the command ran anyway");
});

test("moat run -p serves curl on the host; a wildcard bind warns", { skip }, async () => {
  const dir = sandboxReadableDir("moat-http-");
  writeFileSync(`${dir}/hello.txt`, "served through -p\n");
  const p = world.spawnMoat(["run", "-p", "0.0.0.0:18081:8000", "--", "python3", "-m", "http.server", "--bind", "0.0.0.0", "--directory", dir, "8000"]);
  let stderr = "";
  p.stderr!.on("data", (d) => (stderr += d));
  const exited = new Promise((r) => p.once("exit", r));
  let body = "";
  try {
    for (let i = 0; i < 100 && !body; i++) {
      try {
        body = execFileSync("ip", ["netns", "exec", world.host, "curl", "-sS", "--fail", "-m", "2", "http://127.0.0.1:18081/hello.txt"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  } finally {
    p.kill("SIGTERM");
    await exited;
    rmSync(dir, { recursive: true, force: true });
  }
  assert.equal(body, "served through -p\n");
  assert.match(stderr, /warning: publishing 0\.0\.0\.0:18081\/tcp exposes sandbox port 8000\/tcp to every network this machine is on/);
});

// ---- [::] binds: dual-stack --------------------------------------------------------------------

/** Inside the sandbox: TCP 8000 greets, UDP 9000 echoes with a prefix. */
const GUEST_SERVERS = `import socket, threading
def tcp():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 8000)); s.listen()
    while True:
        c, _ = s.accept(); c.sendall(b'tcp from the sandbox'); c.close()
threading.Thread(target=tcp, daemon=True).start()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('0.0.0.0', 9000))
while True:
    d, a = u.recvfrom(2000); u.sendto(b'udp:' + d, a)
`;

/** On the host: what each (proto, address, port) answers, retried until the sandbox is up. */
const HOST_CLIENT = `import json, socket, sys, time
def ask(proto, host, port):
    fam = socket.AF_INET6 if ':' in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM if proto == 'tcp' else socket.SOCK_DGRAM); s.settimeout(1)
    if proto == 'tcp': s.connect((host, port))
    else: s.sendto(('hi ' + host).encode(), (host, port))
    return s.recv(100).decode()
out = {}
for spec in sys.argv[1:]:
    proto, host, port = spec.split(',')
    deadline = time.time() + 20
    while True:
        try: out[spec] = ask(proto, host, int(port)); break
        except Exception as e:
            if time.time() > deadline: out[spec] = type(e).__name__; break
            time.sleep(0.2)
print(json.dumps(out))
`;

/** moat run ARGS around the guest servers; the host client's answers for `asks`, and moat's stderr. */
async function publishAndAsk(args: string[], asks: string[]): Promise<{ answers: Record<string, string>; stderr: string }> {
  const dir = sandboxReadableDir("moat-dual-");
  writeFileSync(`${dir}/guest.py`, GUEST_SERVERS);
  writeFileSync(`${dir}/client.py`, HOST_CLIENT);
  const p = world.spawnMoat(["run", ...args, "--", "python3", `${dir}/guest.py`]);
  let stderr = "";
  p.stderr!.on("data", (d) => (stderr += d));
  const exited = new Promise((r) => p.once("exit", r));
  let out: string;
  try {
    out = execFileSync("ip", ["netns", "exec", world.host, "python3", `${dir}/client.py`, ...asks], { encoding: "utf8" });
  } finally {
    p.kill("SIGTERM");
    await exited; // (and its stderr read: execFileSync held the event loop)
    rmSync(dir, { recursive: true, force: true });
  }
  return { answers: JSON.parse(out) as Record<string, string>, stderr };
}

test("-p [::]:H:G listens dual-stack: 127.0.0.1:H and [::1]:H both reach guest port G, over TCP and UDP", { skip }, async () => {
  const { answers, stderr } = await publishAndAsk(["-p", "[::]:18082:8000", "-p", "[::]:18082:9000/udp"],
    ["tcp,127.0.0.1,18082", "tcp,::1,18082", "udp,127.0.0.1,18082", "udp,::1,18082"]);
  assert.deepEqual(answers, {
    "tcp,127.0.0.1,18082": "tcp from the sandbox",
    "tcp,::1,18082": "tcp from the sandbox",
    "udp,127.0.0.1,18082": "udp:hi 127.0.0.1",
    "udp,::1,18082": "udp:hi ::1",
  }, stderr);
  assert.doesNotMatch(stderr, /IPv6 only/);
});

test("-p [::]:H:G where IPv4 port H is taken listens on IPv6 only and says so", { skip }, async () => {
  await world.startProcess(["python3", "-c", "import socket,time;s=socket.socket();s.bind(('127.0.0.1',18084));s.listen();print('ready',flush=True)\nwhile True:\n  c,_=s.accept();c.sendall(b'another program');c.close()"], "host");
  const { answers, stderr } = await publishAndAsk(["-p", "[::]:18084:8000"], ["tcp,::1,18084", "tcp,127.0.0.1,18084"]);
  assert.deepEqual(answers, { "tcp,::1,18084": "tcp from the sandbox", "tcp,127.0.0.1,18084": "another program" }, stderr);
  assert.match(stderr, /warning: publishing \[::\]:18084\/tcp \(IPv6 only\): IPv4 port 18084\/tcp is taken on this machine, so only IPv6 peers reach sandbox port 8000 \(127\.0\.0\.1:18084 does not\)/);
});

test("-p [::]:H with an IPv4 -p of H: IPv4 first serves both (the IPv6 one quietly IPv6 only); [::] first is an error saying why", { skip }, async () => {
  const { answers, stderr } = await publishAndAsk(["-p", "127.0.0.1:18086:9000/udp", "-p", "[::]:18086:9000/udp"], ["udp,127.0.0.1,18086", "udp,::1,18086"]);
  assert.deepEqual(answers, { "udp,127.0.0.1,18086": "udp:hi 127.0.0.1", "udp,::1,18086": "udp:hi ::1" }, stderr);
  assert.doesNotMatch(stderr, /is taken on this machine/);
  const r = await world.moat(["run", "-p", "[::]:18085:8000", "-p", "127.0.0.1:18085:8000", "--", "true"]);
  assert.equal(r.code, 125, r.stderr);
  assert.match(r.stderr, /cannot publish 127\.0\.0\.1:18085\/tcp: this sandbox's \[::\]:18085\/tcp listens on IPv4 too \(dual-stack\)/);
  assert.match(r.stderr, /hint: publish 127\.0\.0\.1:18085\/tcp before \[::\]/);
});
