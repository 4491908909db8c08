// lifecycle.test.ts — nothing outlives moat (issue 20, items 2 and 3): whatever ends it — a
// signal at any moment, SIGKILL, an embedder's process.exit() or uncaught exception — the command
// and all it started, QEMU, the namespace, the lease and the temporary directories are gone
// within 2 s.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { World, MOAT_BIN, TESTBED_JS, systemTestSkipReason, moatNamespaces, hasTool } from "../testbed/world.js";
import { poolTag } from "../../orchestrator/src/gateway/addressing.js";
import { vmCacheDir } from "../../orchestrator/src/vm/image.js";

const skip = systemTestSkipReason();
const vmSkip = skip ?? (hasTool("qemu-system-x86_64", "--version") ? undefined : "qemu-system-x86_64 is not installed (VM sandboxes run in QEMU)");
let world: World;
let tmp: string;

before(() => {
  if (skip) return;
  world = World.create();
  tmp = mkdtempSync("/tmp/moat-lifecycle-");
});
after(() => {
  world?.teardown();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

/** Processes (not zombies) whose command line contains `text`. */
function processes(text: string): string[] {
  let out = "";
  try {
    out = execFileSync("ps", ["-eo", "pid=,stat=,args="], { encoding: "utf8" });
  } catch {
    return [];
  }
  return out.split("\n").filter((l) => l.includes(text) && !/^\s*\d+\s+Z/.test(l) && !l.includes("ps -eo"));
}

/** What is left of a sandbox of `pool` whose command lines carry `marker` and whose temporary files went to `dir`. */
function leftovers(pool: string, marker: string, dir?: string): string[] {
  const tag = poolTag(pool);
  return [
    ...processes(marker).map((p) => `process ${p.trim()}`),
    ...moatNamespaces(tag).map((n) => `namespace ${n}`),
    ...(existsSync("/run/moat/leases") ? readdirSync("/run/moat/leases").filter((f) => f.startsWith(`${tag}-`)).map((f) => `lease ${f}`) : []),
    ...readdirSync("/etc/netns").filter((n) => n.startsWith(`moat-${tag}-`)).map((n) => `/etc/netns/${n}`),
    ...(dir && existsSync(dir) ? readdirSync(dir).map((f) => `temporary ${join(dir, f)}`) : []),
  ];
}

/** Wait up to `ms` for nothing to be left; returns what is left then. */
async function nothingLeftWithin(ms: number, pool: string, marker: string, dir?: string): Promise<string[]> {
  const deadline = Date.now() + ms;
  for (;;) {
    const left = leftovers(pool, marker, dir);
    if (left.length === 0 || Date.now() > deadline) return left;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** moat (or a testbed script) in the world's host namespace, its temporary files in `dir`. */
function start(argv: string[], dir: string, extraEnv: Record<string, string> = {}): { p: ChildProcess; stdout: () => string; stderr: () => string; exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }> } {
  const p = spawn("ip", ["netns", "exec", world.host, process.execPath, ...argv], { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, TMPDIR: dir, ...extraEnv } });
  let out = "";
  let err = "";
  p.stdout!.on("data", (d) => { out += d; });
  p.stderr!.on("data", (d) => { err += d; });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => p.once("exit", (code, signal) => r({ code, signal })));
  return { p, stdout: () => out, stderr: () => err, exited };
}

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

let n = 0;
/** A fresh pool, marker and temporary directory per case. */
function fresh(): { pool: string; marker: string; dir: string } {
  n++;
  return { pool: `10.210.${n}.0/28`, marker: `77${process.pid % 1000}${n}.`, dir: mkdtempSync(join(tmp, "t-")) };
}

test("SIGKILL of moat mid-run: the command, what it started, the namespace and the lease are gone within 2 s", { skip }, async () => {
  const { pool, marker, dir } = fresh();
  const m = start([MOAT_BIN, "run", "--ipv4-pool", pool, "--", "sh", "-c", `setsid sleep ${marker}1 </dev/null >/dev/null 2>&1 & echo up; exec sleep ${marker}0`], dir);
  await until(() => m.stdout().includes("up"), 20000, "the command");
  await until(() => processes(`${marker}1`).length > 0, 5000, "the daemon");
  m.p.kill("SIGKILL");
  await m.exited;
  assert.deepEqual(await nothingLeftWithin(2000, pool, marker, dir), []);
});

for (const at of [200, 500, 1000]) {
  test(`SIGINT ${at} ms into moat run: nothing is left within 2 s`, { skip }, async () => {
    const { pool, marker, dir } = fresh();
    const m = start([MOAT_BIN, "run", "--ipv4-pool", pool, "--", "sleep", `${marker}0`], dir);
    await new Promise((r) => setTimeout(r, at));
    m.p.kill("SIGINT");
    const { code, signal } = await m.exited;
    assert.ok(signal === "SIGINT" || code === 130, `moat ended by SIGINT (${code}, ${signal}): ${m.stderr()}`);
    assert.deepEqual(await nothingLeftWithin(2000, pool, marker, dir), []);
  });
}

for (const how of ["exit", "throw", "sigterm"] as const) {
  test(`an embedder ending without destroy() (${how}): its exit status, and nothing is left within 2 s`, { skip }, async () => {
    const { pool, marker, dir } = fresh();
    const m = start([`${TESTBED_JS}embedder-exit.js`, how, pool, marker], dir);
    await until(() => m.stdout().includes("up"), 20000, "the sandbox");
    const { code, signal } = await m.exited;
    if (how === "exit") assert.equal(code, 3, m.stderr());
    if (how === "throw") assert.equal(code, 1, m.stderr());
    if (how === "sigterm") assert.equal(signal, "SIGTERM", m.stderr());
    assert.doesNotMatch(m.stderr(), /Segmentation|core dumped/);
    assert.deepEqual(await nothingLeftWithin(2000, pool, marker, dir), []);
  });
}

test("an embedder run with V8 options (node --expose-gc --max-old-space-size=512) still gets its sandboxes", { skip }, async () => {
  // A worker refuses V8 and process-wide options in its execArgv: the engine's must go without them.
  const { pool, marker, dir } = fresh();
  const m = start(["--expose-gc", "--max-old-space-size=512", `${TESTBED_JS}embedder-exit.js`, "exit", pool, marker], dir);
  await until(() => m.stdout().includes("up"), 20000, "the sandbox");
  const { code } = await m.exited;
  assert.equal(code, 3, m.stderr());
  assert.doesNotMatch(m.stderr(), /ERR_WORKER_INVALID_EXEC_ARGV/);
  assert.deepEqual(await nothingLeftWithin(2000, pool, marker, dir), []);
});

test("a temporary directory is registered with the janitor before it exists: killed at any instant, moat leaves none", { skip }, async () => {
  // A process making registered directories back to back, SIGKILLed at an arbitrary moment of
  // it: one made but not yet registered (mkdtemp, then register) would be left.
  for (let round = 0; round < 5; round++) {
    const dir = mkdtempSync(join(tmp, "loop-"));
    const p = spawn(process.execPath, [`${TESTBED_JS}tempdir-loop.js`, dir], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    p.stdout!.on("data", (d) => { out += d; });
    const exited = new Promise((r) => p.once("exit", r));
    await until(() => out.includes("up"), 10000, "the loop");
    await new Promise((r) => setTimeout(r, 20 + Math.random() * 80));
    p.kill("SIGKILL");
    await exited;
    const made = readdirSync(dir).length;
    const deadline = Date.now() + 5000;
    while (readdirSync(dir).length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(readdirSync(dir), [], `round ${round}: ${made} directories when killed`);
  }
});

// ---- VM sandboxes (QEMU; under TCG, slow: few cases) --------------------------------------------

test("VM: warm-up (the guest image is built once)", { skip: vmSkip, timeout: 600000 }, async () => {
  // Built here, where the package archive is reachable (the test world has no route off this
  // machine: on a fresh one, moat could not fetch the guest's kernel from inside it).
  const { ensureVmImage } = await import("../../orchestrator/src/vm/image.js");
  await ensureVmImage({ onProgress: () => {} });
  const r = await world.moat(["run", "--vm", "--", "true"], 600000);
  assert.equal(r.code, 0, r.stderr);
});

for (const at of [200, 500, 1000, 2000]) {
  test(`VM: SIGINT ${at} ms into moat run --vm: no QEMU, command, lease or temporary directory within 2 s`, { skip: vmSkip, timeout: 60000 }, async () => {
    const { pool, dir } = fresh();
    const m = start([MOAT_BIN, "run", "--vm", "--ipv4-pool", pool, "--", "sleep", "600"], dir);
    await new Promise((r) => setTimeout(r, at));
    m.p.kill("SIGINT");
    const { code, signal } = await m.exited;
    assert.ok(signal === "SIGINT" || code === 130, `moat ended by SIGINT (${code}, ${signal}): ${m.stderr()}`);
    assert.deepEqual(await nothingLeftWithin(2000, pool, dir, dir), []); // QEMU's command line names its files in dir
  });
}

test("VM: SIGKILL of moat mid-run: no QEMU, lease or temporary directory within 2 s", { skip: vmSkip, timeout: 60000 }, async () => {
  const { pool, dir } = fresh();
  const m = start([MOAT_BIN, "run", "--vm", "--ipv4-pool", pool, "--", "sh", "-c", "echo up; sleep 600"], dir);
  await until(() => m.stdout().includes("up"), 45000, "the command in the VM");
  assert.ok(processes(dir).length > 0, "QEMU runs");
  m.p.kill("SIGKILL");
  await m.exited;
  assert.deepEqual(await nothingLeftWithin(2000, pool, dir, dir), []);
});

test("VM: SIGINT during the guest image build leaves no temporary directory in the cache", { skip: vmSkip, timeout: 120000 }, async () => {
  const { pool, dir } = fresh();
  const cache = mkdtempSync(join(tmp, "cache-"));
  // The kernel as cached already (no download): the build itself is interrupted.
  const kernels = join(vmCacheDir(), "kernels");
  if (existsSync(kernels)) cpSync(kernels, join(cache, "vm", "kernels"), { recursive: true });
  const m = start([MOAT_BIN, "run", "--vm", "--ipv4-pool", pool, "--", "true"], dir, { MOAT_CACHE_DIR: cache });
  await until(() => /build|download/i.test(m.stderr()), 60000, "the image build");
  await new Promise((r) => setTimeout(r, 300));
  m.p.kill("SIGINT");
  await m.exited;
  const deadline = Date.now() + 2000;
  const temporaries = () => ["images", "kernels"].flatMap((d) => existsSync(join(cache, "vm", d)) ? readdirSync(join(cache, "vm", d)).filter((f) => f.startsWith(".tmp-")) : []);
  while (temporaries().length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(temporaries(), []);
  assert.deepEqual(processes(cache), [], "no build step runs on");
  assert.deepEqual(await nothingLeftWithin(2000, pool, dir, dir), []);
});
