// dns.ts — the DNS interceptor's cost, side by side: the same load generator (test/testbed/
// dns-load.ts) queries a real dnsmasq (a) through a moat sandbox's gateway (interception: engine
// ring, worker, interceptor, upstream and back) and (b) directly from the host namespace.
// Prints queries/s and latency p50/p99 for each and the ratios.
//   sudo node dist/bench/dns.js [--queries N] [--concurrency C]
import { execFileSync } from "node:child_process";
import { World, WORLD_IP4, MOAT_BIN, TESTBED_JS, systemTestSkipReason } from "../test/testbed/world.js";

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => { const i = args.indexOf(`--${name}`); return i >= 0 ? args[i + 1]! : dflt; };
const N = opt("queries", "20000");
const C = opt("concurrency", "16");
const skip = systemTestSkipReason();
if (skip) { console.error(`dns bench: ${skip}`); process.exit(2); }

interface Load { qps: number; p50us: number; p99us: number; answered: number; lost: number }
const world = World.create();
try {
  world.startDnsServer();
  const load = [process.execPath, `${TESTBED_JS}dns-load.js`];
  const direct = JSON.parse(execFileSync("ip", ["netns", "exec", world.host, ...load, WORLD_IP4, "allowed.test", N, C], { encoding: "utf8" })) as Load;
  const viaMoat = JSON.parse(execFileSync("ip", ["netns", "exec", world.host, process.execPath, MOAT_BIN, "run", "--dns-nameserver", WORLD_IP4, "--", "sh", "-c",
    `${load.join(" ")} $(ip route | sed -n "s/default via \\([0-9.]*\\).*/\\1/p") allowed.test ${N} ${C}`], { encoding: "utf8" })) as Load;
  const rows = [["path", "queries/s", "p50 us", "p99 us", "lost"],
    ["direct (host ns -> dnsmasq)", String(direct.qps), String(direct.p50us), String(direct.p99us), String(direct.lost)],
    ["through moat's interceptor", String(viaMoat.qps), String(viaMoat.p50us), String(viaMoat.p99us), String(viaMoat.lost)],
    ["moat / direct", (viaMoat.qps / direct.qps).toFixed(2), (viaMoat.p50us / direct.p50us).toFixed(2), (viaMoat.p99us / direct.p99us).toFixed(2), ""]];
  const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const r of rows) console.log(r.map((c, i) => c.padEnd(w[i]!)).join("  "));
  console.log(`(${N} queries, ${C} outstanding; added latency p50 ${viaMoat.p50us - direct.p50us} us, p99 ${viaMoat.p99us - direct.p99us} us)`);
} finally {
  world.teardown();
}
