// link-middleware.test.ts — the decorators at the link seam (native-vmm/src/link-middleware.h):
// `--pcap` read back by tcpdump, its size bound, and TCP through the fault injector (loss,
// reordering, duplication) checked end to end.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, readFileSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { World, WORLD_IP4, TESTBED_JS, systemTestSkipReason, hasTool } from "../testbed/world.js";

const skip = systemTestSkipReason();
const noTcpdump = skip ?? (hasTool("tcpdump", "--version") ? undefined : "tcpdump is not installed (apt-get install tcpdump)");
let world: World;
let dir: string;
const client = (...args: string[]) => [process.execPath, `${TESTBED_JS}tcp-clients.js`, ...args];

before(async () => {
  if (skip) return;
  world = World.create();
  await world.startServer("tcp-echo", 7);
  await world.startServer("tcp-source", 19);
  dir = mkdtempSync(join(tmpdir(), "moat-pcap-"));
});
after(() => world?.teardown());

function tcpdump(file: string): string {
  return execFileSync("tcpdump", ["-r", file, "-nn", "--nano"], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

test("--pcap: tcpdump reads the SYN, the data and the FIN of the command's connection, with nanosecond times", { skip: noTcpdump }, async () => {
  const file = join(dir, "echo.pcap");
  const r = await world.moat(["run", "--pcap", file, "--", ...client("halfclose", WORLD_IP4, "7")]);
  assert.equal(r.code, 0, r.stderr);
  const head = readFileSync(file).subarray(0, 24);
  assert.equal(head.readUInt32LE(0), 0xa1b23c4d, "the nanosecond pcap magic");
  assert.equal(head.readUInt32LE(20), 1, "LINKTYPE_ETHERNET");
  assert.equal(statSync(file).mode & 0o777, 0o600, "the capture is the owner's only");
  const out = tcpdump(file);
  const guest = /IP (172\.30\.\d+\.\d+)\.(\d+) > 203\.0\.113\.10\.7: Flags \[S\]/.exec(out);
  assert.ok(guest, `no SYN from the guest:\n${out}`);
  const [, ip, port] = guest;
  const g = `${ip}.${port}`;
  const w = "203.0.113.10.7";
  const has = (re: RegExp, what: string) => assert.match(out, re, `${what} missing:\n${out}`);
  has(new RegExp(`${w} > ${g}: Flags \\[S\\.\\]`), "the SYN-ACK");
  has(new RegExp(`${g} > ${w}: Flags \\[P\\.\\], seq 1:\\d+, ack 1, .*length [1-9]`), "the guest's data");
  has(new RegExp(`${w} > ${g}: Flags \\[P\\.\\], seq 1:\\d+, .*length [1-9]`), "the echo");
  has(new RegExp(`${g} > ${w}: Flags \\[F\\.\\]`), "the guest's FIN");
  has(new RegExp(`${w} > ${g}: Flags \\[F\\.\\]`), "the gateway's FIN");
  // Nanosecond timestamps: nine digits, not all of them a microsecond value padded with zeros.
  const stamps = [...out.matchAll(/^\d\d:\d\d:\d\d\.(\d{9}) /gm)].map((m) => m[1]!);
  assert.ok(stamps.length >= 8, out);
  assert.ok(stamps.some((s) => !s.endsWith("000")), `timestamps look like microseconds: ${stamps.join(" ")}`);
});

test("--pcap-max-bytes: capture stops before the bound, says so once, and the file stays readable", { skip: noTcpdump }, async () => {
  const file = join(dir, "bounded.pcap");
  const r = await world.moat(["run", "--pcap", file, "--pcap-max-bytes", "20000", "--", ...client("download", WORLD_IP4, "19", String(4 << 20))]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^ok /m, "the capture's bound does not touch the traffic");
  assert.equal(r.stderr.match(/reached its size bound/g)?.length, 1, r.stderr);
  assert.match(r.stderr, new RegExp(`pcap ${file} reached its size bound \\(20000 bytes`));
  const size = statSync(file).size;
  assert.ok(size <= 20000 && size > 24, `file size ${size}`);
  assert.match(tcpdump(file), /Flags \[S\]/);
});

test("--pcap refuses what it cannot use, before the command runs", { skip }, async () => {
  const missing = await world.moat(["run", "--pcap", join(dir, "no-such-dir", "x.pcap"), "--", "true"]);
  assert.equal(missing.code, 125);
  assert.match(missing.stderr, /pcap: cannot create .*no-such-dir\/x\.pcap: its directory does not exist/);
  assert.match(missing.stderr, /hint: check that the directory exists/);
  const isDir = await world.moat(["run", "--pcap", dir, "--", "true"]);
  assert.equal(isDir.code, 125);
  assert.match(isDir.stderr, /is a directory/);
  const alone = await world.moat(["run", "--pcap-max-bytes", "1000", "--", "true"]);
  assert.equal(alone.code, 125);
  assert.match(alone.stderr, /--pcap-max-bytes needs --pcap/);
  const tiny = await world.moat(["run", "--pcap", join(dir, "t.pcap"), "--pcap-max-bytes", "10", "--", "true"]);
  assert.equal(tiny.code, 125);
  assert.match(tiny.stderr, /pcap size bound 10 is not usable/);
});

// ---- faults ---------------------------------------------------------------------------------------

const FAULTS = "drop=0.01,reorder=0.01,dup=0.005,seed=7";

/** 64 MiB each way through one echo connection, checked by SHA-256; the client's own seconds. */
async function echo64(faults: string | undefined): Promise<{ seconds: number; counters: Record<string, number> }> {
  if (faults) process.env.MOAT_FAULTS = faults;
  else delete process.env.MOAT_FAULTS;
  try {
    const r = await world.sandbox(client("bulk", WORLD_IP4, "7", "1", String(64 << 20), "60"), 120000);
    assert.equal(r.report.code, 0, `${faults ?? "lossless"}: ${r.stderr}`);
    const m = /^ok 1 ([0-9.]+) s$/m.exec(r.stdout);
    assert.ok(m, r.stdout);
    assert.equal(r.report.counters.TCP_BYTES_TO_HOST, 64 << 20);
    return { seconds: Number(m[1]), counters: r.report.counters };
  } finally {
    delete process.env.MOAT_FAULTS;
  }
}

test(`64 MiB each way, hash-checked, through 1% loss, 1% reordering and 0.5% duplication both ways (${FAULTS}), within 3x the lossless time`, { skip }, async () => {
  const clean = await echo64(undefined);
  const faulty = await echo64(FAULTS);
  // The faults happened, and the engine held segments that came ahead of a gap instead of
  // dropping them (reassembly + SACK): a loss costs one retransmission, not a window.
  assert.ok((faulty.counters.TCP_OOO_QUEUED ?? 0) > 0, JSON.stringify(faulty.counters));
  assert.ok((faulty.counters.TCP_RETRANSMITS ?? 0) > 0, "frames to the guest were lost too");
  assert.ok(faulty.seconds <= 3 * clean.seconds, `lossless ${clean.seconds} s, with faults ${faulty.seconds} s`);
  process.stderr.write(`# 64 MiB echo: lossless ${clean.seconds} s, with ${FAULTS} ${faulty.seconds} s\n`);
});

// A server in the world that streams to whoever connects until the connection fails, and says how
// it ended: "conn", then "end SENT ERRCODE MS" (MS after the connection).
const STREAMER = `
const net = require("node:net");
net.createServer((c) => {
  const t0 = Date.now();
  let sent = 0, done = false;
  const buf = Buffer.alloc(65536, 7);
  const finish = (code) => { if (done) return; done = true; console.log("end " + sent + " " + code + " " + (Date.now() - t0)); };
  c.on("error", (e) => finish(e.code));
  c.on("close", () => finish("closed"));
  c.on("end", () => finish("eof"));
  const pump = () => { while (!done && c.write(buf)) sent += buf.length; if (!done) { sent += buf.length; c.once("drain", pump); } };
  console.log("conn");
  pump();
}).listen(7778, "0.0.0.0", () => console.log("ready"));
`;

test("a guest that vanishes mid-stream (the link goes dark) is given up on: the world's peer gets a reset, not a hang", { skip, timeout: 150000 }, async () => {
  const server = spawn("ip", ["netns", "exec", world.world, process.execPath, "-e", STREAMER], { stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  server.stdout!.on("data", (d) => (out += d));
  const waitFor = async (re: RegExp, ms: number) => {
    const until = Date.now() + ms;
    while (!re.test(out) && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
    return re.exec(out);
  };
  process.env.MOAT_FAULTS = "blackout-ms=4000";
  const moat = world.spawnMoat(["run", "--", "socat", "-u", `TCP:${WORLD_IP4}:7778`, "/dev/null"]);
  delete process.env.MOAT_FAULTS;
  let stderr = "";
  moat.stderr!.on("data", (d) => (stderr += d));
  try {
    assert.ok(await waitFor(/^ready$/m, 10000), "the streamer listens");
    assert.ok(await waitFor(/^conn$/m, 15000), `the guest connects: ${stderr}`);
    // The engine retransmits into the dark with its backed-off RTO (200 ms doubling to 8 s), ten
    // times, then resets both sides: about 45 s.
    const end = await waitFor(/^end (\d+) (\S+) (\d+)$/m, 90000);
    assert.ok(end, `the world's side never learned the guest was gone: ${out} ${stderr}`);
    const [, sent, code, ms] = end;
    assert.equal(code, "ECONNRESET", `ended by ${code}, not a reset`);
    assert.ok(Number(sent) > 1 << 20, `data flowed before the blackout (${sent} bytes)`);
    assert.ok(Number(ms) > 4000 && Number(ms) < 80000, `reset after ${ms} ms`);
  } finally {
    server.kill();
    moat.kill("SIGTERM");
    await once(moat, "exit");
  }
});

test("the TAP device queues 8192 frames toward moat, so a burst of many connections is held, not dropped", { skip }, async () => {
  const r = await world.moat(["run", "--", "cat", "/sys/class/net/eth0/tx_queue_len"]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), "8192");
});
