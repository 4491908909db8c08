// daemon.test.ts — `moat daemon --control PATH`: sandboxes created over the socket (HTTP/1.1 +
// JSON), listed by moat ps, commands run in each by moat exec, a policy change that takes effect
// on the next connection, GET /v1/events streaming the denial, moat rm and SIGTERM leaving
// nothing; and the socket's boundary: 0600, bad requests refused with a reason, another user
// kept out, a file at PATH never replaced.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, statSync, existsSync, writeFileSync, readFileSync, chmodSync } from "node:fs";
import { request } from "node:http";
import { spawnSync, type ChildProcess } from "node:child_process";
import { World, WORLD_IP4, MOAT_BIN, systemTestSkipReason, hasTool, moatNamespaces } from "../testbed/world.js";

const skip = systemTestSkipReason() ?? (hasTool("socat", "-V") ? undefined : "socat is not installed");
const vmSkip = skip ?? (hasTool("qemu-system-x86_64", "--version") ? undefined : "qemu-system-x86_64 is not installed");
let world: World;
let dir = "";
let sock = "";
let daemon: ChildProcess;
let daemonErr = "";

interface Answer { status: number; body: unknown; type: string }

function call(method: string, path: string, body?: unknown, raw?: { data: Buffer | string; type: string }): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const data = raw ? Buffer.from(raw.data) : body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers: Record<string, string | number> = data ? { "content-type": raw?.type ?? "application/json", "content-length": data.length } : {};
    const req = request({ socketPath: sock, method, path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString();
        let parsed: unknown = text;
        try { parsed = text ? JSON.parse(text) : undefined; } catch { /* text */ }
        resolve({ status: res.statusCode ?? 0, body: parsed, type: String(res.headers["content-type"] ?? "") });
      });
    });
    req.on("error", reject);
    req.end(data);
  });
}

/** GET /v1/events: the lines received so far, and a way to close it. */
function eventStream(): { lines: Record<string, unknown>[]; ended: Promise<void>; close(): void } {
  const lines: Record<string, unknown>[] = [];
  let closeReq: () => void = () => {};
  const ended = new Promise<void>((resolve) => {
    const req = request({ socketPath: sock, method: "GET", path: "/v1/events" }, (res) => {
      let buf = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => {
        buf += c;
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          lines.push(JSON.parse(buf.slice(0, nl)) as Record<string, unknown>);
          buf = buf.slice(nl + 1);
        }
      });
      res.on("end", () => resolve());
      res.on("close", () => resolve());
    });
    req.on("error", () => resolve());
    req.end();
    closeReq = () => req.destroy();
  });
  return { lines, ended, close: () => closeReq() };
}

async function until(what: string, cond: () => boolean, ms = 10000): Promise<void> {
  for (let t = 0; t < ms && !cond(); t += 50) await new Promise((r) => setTimeout(r, 50));
  assert.ok(cond(), `${what} (daemon stderr:\n${daemonErr})`);
}

/** A daemon of this test's own (the one before is stopped: a test that failed may have left it). */
async function freshDaemon(extra: string[] = []): Promise<void> {
  if (daemon && daemon.exitCode === null) {
    daemon.kill("SIGTERM");
    await new Promise((r) => daemon.once("exit", r));
  }
  daemonErr = "";
  daemon = world.spawnMoat(["daemon", "--control", sock, ...extra]);
  daemon.stderr!.on("data", (d) => (daemonErr += d));
  await until("the daemon listens", () => /daemon listening/.test(daemonErr));
}

before(async () => {
  if (skip) return;
  dir = mkdtempSync("/tmp/moat-daemon-");
  chmodSync(dir, 0o755);
  sock = `${dir}/control.sock`;
  world = World.create();
  await world.startServer("tcp-echo", 7);
});
after(() => {
  if (daemon && daemon.exitCode === null) daemon.kill("SIGKILL");
  world?.teardown();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test("two sandboxes over the socket: ps lists them, exec runs in each, a policy change holds for the next connection, /events streams the denial, rm and SIGTERM leave nothing", { skip }, async () => {
  await freshDaemon();
  assert.equal(statSync(sock).mode & 0o777, 0o600, "the socket is 0600");
  const events = eventStream();
  const a = await call("POST", "/v1/sandboxes", { name: "alpha", args: [] });
  assert.equal(a.status, 201, JSON.stringify(a.body));
  const b = await call("POST", "/v1/sandboxes", { name: "beta", args: ["--net-rule", "deny@198.51.100.0/24"] });
  assert.equal(b.status, 201, JSON.stringify(b.body));
  const alpha = a.body as { name: string; netns: string; addresses: { guest: { ipv4: string } }; policy: { rules: string[] } };
  const beta = b.body as { name: string; netns: string; addresses: { guest: { ipv4: string } }; policy: { rules: string[] } };
  assert.equal(alpha.name, "alpha");
  assert.match(beta.policy.rules[0]!, /deny:egress@198\.51\.100\.0\/24/);
  assert.notEqual(alpha.addresses.guest.ipv4, beta.addresses.guest.ipv4);
  const dup = await call("POST", "/v1/sandboxes", { name: "alpha" });
  assert.equal(dup.status, 409, "a name in use is refused");

  const ps = await world.moat(["ps", "--control", sock]);
  assert.equal(ps.code, 0, ps.stderr);
  const rows = ps.stdout.trim().split("\n");
  assert.match(rows[0]!, /^NAME\s+KIND\s+GUEST/);
  assert.ok(rows.some((r) => /^alpha\s+namespace\s+172\.30\./.test(r)) && rows.some((r) => /^beta\s+namespace\s+172\.30\./.test(r)), ps.stdout);

  // exec in each: its own address, the echo server reachable, the command's status carried.
  const ea = await world.moat(["exec", "--control", sock, "alpha", "--", "sh", "-c", `ip -4 -o addr show eth0 | grep -o '172[0-9.]*/'; echo hello | socat -t2 - TCP:${WORLD_IP4}:7`]);
  assert.equal(ea.code, 0, ea.stderr);
  assert.deepEqual(ea.stdout.trim().split("\n"), [`${alpha.addresses.guest.ipv4.split("/")[0]}/`, "hello"]);
  const eb = await world.moat(["exec", "beta", "--control", sock, "--", "sh", "-c", "ip -4 -o addr show eth0 | grep -o '172[0-9.]*/'; echo oops >&2; exit 3"]);
  assert.equal(eb.code, 3);
  assert.equal(eb.stdout.trim(), `${beta.addresses.guest.ipv4.split("/")[0]}/`);
  assert.equal(eb.stderr, "oops\n");
  const piped = spawnSync("ip", ["netns", "exec", world.host, process.execPath, MOAT_BIN, "exec", "-i", "--control", sock, "beta", "--", "tr", "a-z", "A-Z"], { input: "shout\n", encoding: "utf8" });
  assert.equal(piped.stdout, "SHOUT\n", piped.stderr);
  const collected = await call("POST", "/v1/sandboxes/beta/exec", { command: ["sh", "-c", "cat; echo to-err >&2"], stdin: "from stdin\n" });
  assert.deepEqual(collected.body, { status: 0, stdout: "from stdin\n", stderr: "to-err\n" });

  // A policy change: the next connection is denied, and the denial is streamed.
  const pol = await world.moat(["policy", "alpha", "--control", sock, "--net-default-egress", "deny", "--net-rule", "allow@192.0.2.1:tcp:9"]);
  assert.equal(pol.code, 0, pol.stderr);
  assert.match(pol.stdout, /"defaultAction": "deny"/);
  const denied = await world.moat(["exec", "--control", sock, "alpha", "--", "sh", "-c", `echo hello | socat -t2 - TCP:${WORLD_IP4}:7,connect-timeout=2; echo status=$?`]);
  assert.match(denied.stdout, /status=1/, denied.stdout + denied.stderr);
  assert.doesNotMatch(denied.stdout, /hello/);
  await until("the denial is streamed", () => events.lines.some((e) => e.kind === "flow-denied" && e.sandbox === "alpha" && e.destination === WORLD_IP4 && e.port === 7));
  const deny = events.lines.find((e) => e.kind === "flow-denied")!;
  assert.equal(deny.v, 1);
  assert.equal(deny.rule, "default");
  // beta's policy was not touched.
  const eb2 = await world.moat(["exec", "--control", sock, "beta", "--", "sh", "-c", `echo again | socat -t2 - TCP:${WORLD_IP4}:7`]);
  assert.equal(eb2.stdout.trim(), "again");

  // Ports over the socket.
  const pub = await world.moat(["publish", "--control", sock, "beta", "0:8080"]);
  assert.equal(pub.code, 0, pub.stderr);
  const port = Number(/^127\.0\.0\.1:(\d+) -> 8080\/tcp$/.exec(pub.stdout.trim())?.[1]);
  assert.ok(port > 0, pub.stdout);
  const insp = await world.moat(["inspect", "--control", sock, "beta"]);
  const described = JSON.parse(insp.stdout) as { ports: { host: number }[]; counters: Record<string, number>; flows: unknown; addresses: unknown; policy: unknown };
  assert.deepEqual(described.ports.map((p) => p.host), [port]);
  assert.ok(described.counters.TCP_FLOWS_OPENED! >= 1, JSON.stringify(described.counters));
  assert.ok(described.addresses && described.policy && described.flows);
  assert.equal((await world.moat(["unpublish", "--control", sock, "beta", String(port)])).code, 0);
  await until("port events streamed", () => events.lines.some((e) => e.kind === "port-unpublished" && e.host === port));

  // The daemon's metrics: both sandboxes.
  const metrics = await call("GET", "/metrics");
  assert.match(metrics.type, /version=0\.0\.4/);
  assert.match(String(metrics.body), /moat_sandbox_up\{sandbox="alpha"\} 1/);
  assert.match(String(metrics.body), /moat_sandbox_up\{sandbox="beta"\} 1/);

  // rm: alpha and its namespace go; beta stays.
  assert.ok(moatNamespaces().includes(alpha.netns));
  const rm = await world.moat(["rm", "--control", sock, "alpha"]);
  assert.equal(rm.code, 0, rm.stderr);
  assert.ok(!moatNamespaces().includes(alpha.netns), "alpha's namespace is gone");
  const ps2 = await world.moat(["ps", "--control", sock]);
  assert.ok(!/^alpha/m.test(ps2.stdout) && /^beta/m.test(ps2.stdout), ps2.stdout);
  const gone = await world.moat(["exec", "--control", sock, "alpha", "--", "true"]);
  assert.equal(gone.code, 125);
  assert.match(gone.stderr, /no sandbox named "alpha"/);

  // SIGTERM: beta goes too, the event stream ends after its sandbox-destroyed, the socket is removed.
  daemon.kill("SIGTERM");
  const code = await new Promise((r) => (daemon.exitCode !== null ? r(daemon.exitCode) : daemon.once("exit", r)));
  assert.equal(code, 0, daemonErr);
  await events.ended;
  assert.deepEqual(events.lines.filter((e) => e.kind === "sandbox-destroyed").map((e) => e.sandbox).sort(), ["alpha", "beta"]);
  assert.deepEqual(events.lines.filter((e) => e.kind === "sandbox-created").map((e) => e.sandbox).sort(), ["alpha", "beta"], "creation is streamed too");
  assert.ok(!moatNamespaces().includes(beta.netns), "beta's namespace is gone");
  assert.ok(!existsSync(sock), "the socket is removed");
  assert.ok(!existsSync("/run/moat/names/alpha") && !existsSync("/run/moat/names/beta"), "the names are released");
});

test("an exec whose client goes away is hung up on: a command that ignores SIGHUP is killed 2 s later; streamed and collected alike", { skip }, async () => {
  await freshDaemon();
  const created = await call("POST", "/v1/sandboxes", { name: "gamma", args: [] });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const alive = (marker: string) => spawnSync("pgrep", ["-f", marker]).status === 0;
  // A command that takes the hangup (exits at SIGHUP), and one that ignores it (killed later).
  for (const [stream, script, marker, killedAfterMs] of [
    [true, "echo started; exec sleep 3607", "sleep 3607", 0],
    [false, "exec sleep 3608", "sleep 3608", 0],
    [true, "trap '' HUP; echo started; sleep 3609; :", "sleep 3609", 1500],
  ] as const) {
    let firstData: () => void = () => {};
    const started = new Promise<void>((r) => (firstData = r));
    const req = request({ socketPath: sock, method: "POST", path: "/v1/sandboxes/gamma/exec", headers: { "content-type": "application/json" } }, (res) => res.once("data", () => firstData()));
    req.on("error", () => {});
    req.end(JSON.stringify({ command: ["sh", "-c", script], stream }));
    if (stream) await started;
    await until(`${marker} runs`, () => alive(marker));
    const t0 = performance.now();
    req.destroy();
    await until(`${marker} is gone once its client went`, () => !alive(marker), 6000);
    const ms = performance.now() - t0;
    assert.ok(ms >= killedAfterMs, `${marker}: gone after ${ms.toFixed(0)} ms (one that ignores SIGHUP lives until the kill)`);
  }
  const still = await call("POST", "/v1/sandboxes/gamma/exec", { command: ["echo", "still serving"] });
  assert.deepEqual(still.body, { status: 0, stdout: "still serving\n", stderr: "" });
  assert.equal((await call("DELETE", "/v1/sandboxes/gamma")).status, 204);
});

test("the socket refuses what it cannot judge, and keeps other users out", { skip }, async () => {
  await freshDaemon(["--metrics", "127.0.0.1:0"]);
  try {
    // (--metrics on the daemon: every sandbox's series, none yet.)
    const port = /metrics on http:\/\/127\.0\.0\.1:(\d+)\/metrics/.exec(daemonErr)?.[1];
    assert.ok(port, daemonErr);
    const scrape = spawnSync("ip", ["netns", "exec", world.host, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{content_type}", `http://127.0.0.1:${port}/metrics`], { encoding: "utf8" });
    assert.equal(scrape.stdout, "200 text/plain; version=0.0.4; charset=utf-8", scrape.stderr);
    const notJson = await call("POST", "/v1/sandboxes", undefined, { data: "{nope", type: "application/json" });
    assert.equal(notJson.status, 400);
    assert.match((notJson.body as { error: string }).error, /not JSON/);
    const form = await call("POST", "/v1/sandboxes", undefined, { data: "name=x", type: "application/x-www-form-urlencoded" });
    assert.equal(form.status, 415);
    const huge = await call("POST", "/v1/sandboxes", undefined, { data: JSON.stringify({ args: ["x".repeat(2 << 20)] }), type: "application/json" });
    assert.equal(huge.status, 413);
    const badName = await call("POST", "/v1/sandboxes", { name: "../../etc/x" });
    assert.equal(badName.status, 400);
    assert.match((badName.body as { error: string; hint: string }).error, /sandbox name "..\/..\/etc\/x" is not valid/);
    const badArgs = await call("POST", "/v1/sandboxes", { args: ["--net-rule", "alow@any"] });
    assert.equal(badArgs.status, 400);
    assert.ok((badArgs.body as { hint?: string }).hint, "with a hint");
    const cmdArgs = await call("POST", "/v1/sandboxes", { args: ["--", "sh"] });
    assert.equal(cmdArgs.status, 400);
    const types = await call("POST", "/v1/sandboxes", { args: "--net none" });
    assert.equal(types.status, 400);
    assert.match((types.body as { error: string }).error, /args must be a list of strings/);
    assert.equal((await call("GET", "/v1/sandboxes/nobody-here")).status, 404);
    assert.equal((await call("GET", "/v1/sandboxes/%zz")).status, 400);
    assert.equal((await call("PATCH", "/v1/sandboxes")).status, 405);
    assert.equal((await call("GET", "/etc/passwd")).status, 404);
    // Another user cannot connect (the socket is 0600, root's).
    if (hasTool("runuser", "--version") && hasTool("curl", "--version")) {
      const r = spawnSync("runuser", ["-u", "nobody", "--", "curl", "-sS", "--unix-socket", sock, "http://moat/v1/sandboxes"], { encoding: "utf8" });
      assert.notEqual(r.status, 0, "nobody got in");
      assert.match(r.stderr, /Permission denied|Couldn't connect|Failed to connect/i);
    }
    // A second daemon at the same path is refused; the first keeps serving.
    const second = await world.moat(["daemon", "--control", sock], 10000);
    assert.equal(second.code, 125);
    assert.match(second.stderr, /another moat is listening at control socket/);
    assert.equal((await call("GET", "/v1/sandboxes")).status, 200);
    // moat create: the flags of moat run, no command.
    const made = await world.moat(["create", "--control", sock, "--name", "gamma", "--net", "none"]);
    assert.equal(made.code, 0, made.stderr);
    assert.equal((JSON.parse(made.stdout) as { name: string; policy: { offline: boolean } }).policy.offline, true);
    const withCmd = await world.moat(["create", "--control", sock, "--name", "delta", "--", "sh"]);
    assert.equal(withCmd.code, 125);
    assert.match(withCmd.stderr, /create: unexpected argument/);
    assert.equal((await world.moat(["rm", "--control", sock, "gamma"])).code, 0);
  } finally {
    daemon.kill("SIGTERM");
    await new Promise((r) => (daemon.exitCode !== null ? r(null) : daemon.once("exit", r)));
  }
  // A file at PATH that is not a socket is never replaced.
  writeFileSync(sock, "precious");
  const r = await world.moat(["daemon", "--control", sock], 10000);
  assert.equal(r.code, 125);
  assert.match(r.stderr, /exists and is not a socket/);
  assert.equal(readFileSync(sock, "utf8"), "precious");
  rmSync(sock);
  // A client with no daemon says so, with the way to start one.
  const none = await world.moat(["ps", "--control", sock]);
  assert.equal(none.code, 125);
  assert.match(none.stderr, /cannot reach the control socket .*no moat is listening there/);
  assert.match(none.stderr, /hint: start one with moat daemon/);
});

test("moat serve --control: its one guest is listed, inspected and re-policed over the socket; no commands, creation or removal", { skip }, async () => {
  const link = `${dir}/serve-stream.sock`;
  const csock = `${dir}/serve-control.sock`;
  const served = world.spawnMoat(["serve", "--stream", link, "--name", "served-guest", "--dns-forward", "none", "--control", csock]);
  let err = "";
  served.stderr!.on("data", (d) => (err += d));
  const exited = new Promise<number | null>((r) => served.once("exit", (c) => r(c)));
  try {
    for (let t = 0; t < 10000 && !/control socket/.test(err); t += 50) await new Promise((r) => setTimeout(r, 50));
    assert.match(err, /moat: control socket .*serve-control\.sock/);
    assert.equal(statSync(csock).mode & 0o777, 0o600);
    const ps = await world.moat(["ps", "--control", csock]);
    assert.match(ps.stdout, /^served-guest\s+served\s+172\.30\./m, ps.stdout + ps.stderr);
    const pol = await world.moat(["policy", "served-guest", "--control", csock, "--net-rule", "deny@192.0.2.0/24"]);
    assert.equal(pol.code, 0, pol.stderr);
    const inspected = JSON.parse((await world.moat(["inspect", "served-guest", "--control", csock])).stdout) as { kind: string; policy: { rules: string[] } };
    assert.equal(inspected.kind, "served");
    assert.match(inspected.policy.rules[0]!, /deny:egress@192\.0\.2\.0\/24/);
    const ex = await world.moat(["exec", "served-guest", "--control", csock, "--", "true"]);
    assert.equal(ex.code, 125);
    assert.match(ex.stderr, /runs no commands for moat/);
    const rm = await world.moat(["rm", "served-guest", "--control", csock]);
    assert.equal(rm.code, 125);
    assert.match(rm.stderr, /cannot be removed over the control socket[^]*hint: it is the guest of moat serve/);
    const cr = await world.moat(["create", "--control", csock]);
    assert.equal(cr.code, 125);
    assert.match(cr.stderr, /does not create sandboxes/);
    served.kill("SIGTERM");
    assert.equal(await exited, 0, err);
    assert.ok(!existsSync(csock), "the control socket is removed");
  } finally {
    served.kill("SIGKILL");
  }
});

test("a VM sandbox over the socket: created, exec'd (collected and streamed), inspected, removed", { skip: vmSkip, timeout: 180000 }, async (t) => {
  await freshDaemon();
  try {
    const c = await call("POST", "/v1/sandboxes", { name: "vmbox", vm: true, args: ["--vm-accel", "tcg"] });
    const code = (c.body as { code?: string }).code;
    if (c.status !== 201 && (code === "ERR_MISSING_TOOL" || code === "ERR_VM")) return t.skip(`no VM here: ${JSON.stringify(c.body)}`);
    assert.equal(c.status, 201, JSON.stringify(c.body));
    const d = c.body as { kind: string; addresses: { guest: { ipv4: string } } };
    assert.equal(d.kind, "vm");
    const r = await call("POST", "/v1/sandboxes/vmbox/exec", { command: ["sh", "-c", "echo $((6*7)); ip -4 addr show eth0 | grep -c 'inet 172'; exit 4"] });
    assert.deepEqual(r.body, { status: 4, stdout: "42\n1\n", stderr: "" });
    const e = await world.moat(["exec", "--control", sock, "vmbox", "--", "sh", "-c", "uname -s; echo err >&2"]);
    assert.equal(e.code, 0, e.stderr);
    assert.equal(e.stdout, "Linux\n");
    assert.equal(e.stderr, "err\n");
    // A streamed exec whose client goes: the guest's command (which ignores the hangup) and its
    // child are killed after the grace, and the VM takes the next command (one at a time).
    let firstData: () => void = () => {};
    const started = new Promise<void>((r) => (firstData = r));
    const req = request({ socketPath: sock, method: "POST", path: "/v1/sandboxes/vmbox/exec", headers: { "content-type": "application/json" } }, (res) => res.once("data", () => firstData()));
    req.on("error", () => {});
    req.end(JSON.stringify({ command: ["sh", "-c", "trap '' HUP; echo started; sleep 3610; :"], stream: true }));
    await started;
    const t0 = performance.now();
    req.destroy();
    let after: Answer | undefined;
    for (let i = 0; i < 100; i++) {
      after = await call("POST", "/v1/sandboxes/vmbox/exec", { command: ["sh", "-c", "ps | grep -c '[s]leep 3610'"] });
      if (after.status === 200) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.deepEqual(after?.body, { status: 1, stdout: "0\n", stderr: "" }, "no sleep 3610 left in the guest");
    assert.ok(performance.now() - t0 >= 1500, "the command lived until the kill (it ignores SIGHUP)");
    const ps = await world.moat(["ps", "--control", sock]);
    assert.match(ps.stdout, /^vmbox\s+vm\s+172\.30\./m);
    const rm = await world.moat(["rm", "--control", sock, "vmbox"]);
    assert.equal(rm.code, 0, rm.stderr);
    assert.deepEqual((await call("GET", "/v1/sandboxes")).body, []);
  } finally {
    daemon.kill("SIGTERM");
    await new Promise((r) => (daemon.exitCode !== null ? r(null) : daemon.once("exit", r)));
  }
});
