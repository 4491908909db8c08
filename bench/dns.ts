// dns.ts — the DNS interceptor's cost, side by side in one run, with dnsperf (Debian's dnsperf) as
// the load generator against a real dnsmasq in the test world (test/testbed/world.ts):
//   direct         dnsperf in the host namespace -> dnsmasq
//   dnsmasq hop    dnsperf -> a dnsmasq forwarder on the host (no cache) -> dnsmasq: what a
//                  plain forwarding hop costs, the bar moat's interceptor is held to
//   moat           dnsperf inside a sandbox -> the gateway (engine, DNS ring, interceptor with
//                  block list and rebinding checks, upstream) -> dnsmasq
// Prints queries/s and average latency under load for each, the median latency one query at a
// time (after the loaded run, so moat's JIT is warm), moat's ratios to the forwarder hop, and the
// latency each adds over direct.
//   sudo node dist/bench/dns.js [--seconds S] [--outstanding Q]
import { execFileSync } from "node:child_process";
import { writeFileSync, rmSync, readFileSync } from "node:fs";
import { World, WORLD_IP4, MOAT_BIN, systemTestSkipReason } from "../test/testbed/world.js";
import { benchArgs, option } from "./harness.js";

benchArgs(["seconds", "outstanding"]);

const SECONDS = option("seconds", "5");
const OUTSTANDING = option("outstanding", "16");
const skip = systemTestSkipReason() ?? (() => { try { execFileSync("dnsperf", ["-h"], { stdio: "ignore" }); return undefined; } catch { return "dnsperf is not installed (apt-get install dnsperf)"; } })();
if (skip) { console.error(`dns bench: ${skip}`); process.exit(2); }

const QUERIES = `/var/tmp/moat-dnsperf-${process.pid}.txt`; // read inside the sandbox, whose /tmp is its own
const FWD_PID = `/tmp/moat-dnsmasq-fwd-${process.pid}.pid`;
// Distinct names, each answered NOERROR with an A record (the world's dnsmasq answers every
// name under bench.test): a forwarder folds identical questions in flight into one, which would
// flatter the hop.
writeFileSync(QUERIES, Array.from({ length: 50000 }, (_, i) => `q${i}.bench.test A\n`).join(""));

interface Row { name: string; qps: number; avgUs: number; lost: number; codes: string; p50Us: number }

/**
 * dnsperf's reports, parsed: the loaded run (OUTSTANDING in flight: queries/s, average latency),
 * then, in the same shell (so a moat that served the first is warm for the second), a light one:
 * one query at a time for 2 s, every answer's latency printed: the median.
 */
function dnsperf(argv: (script: string) => string[], server: string, port: number, name: string): Row {
  const base = `dnsperf -s ${server} -p ${port} -d ${QUERIES} -c 1`;
  const a = argv(`${base} -l ${SECONDS} -q ${OUTSTANDING}; echo @@light; ${base} -l 2 -q 1 -v`);
  const both = execFileSync(a[0]!, a.slice(1), { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 120000, maxBuffer: 64 << 20 });
  const [out, lightOut] = both.split("@@light") as [string, string];
  const num = (re: RegExp) => Number(re.exec(out)?.[1] ?? NaN);
  const codes = /Response codes:\s+(.*)/.exec(out)?.[1]?.trim() ?? "?";
  const light = [...(lightOut ?? "").matchAll(/^> \w+ \S+ \w+ ([\d.]+)$/gm)].map((m) => Number(m[1]) * 1e6).sort((x, y) => x - y);
  const p50Us = light.length ? light[Math.floor(light.length / 2)]! : NaN;
  return { name, qps: num(/Queries per second:\s+([\d.]+)/), avgUs: num(/Average Latency \(s\):\s+([\d.]+)/) * 1e6, lost: num(/Queries lost:\s+(\d+)/), codes, p50Us };
}

const world = World.create();
const rows: Row[] = [];
try {
  world.startDnsServer();
  const inHost = (script: string) => ["ip", "netns", "exec", world.host, "sh", "-c", script];
  process.stderr.write("dns bench: direct...\n");
  rows.push(dnsperf(inHost, WORLD_IP4, 53, "direct (host ns -> dnsmasq)"));
  execFileSync("ip", ["netns", "exec", world.host, "dnsmasq", "--port=5353", "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv",
    "--no-hosts", "--conf-file=/dev/null", "--cache-size=0", `--server=${WORLD_IP4}`, `--pid-file=${FWD_PID}`]);
  process.stderr.write("dns bench: through a dnsmasq forwarder...\n");
  rows.push(dnsperf(inHost, "127.0.0.1", 5353, "dnsmasq forwarding hop"));
  process.stderr.write("dns bench: through moat...\n");
  const gw = `$(ip route | sed -n "s/default via \\([0-9.]*\\).*/\\1/p")`;
  rows.push(dnsperf((script) => ["ip", "netns", "exec", world.host, process.execPath, MOAT_BIN, "run", "--dns-nameserver", WORLD_IP4, "--", "sh", "-c", `gw=${gw}; ${script}`], "$gw", 53, "moat's interceptor"));
} finally {
  try { process.kill(Number(readFileSync(FWD_PID, "utf8")), "SIGTERM"); } catch { /* not started */ }
  world.teardown();
  rmSync(QUERIES, { force: true });
}

const [direct, hop, moat] = rows as [Row, Row, Row];
const table = [["path", "queries/s", "avg latency us", "p50 us (1 at a time)", "lost", "answers"], ...rows.map((r) => [r.name, r.qps.toFixed(0), r.avgUs.toFixed(0), r.p50Us.toFixed(0), String(r.lost), r.codes])];
table.push(["moat / dnsmasq hop", (moat.qps / hop.qps).toFixed(2), (hop.avgUs / moat.avgUs).toFixed(2), (hop.p50Us / moat.p50Us).toFixed(2), "", ""]);
const w = table[0]!.map((_, i) => Math.max(...table.map((r) => r[i]!.length)));
for (const r of table) console.log(r.map((c, i) => c.padEnd(w[i]!)).join("  "));
console.log(`(dnsperf ${SECONDS} s, ${OUTSTANDING} outstanding; ratios > 1 favour moat; latency added over direct, average under load: moat ${(moat.avgUs - direct.avgUs).toFixed(0)} us, dnsmasq hop ${(hop.avgUs - direct.avgUs).toFixed(0)} us; p50 one at a time: moat ${(moat.p50Us - direct.p50Us).toFixed(0)} us, dnsmasq hop ${(hop.p50Us - direct.p50Us).toFixed(0)} us)`);
