// tls.ts — TLS interception side by side with mitmproxy, in one run.
//
//   sudo node dist/bench/tls.js [--requests N] [--bulk-mib M] [--keptalive-requests N] [--cost-rounds R] [--rows direct,moat,secret,cost,mitmproxy,pool]
//
// A world HTTPS server (test/testbed/servers.js https: HTTP/1.1 and HTTP/2, a certificate for
// *.bench.test from a CA made here with openssl) at 203.0.113.10, every name under bench.test
// resolving to it (dnsmasq). The same curl commands are measured
//   - direct: from the host namespace, no interception (the reference for added latency);
//   - moat: inside a `moat run --tls-intercept` sandbox (the engine redirects port 443 to moat's
//     TLS proxy, which mints leaves and re-originates to the server, verified);
//   - mitmproxy: mitmdump as an explicit proxy (curl -x) in the host namespace, verifying the
//     server with the same CA.
// Figures: new TLS connections per second with distinct names (a leaf minted for each) and with
// one repeated name (cached), 16 at a time; requests per second on kept-alive connections (16
// parallel transfers over HTTP/1.1 keep-alive); bulk download Gbit/s (the median of three
// transfers, one at a time, and the whole machine's busy cores during them); p50 of
// request latency on a kept-alive connection and what interception adds to direct; and leaf
// minting per second (moat's CA alone, in this process); the main thread's event-loop delay
// and load under paced new connections; and two sandboxes of one daemon handshaking at once, with
// one thread and with two (the TLS workers' spread). Ratios: moat / mitmproxy. (mitmproxy
// runs with stream_large_bodies=1m, so it streams the bulk body instead of buffering it whole.)
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, writeFileSync, readFileSync, rmSync, mkdirSync, existsSync } from "node:fs";
import { World, WORLD_IP4, TESTBED_JS, MOAT_BIN, systemTestSkipReason } from "../test/testbed/world.js";
import { CertificateAuthority } from "../orchestrator/src/tls/ca.js";
import { benchArgs, option, sandboxNetns, sandboxNetnses, machineCpu, machineCores, median } from "./harness.js";
import { makeCa, makeServerCert } from "../test/testbed/test-pki.js";

benchArgs(["requests", "bulk-mib", "rows", "cost-rounds", "keptalive-requests"]);

const REQUESTS = Number(option("requests", "2000"));
const BULK_MIB = Number(option("bulk-mib", "512"));
const BULK_RUNS = 3;
const PARALLEL = 16;
const ROWS = new Set(option("rows", "direct,moat,secret,cost,mitmproxy,pool").split(","));
const COST_ROUNDS = Number(option("cost-rounds", "21"));
// Kept-alive figures (the column and the cost rounds): enough requests that the 16 connections'
// set-up (and curl's start) is a small part of the run, so they measure kept-alive requests
// (set-up is what the new-connection columns measure).
const KEPTALIVE_REQUESTS = Number(option("keptalive-requests", String(4 * REQUESTS)));

const skip = systemTestSkipReason() ?? (existsSync("/usr/bin/mitmdump") ? undefined : "mitmproxy is not installed (apt-get install mitmproxy)");
if (skip) {
  console.error(`tls bench: cannot run: ${skip}`);
  process.exit(2);
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const dir = mkdtempSync("/tmp/moat-tlsbench-");
makeCa(dir, "ca", "bench world CA");
makeServerCert(dir, "ca", ["DNS:bench.test", "DNS:*.bench.test"]);
makeCa(dir, "poolca", "bench interception CA");

// curl config files: many URLs in one process, so process start-up is not what is measured.
function urls(file: string, n: number, name: (i: number) => string, path: string): string {
  writeFileSync(`${dir}/${file}`, Array.from({ length: n }, (_, i) => `url = "https://${name(i)}/${path}"\noutput = "/dev/null"\n`).join(""));
  return `${dir}/${file}`;
}
const distinct = urls("distinct.cfg", REQUESTS, (i) => `n${i}.bench.test`, "hello");
const repeated = urls("repeated.cfg", REQUESTS, () => "www.bench.test", "hello");
const latency = urls("latency.cfg", 300, () => "www.bench.test", "hello");
const keptAlive = urls("keptalive.cfg", KEPTALIVE_REQUESTS, () => "www.bench.test", "hello");

interface Figures { distinct: number; repeated: number; keepalive: number; bulk: number; bulkCores: number; bulkPerCore: number; p50: number }

/** Run the curl measurements with `exec` (where curl runs) and `extra` (proxy/CA options). */
function measure(exec: (c: string[]) => string[], extra: string[]): Figures {
  const curl = (a: string[], timeoutMs = 300000) => {
    const argv = exec(["curl", "-sS", "--no-progress-meter", ...extra, ...a]);
    return execFileSync(argv[0]!, argv.slice(1), { encoding: "utf8", timeout: timeoutMs, maxBuffer: 64 << 20 });
  };
  const rate = (a: string[], n = REQUESTS) => {
    const t0 = performance.now();
    curl(a);
    return n / ((performance.now() - t0) / 1000);
  };
  const distinctRate = rate(["-Z", "--parallel-max", String(PARALLEL), "--http1.1", "-H", "Connection: close", "-K", distinct]);
  const repeatedRate = rate(["-Z", "--parallel-max", String(PARALLEL), "--http1.1", "-H", "Connection: close", "-K", repeated]);
  const keepalive = rate(["-Z", "--parallel-max", String(PARALLEL), "--http1.1", "-K", keptAlive], KEPTALIVE_REQUESTS);
  // Bulk: the median of BULK_RUNS downloads, and the whole machine's busy cores across them.
  const machine = machineCpu();
  const t0 = performance.now();
  const downloads = Array.from({ length: BULK_RUNS }, () => Number(curl(["--http1.1", "-o", "/dev/null", "-w", "%{speed_download}", `https://www.bench.test/bytes/${BULK_MIB << 20}`]).trim()) * 8 / 1e9);
  const bulkGbit = (BULK_RUNS * BULK_MIB * 8 * 1.048576e6) / 1e9 / ((performance.now() - t0) / 1000);
  const bulkCores = machine.busyCores();
  // Latency: one connection, requests one after another; time to first byte of each reused one.
  const times = curl(["--http1.1", "-w", "%{time_starttransfer}\\n", "-K", latency]).trim().split("\n").slice(1).map(Number).sort((a, b) => a - b);
  return { distinct: distinctRate, repeated: repeatedRate, keepalive, bulk: median(downloads), bulkCores, bulkPerCore: bulkGbit / bulkCores, p50: times[Math.floor(times.length / 2)]! * 1e6 };
}

const METRICS_PORT = 19464;
const PACED_RATE = 200;

/**
 * moat's main-thread event-loop delay (its --metrics gauges, reset at each scrape) while the guest
 * opens PACED_RATE new intercepted connections a second for 10 s (one name: each a cached leaf).
 */
function loopDelayUnderLoad(inHost: (c: string[]) => string[], inSandbox: (c: string[]) => string[], pid: number): { p99: number; max: number; rate: number; busy: number } {
  // The main thread's CPU time (its task's utime + stime, in clock ticks of 10 ms).
  const cpu = () => readFileSync(`/proc/${pid}/task/${pid}/stat`, "utf8").split(") ")[1]!.split(" ").slice(11, 13).reduce((a, b) => a + Number(b), 0) * 10;
  const scrape = () => {
    const argv = inHost(["curl", "-sS", `http://127.0.0.1:${METRICS_PORT}/metrics`]);
    return execFileSync(argv[0]!, argv.slice(1), { encoding: "utf8" });
  };
  const gauge = (text: string, name: string) => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1] ?? NaN);
  // A client that starts a connection every 1/PACED_RATE s whatever the others do (curl's --rate
  // waits for transfers in parallel mode), each a new TLS connection and one request.
  writeFileSync(`${dir}/paced.cjs`, `const tls = require("tls"); const fs = require("fs");
const ca = fs.readFileSync(process.argv[2]); const rate = Number(process.argv[3]); const n = rate * 10;
let started = 0, done = 0, failed = 0; const t0 = Date.now();
const one = () => { const s = tls.connect({ host: "www.bench.test", port: 443, servername: "www.bench.test", ca }, () => s.end("GET /hello HTTP/1.1\\r\\nHost: www.bench.test\\r\\nConnection: close\\r\\n\\r\\n"));
  s.on("data", () => {}); s.on("error", () => { failed++; }); s.on("close", () => { if (++done === n) { console.log(JSON.stringify({ rate: n / ((Date.now() - t0) / 1000), failed })); } }); };
const tick = () => { const due = Math.min(n, Math.floor((Date.now() - t0) * rate / 1000) + 1); while (started < due) { started++; one(); } if (started < n) setTimeout(tick, 2); };
tick();`);
  scrape(); // (resets the gauges)
  const cpu0 = cpu();
  const t0 = performance.now();
  const argv = inSandbox([process.execPath, `${dir}/paced.cjs`, `${dir}/moat-ca.pem`, String(PACED_RATE)]);
  const r = JSON.parse(execFileSync(argv[0]!, argv.slice(1), { encoding: "utf8", timeout: 120000 })) as { rate: number; failed: number };
  if (r.failed) process.stderr.write(`tls bench: ${r.failed} paced connections failed\n`);
  const rate = r.rate;
  const busy = (cpu() - cpu0) / (performance.now() - t0);
  const text = scrape();
  return { p99: gauge(text, "moat_main_event_loop_delay_p99_seconds") * 1000, max: gauge(text, "moat_main_event_loop_delay_max_seconds") * 1000, rate, busy };
}

let loop: ReturnType<typeof loopDelayUnderLoad> | undefined;

/**
 * Handshakes a second of two sandboxes of one `moat daemon` opening new connections to distinct
 * names at once (each PARALLEL at a time), with 1 and then 2 engine threads (and as many TLS
 * threads): what a second thread adds to a fleet's interception.
 */
async function poolScaling(): Promise<{ threads: number; rate: number; cores: number }[]> {
  const out: { threads: number; rate: number; cores: number }[] = [];
  for (const threads of [1, 2]) {
    const sock = `${dir}/control-${threads}.sock`;
    const daemon = spawn("nsenter", [`--net=/run/netns/${world.host}`, process.execPath, MOAT_BIN, "daemon", "--control", sock, "--engine-threads", String(threads)], { stdio: "ignore" });
    try {
      for (let i = 0; i < 100 && !existsSync(sock); i++) await sleep(100);
      for (const name of ["a", "b"]) {
        // (an interception CA of the bench's own: the daemon's ephemeral one is not written out)
        execFileSync(process.execPath, [MOAT_BIN, "create", "--control", sock, "--name", `tls-pool-${threads}${name}`, "--dns-nameserver", WORLD_IP4, "--tls-intercept",
          "--tls-upstream-ca", `${dir}/ca.pem`, "--tls-ca-cert", `${dir}/poolca.pem`, "--tls-ca-key", `${dir}/poolca.key`], { stdio: ["ignore", "ignore", "inherit"] });
      }
      const nss = await sandboxNetnses(daemon.pid!, 2);
      const cfgs = nss.map((_, k) => urls(`pool-${threads}-${k}.cfg`, REQUESTS, (i) => `p${threads}${k}x${i}.bench.test`, "hello"));
      const t0 = performance.now();
      const machine = machineCpu();
      await Promise.all(nss.map((ns, k) => new Promise<void>((resolve, reject) => {
        const c = spawn("ip", ["netns", "exec", ns, "curl", "-sS", "--no-progress-meter", "--cacert", `${dir}/poolca.pem`, "-Z", "--parallel-max", String(PARALLEL),
          "--http1.1", "-H", "Connection: close", "-K", cfgs[k]!], { stdio: "ignore" });
        c.once("exit", (code) => (code === 0 ? resolve() : reject(new Error(`curl in ${ns} exited ${code}`))));
      })));
      out.push({ threads, rate: (2 * REQUESTS) / ((performance.now() - t0) / 1000), cores: machine.busyCores() });
    } finally {
      daemon.kill("SIGTERM");
      await new Promise((r) => daemon.once("exit", r));
    }
  }
  return out;
}

let pool: { threads: number; rate: number; cores: number }[] | undefined;

/** `moat run --tls-intercept` with `extra` in the world's host namespace (its CA written to `caOut`), idle until killed. */
function startMoat(extra: string[], caOut: string): ChildProcess {
  return spawn("nsenter", [`--net=/run/netns/${world.host}`, process.execPath, MOAT_BIN, "run", "--dns-nameserver", WORLD_IP4, "--tls-intercept", ...extra,
    "--tls-upstream-ca", `${dir}/ca.pem`, "--tls-ca-out", caOut, "--", "sleep", "3600"], { stdio: "ignore", env: { ...process.env, BENCH_KEY: "sk-bench-real-value" } });
}

/**
 * What substituting a secret costs kept-alive requests, from two moats side by side (one with the
 * secret, one without), measured in alternation COST_ROUNDS times, each round in the other order
 * than the last (ABBA): a drift of the machine between two rows measured minutes apart shows as
 * noise in the rows' ratio, not here, and neither moat is always the one measured first.
 */
async function secretCost(placeholder: string): Promise<number[]> {
  const start = (withSecret: boolean) => startMoat(withSecret ? ["--config", `${dir}/secrets.json`] : [], `${dir}/cost-ca-${withSecret ? "secret" : "plain"}.pem`);
  const plain = start(false);
  const secret = start(true);
  try {
    const nsPlain = await sandboxNetns(plain.pid!);
    const nsSecret = await sandboxNetns(secret.pid!);
    await sleep(500);
    const keepalive = (withSecret: boolean) => {
      const [ns, which, token] = withSecret ? [nsSecret, "secret", placeholder] : [nsPlain, "plain", "not-a-placeholder-000000000"];
      const argv = ["ip", "netns", "exec", ns, "curl", "-sS", "--no-progress-meter", "--cacert", `${dir}/cost-ca-${which}.pem`, "-H", `Authorization: Bearer ${token}`,
        "-Z", "--parallel-max", String(PARALLEL), "--http1.1", "-K", keptAlive];
      const t0 = performance.now();
      execFileSync(argv[0]!, argv.slice(1), { timeout: 300000 });
      return KEPTALIVE_REQUESTS / ((performance.now() - t0) / 1000);
    };
    keepalive(false); // (both warm: leaves minted, code compiled)
    keepalive(true);
    const costs: number[] = [];
    for (let i = 0; i < COST_ROUNDS; i++) {
      // (plain then secret in even rounds, secret then plain in odd ones)
      const first = i % 2 === 1;
      const rates = new Map([first, !first].map((withSecret) => [withSecret, keepalive(withSecret)]));
      costs.push(1 - rates.get(true)! / rates.get(false)!);
    }
    return costs;
  } finally {
    for (const p of [plain, secret]) p.kill("SIGTERM");
    await Promise.all([plain, secret].map((p) => new Promise((r) => (p.exitCode !== null ? r(null) : p.once("exit", r)))));
  }
}

let costs: number[] | undefined;
const world = World.create();
const rows: [string, Figures][] = [];
let moat: ChildProcess | undefined;
let mitm: ChildProcess | undefined;
try {
  world.startDnsServer();
  await world.startProcess([process.execPath, `${TESTBED_JS}servers.js`, "https", "443", `${dir}/srv.pem`, `${dir}/srv.key`]);
  // The host namespace resolves through the world's DNS too (for direct and mitmproxy).
  mkdirSync(`/etc/netns/${world.host}`, { recursive: true });
  writeFileSync(`/etc/netns/${world.host}/resolv.conf`, `nameserver ${WORLD_IP4}\n`);
  const inHost = (c: string[]) => ["ip", "netns", "exec", world.host, ...c];

  if (ROWS.has("direct")) {
    process.stderr.write("tls bench: direct...\n");
    rows.push(["direct (no interception)", measure(inHost, ["--cacert", `${dir}/ca.pem`])]);
  }

  // moat, then moat with a secret substituted into every request (the cost of substitution).
  const PLACEHOLDER = "moat-ph-benchbenchbenchbenchbenc";
  writeFileSync(`${dir}/secrets.json`, JSON.stringify({ network: { secrets: [{ env: "BENCH_KEY", allowedHosts: ["*.bench.test"], placeholder: PLACEHOLDER }] } }));
  for (const withSecret of [false, true]) {
    if (!ROWS.has(withSecret ? "secret" : "moat")) continue;
    process.stderr.write(`tls bench: moat${withSecret ? " with a secret" : ""}...\n`);
    moat = startMoat(withSecret ? ["--config", `${dir}/secrets.json`] : ["--metrics", `127.0.0.1:${METRICS_PORT}`], `${dir}/moat-ca.pem`);
    const ns = await sandboxNetns(moat.pid!);
    await sleep(500);
    // The CA file alone, as for the others (curl parses its CA file on every handshake: the system
    // bundle the sandbox sees by default costs the client ~20 ms a handshake, whoever intercepts).
    const inSandbox = (c: string[]) => ["ip", "netns", "exec", ns!, ...c];
    // (Measured in full like the row above, so both processes are equally warm at the kept-alive run.)
    if (withSecret) rows.push(["moat, a secret substituted", measure(inSandbox, ["--cacert", `${dir}/moat-ca.pem`, "-H", `Authorization: Bearer ${PLACEHOLDER}`])]);
    else {
      rows.push(["moat", measure(inSandbox, ["--cacert", `${dir}/moat-ca.pem`, "-H", "Authorization: Bearer not-a-placeholder-000000000"])]);
      loop = loopDelayUnderLoad(inHost, inSandbox, moat.pid!);
    }
    moat.kill("SIGTERM");
    await new Promise((r) => moat!.once("exit", r));
  }

  if (ROWS.has("cost")) {
    process.stderr.write("tls bench: a secret's cost, two moats in alternation...\n");
    costs = await secretCost(PLACEHOLDER);
  }

  if (ROWS.has("pool")) {
    process.stderr.write("tls bench: two sandboxes of one daemon, 1 and 2 threads...\n");
    pool = await poolScaling();
  }

  if (ROWS.has("mitmproxy")) {
    process.stderr.write("tls bench: mitmproxy...\n");
    mkdirSync(`${dir}/mitm`, { recursive: true });
    mitm = spawn("ip", ["netns", "exec", world.host, "mitmdump", "-q", "--listen-host", "127.0.0.1", "--listen-port", "18080", "--set", `confdir=${dir}/mitm`,
      "--set", `ssl_verify_upstream_trusted_ca=${dir}/ca.pem`, "--set", "stream_large_bodies=1m"], { stdio: "ignore" }); // streamed, not buffered whole
    for (let i = 0; i < 100 && !existsSync(`${dir}/mitm/mitmproxy-ca-cert.pem`); i++) await sleep(100);
    await sleep(1500);
    rows.push(["mitmproxy", measure(inHost, ["-x", "http://127.0.0.1:18080", "--cacert", `${dir}/mitm/mitmproxy-ca-cert.pem`])]);
  }
} finally {
  moat?.kill("SIGTERM");
  mitm?.kill("SIGTERM");
  world.teardown();
  rmSync(`/etc/netns/${world.host}`, { recursive: true, force: true });
}

// Leaf minting, in this process: distinct names, each a fresh leaf.
const ca = new CertificateAuthority({ cacheSize: 100000 });
const t0 = performance.now();
for (let i = 0; i < 2000; i++) ca.contextFor(`m${i}.bench.test`);
const mintRate = 2000 / ((performance.now() - t0) / 1000);
rmSync(dir, { recursive: true, force: true });


const direct = rows.find((r) => r[0].startsWith("direct"))?.[1];
const fmt = (v: number | undefined, d = 0) => (v === undefined || !Number.isFinite(v) ? "-" : v.toFixed(d));
const table = [["", "new conn/s (distinct names)", "new conn/s (one name)", "kept-alive req/s", "bulk Gbit/s", "p50 us", "added p50 us"]];
for (const [name, f] of rows) table.push([name, fmt(f.distinct), fmt(f.repeated), fmt(f.keepalive), fmt(f.bulk, 2), fmt(f.p50), direct && name !== rows[0]![0] ? fmt(f.p50 - direct.p50) : "-"]);
const m = rows.find((r) => r[0] === "moat")?.[1];
const p = rows.find((r) => r[0] === "mitmproxy")?.[1];
if (m && p && direct) {
  table.push(["moat / mitmproxy", fmt(m.distinct / p.distinct, 2), fmt(m.repeated / p.repeated, 2), fmt(m.keepalive / p.keepalive, 2), fmt(m.bulk / p.bulk, 2), fmt(p.p50 / m.p50, 2), fmt((p.p50 - direct.p50) / (m.p50 - direct.p50), 2)]);
}
const w = table[0]!.map((_, i) => Math.max(...table.map((r) => r[i]!.length)));
for (const r of table) console.log(r.map((c, i) => c.padEnd(w[i]!)).join("  "));
console.log(`(${REQUESTS} requests per new-connection figure and ${KEPTALIVE_REQUESTS} kept-alive, ${PARALLEL} at a time, HTTP/1.1; bulk: the median of ${BULK_RUNS} downloads of ${BULK_MIB} MiB; ratios > 1 favour moat, latency as mitmproxy/moat)`);
// Bulk against the whole machine. Interception decrypts and encrypts every byte once more than the
// direct path (whose server encrypts and whose client decrypts), so at best it does twice direct's
// work per byte: half direct's Gbit per busy core-second, times the cores, caps any interceptor
// on this machine.
console.log(`bulk, the whole machine (${machineCores()} cores) during the downloads: ${rows.map(([name, f]) => `${name.split(" (")[0]} ${fmt(f.bulkCores, 2)} busy cores, ${fmt(f.bulkPerCore, 2)} Gbit per busy core-second`).join("; ")}`);
if (direct) console.log(`bulk ceiling of an interceptor on ${machineCores()} cores at half direct's work per byte: ${fmt((machineCores() * direct.bulkPerCore) / 2, 2)} Gbit/s${p ? ` (2x mitmproxy: ${fmt(2 * p.bulk, 2)})` : ""}`);
console.log(`leaf minting (moat's CA, distinct names): ${mintRate.toFixed(0)} leaves/s`);
if (loop) console.log(`moat's main-thread event-loop delay at ${fmt(loop.rate)} new intercepted conn/s for 10 s: p99 ${fmt(loop.p99, 1)} ms, max ${fmt(loop.max, 1)} ms; the main thread busy ${fmt(loop.busy * 100)}% of the time`);
if (pool?.length === 2) console.log(`two sandboxes of one daemon, new conn/s to distinct names together: ${fmt(pool[0]!.rate)} with 1 thread, ${fmt(pool[1]!.rate)} with 2 (${fmt(pool[1]!.rate / pool[0]!.rate, 2)}x); the whole machine's busy cores meanwhile: ${fmt(pool[0]!.cores, 2)} and ${fmt(pool[1]!.cores, 2)} of ${machineCores()}`);
if (costs) {
  const sorted = [...costs].sort((a, b) => a - b);
  console.log(`secret substitution, kept-alive req/s, ${COST_ROUNDS} rounds of ${KEPTALIVE_REQUESTS} requests in alternation (ABBA): cost ${costs.map((c) => `${fmt(c * 100, 1)}%`).join(", ")}; median ${fmt(sorted[Math.floor(sorted.length / 2)]! * 100, 1)}%`);
}
const sec = rows.find((r) => r[0].startsWith("moat, a secret"))?.[1];
if (m && sec) console.log(`secret substitution, the two rows (measured minutes apart${costs ? "; the alternating rounds above are the measure" : ""}): kept-alive req/s ${fmt(sec.keepalive)} vs ${fmt(m.keepalive)} (${fmt((1 - sec.keepalive / m.keepalive) * 100, 1)}% cost), p50 ${fmt(sec.p50)} vs ${fmt(m.p50)} us`);
