// vm.test.ts — the VM sandbox's guest: the image builds (cached), a QEMU guest boots to its exec
// agent, and commands run in it with their stdin, stdout, stderr and exit status intact. One guest
// serves every command check (the agent runs commands one after another); a second QEMU checks
// that a guest which never gets ready is given up on. No NIC: the network link is tested elsewhere.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { PassThrough, Readable, Writable } from "node:stream";
import { hasTool } from "../testbed/world.js";
import { ensureVmImage, type VmImage } from "../../orchestrator/src/vm/image.js";
import { startVm, type Vm, type VmExecOptions } from "../../orchestrator/src/vm/qemu.js";
import { MoatError } from "../../orchestrator/src/errors.js";

let skip: string | undefined = hasTool("qemu-system-x86_64", "--version") ? undefined : "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)";
let image: VmImage | undefined;
if (!skip) {
  try {
    image = await ensureVmImage();
  } catch (err) {
    if (!(err instanceof MoatError && err.code === "ERR_MISSING_TOOL")) throw err;
    skip = `the VM image cannot be built here: ${err.message}`;
  }
}
let vm: Vm;

before(async () => {
  if (skip) return;
  vm = await startVm({ image: image!, netdev: null });
  const { bootMs, guestUptimeMs } = await vm.ready;
  console.log(`# VM boot to READY: ${bootMs} ms (guest uptime ${guestUptimeMs} ms, accel ${vm.accel}, ${image!.kernelFormat})`);
});
after(async () => {
  await vm?.kill();
});

/** Collects a stream's bytes. */
function sink(): Writable & { bytes(): Buffer; text(): string } {
  const chunks: Buffer[] = [];
  const w = new Writable({ write(chunk: Buffer, _enc, cb) { chunks.push(chunk); cb(); } });
  return Object.assign(w, { bytes: () => Buffer.concat(chunks), text: () => Buffer.concat(chunks).toString() });
}

async function run(argv: string[], opts: Partial<VmExecOptions> = {}): Promise<{ status: number; stdout: Buffer; stderr: string }> {
  const stdout = sink();
  const stderr = sink();
  const status = await vm.exec(argv, { ...opts, stdout, stderr });
  return { status, stdout: stdout.bytes(), stderr: stderr.text() };
}

test("a command gets its stdin and returns stdout, stderr and exit status", { skip }, async () => {
  const r = await run(["sh", "-c", "echo out; echo err >&2; cat; exit 7"], { stdin: Readable.from([Buffer.from("hello")]) });
  assert.equal(r.stdout.toString(), "out\nhello");
  assert.equal(r.stderr, "err\n");
  assert.equal(r.status, 7);
});

test("the environment and working directory are the ones given", { skip }, async () => {
  const r = await run(["sh", "-c", 'echo "$GREETING $HOME"; pwd'], { env: { GREETING: "hi", HOME: "/tmp" }, cwd: "/tmp" });
  assert.equal(r.stdout.toString(), "hi /tmp\n/tmp\n");
  assert.equal(r.status, 0);
});

test("a command killed by a signal exits 128+N", { skip }, async () => {
  const r = await run(["sh", "-c", "kill -9 $$"]);
  assert.equal(r.status, 128 + 9);
});

test("signal() reaches the running command", { skip }, async () => {
  const stdin = new PassThrough();
  const stdout = sink();
  const done = vm.exec(["sh", "-c", "echo started; exec sleep 60"], { stdin, stdout, stderr: sink() });
  while (!stdout.text().includes("started")) await new Promise((r) => setTimeout(r, 20));
  vm.signal(15);
  assert.equal(await done, 128 + 15);
});

test("signal() reaches a command that writes without pause", { skip }, async () => {
  const stdout = sink();
  const done = vm.exec(["yes"], { stdout, stderr: sink() });
  while (stdout.bytes().length < 1 << 20) await new Promise((r) => setTimeout(r, 20));
  vm.signal(9);
  assert.equal(await done, 128 + 9);
});

test("a missing command exits 127 with a message", { skip }, async () => {
  const r = await run(["no-such-command", "arg"]);
  assert.equal(r.status, 127);
  assert.match(r.stderr, /no-such-command: No such file or directory/);
});

test("8 MiB of stdout comes back intact", { skip }, async () => {
  const r = await run(["sh", "-c", "head -c 8388608 /dev/urandom > /tmp/big; sha256sum /tmp/big >&2; cat /tmp/big; rm /tmp/big"]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.length, 8 << 20);
  assert.equal(createHash("sha256").update(r.stdout).digest("hex"), r.stderr.split(" ")[0]);
});

test("1 MiB of stdin reaches the command intact", { skip }, async () => {
  const data = Buffer.alloc(1 << 20, "moat");
  const r = await run(["sha256sum"], { stdin: Readable.from([data.subarray(0, 300_000), data.subarray(300_000)]) });
  assert.equal(r.stdout.toString().split(" ")[0], createHash("sha256").update(data).digest("hex"));
});

test("a process left holding stdout open does not hold up the exit status", { skip }, async () => {
  const started = Date.now();
  const r = await run(["sh", "-c", "sleep 30 & echo bye; exit 3"]);
  assert.equal(r.status, 3);
  assert.equal(r.stdout.toString(), "bye\n");
  assert.ok(Date.now() - started < 10_000);
});

test("the DHCP script applies address, MTU, default route and DNS", { skip }, async () => {
  // The NIC comes from the network link; here the script runs with a lease's variables and an
  // `ip` function that prints what it is asked to do.
  const lease = { interface: "eth0", ip: "10.9.8.2", mask: "30", router: "10.9.8.1", dns: "10.9.8.1 10.9.8.53", mtu: "65520", domain: "sandbox.test" };
  const r = await run(["sh", "-c", "sh -c 'ip() { echo \"ip $*\"; }; set -- bound; . /etc/moat/udhcpc.sh' && cat /etc/resolv.conf"], { env: lease });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.toString(), [
    "ip link set dev eth0 mtu 65520",
    "ip -4 addr flush dev eth0",
    "ip addr add 10.9.8.2/30 dev eth0",
    "ip route add default via 10.9.8.1 dev eth0 onlink",
    "search sandbox.test",
    "nameserver 10.9.8.1",
    "nameserver 10.9.8.53",
    "",
  ].join("\n"));
});

test("shutdown powers the guest off and removes QEMU's files", { skip }, async () => {
  const dir = vm.runDir;
  assert.ok(existsSync(dir));
  const exit = await vm.shutdown();
  assert.deepEqual(exit, { code: 0, signal: null });
  assert.ok(!existsSync(dir));
  await assert.rejects(vm.exec(["true"], { stdout: sink(), stderr: sink() }), /not running/);
});

test("a guest that is not ready in time is killed and the error quotes its console", { skip }, async () => {
  // (300 ms: no guest boots that fast, even on an idle machine, where TCG has booted in 1.5 s)
  const slow = await startVm({ image: image!, netdev: null, accel: "tcg", readyTimeoutMs: 300 });
  try {
    await assert.rejects(slow.ready, (err: Error) => {
      assert.match(err.message, /no READY within 300 ms/);
      assert.match(err.message, /console:|QEMU:|no console output/);
      return true;
    });
    const exit = await slow.exited;
    assert.equal(exit.signal, "SIGKILL");
  } finally {
    await slow.kill(); // a guest that was ready after all must not outlive the test
  }
});
