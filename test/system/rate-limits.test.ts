// rate-limits.test.ts — the rate limits (--limit-egress, --limit-ingress, --limit-conn-rate,
// --limit-dns-rate; engine-wasm/assembly/limits.ts) on real traffic between a sandbox and a test
// world with no route off the machine: iperf3 held to the limit within ±10% both ways with TCP
// paced, not dropped (few retransmissions); a client connecting as fast as it can held to the
// connection rate within ±10%; DNS over its rate refused, counted in the metrics and events; a
// limit lowered on a running sandbox through the library (on the flow already open) and through
// the control socket (`moat limit`). A few seconds of traffic each: the figures are iperf3's
// receiver's, after a first second it omits (the burst the bucket starts with).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import type { ChildProcess } from "node:child_process";
import { World, WORLD_IP4, systemTestSkipReason, hasTool } from "../testbed/world.js";

const skip = systemTestSkipReason() ?? (hasTool("iperf3", "--version") && hasTool("dig", "-v") ? undefined : "iperf3 or dig is not installed");
let world: World;

before(async () => {
  if (skip) return;
  world = World.create();
  world.startDnsServer();
  await world.startIperf3();
  await world.startServer("tcp-echo", 7);
});
after(() => world?.teardown());

interface Iperf { end: { sum_sent: { bits_per_second: number; retransmits?: number }; sum_received: { bits_per_second: number } } }

/** `moat run OPTIONS -- iperf3 ...` (3 s measured after 1 s omitted): Mbit/s at the receiver, the sender's retransmissions, moat's counters. */
async function iperf(options: string[], reverse: boolean): Promise<{ mbit: number; retransmits: number; counters: Record<string, number> }> {
  const r = await world.moat(["run", "--dns-forward", "none", "--stats", ...options, "--", "iperf3", "-c", WORLD_IP4, "-t", "3", "-O", "1", "--json", ...(reverse ? ["-R"] : [])], 60000);
  assert.equal(r.code, 0, r.stderr + r.stdout);
  const j = JSON.parse(r.stdout) as Iperf;
  return { mbit: j.end.sum_received.bits_per_second / 1e6, retransmits: j.end.sum_sent.retransmits ?? 0, counters: World.stats(r.stderr) };
}

function within10(mbit: number, want: number, what: string): void {
  assert.ok(Math.abs(mbit - want) <= want * 0.1, `${what}: ${mbit.toFixed(2)} Mbit/s, want ${want} ±10%`);
}

test("--limit-egress 50mbit: the guest's TCP is paced to 50 Mbit/s ±10% by the window it is offered, without retransmissions", { skip }, async () => {
  const { mbit, retransmits, counters } = await iperf(["--limit-egress", "50mbit"], false);
  within10(mbit, 50, "guest -> world");
  assert.ok(retransmits <= 10, `the guest retransmitted ${retransmits} segments: it must be paced, not dropped`);
  assert.ok((counters.RATE_EGRESS_PACED ?? 0) > 0, JSON.stringify(counters));
  assert.equal(counters.DROP_RATE_EGRESS ?? 0, 0, "no TCP segment is dropped");
});

test("--limit-ingress 50mbit: the world's TCP is paced to 50 Mbit/s ±10% through the host socket, without a retransmission storm", { skip }, async () => {
  const { mbit, retransmits, counters } = await iperf(["--limit-ingress", "50mbit"], true);
  within10(mbit, 50, "world -> guest");
  assert.ok(retransmits <= 50, `the sender retransmitted ${retransmits} segments`);
  assert.ok((counters.TCP_RETRANSMITS ?? 0) <= 2, `moat retransmitted ${counters.TCP_RETRANSMITS} times toward the guest`);
  assert.ok((counters.RATE_INGRESS_PACED ?? 0) > 0, JSON.stringify(counters));
});

test("--limit-conn-rate 20: a client connecting as fast as it can gets 20 connections a second ±10%, none refused", { skip }, async () => {
  const r = await world.moat(["run", "--dns-forward", "none", "--stats", "--limit-conn-rate", "20", "--", process.execPath, new URL("../testbed/tcp-clients.js", import.meta.url).pathname, "crr", WORLD_IP4, "7", "3"], 60000);
  assert.equal(r.code, 0, r.stderr);
  const m = /\((\d+) connections in ([\d.]+) s\)/.exec(r.stdout);
  assert.ok(m, r.stdout);
  const rate = Number(m[1]) / Number(m[2]);
  assert.ok(Math.abs(rate - 20) <= 2, `${rate.toFixed(2)} connections/s (${m[0]}), want 20 ±10%`);
  const c = World.stats(r.stderr);
  assert.ok((c.RATE_CONN_DELAYED ?? 0) >= Number(m[1]) - 5, `SYNs held, not refused: ${JSON.stringify(c)}`);
  assert.equal(c.DROP_RATE_CONN ?? 0, 0);
});

test("a DNS rate: queries over it are answered REFUSED (UDP and TCP), counted in the metrics and limit-hit events", { skip }, async () => {
  const r = await world.sandboxScript("rate-limits-lib.js", ["dns", WORLD_IP4], 60000);
  assert.equal(r.code, 0, r.stderr);
  const { udp, tcp, metrics, events } = JSON.parse(r.stdout) as { udp: string[]; tcp: string[]; metrics: string; events: { limit: string; count: number }[] };
  const count = (xs: string[], s: string) => xs.filter((x) => x === s).length;
  assert.equal(count(udp, "NOERROR") + count(udp, "REFUSED"), 20, JSON.stringify(udp));
  // 5 at once, then 1 a second: the 20 queries take well under 5 s.
  assert.ok(count(udp, "NOERROR") >= 5 && count(udp, "NOERROR") <= 9, `answered: ${JSON.stringify(udp)}`);
  assert.ok(count(tcp, "REFUSED") >= 2, `DNS over TCP takes from the same bucket: ${JSON.stringify(tcp)}`);
  const refused = count(udp, "REFUSED") + count(tcp, "REFUSED");
  const drops = /^moat_rate_limit_drops_total\{sandbox="[^"]+",limit="dns"\} (\d+)$/m.exec(metrics);
  assert.equal(Number(drops?.[1]), refused, metrics);
  assert.match(metrics, /^moat_rate_limit_dns_queries_per_second\{sandbox="[^"]+"\} 1$/m);
  const hits = events.filter((e) => e.limit === "dns-rate");
  assert.equal(hits.reduce((n, e) => n + e.count, 0), refused, JSON.stringify(events));
});

test("a limit lowered on a running sandbox through the library holds the flow already open to the new rate", { skip }, async () => {
  const r = await world.sandboxScript("rate-limits-lib.js", ["live", WORLD_IP4], 60000);
  assert.equal(r.code, 0, r.stderr);
  const { intervals, limits } = JSON.parse(r.stdout) as { intervals: [number, number][]; limits: { ingress: { bitsPerSecond: number } } };
  assert.equal(limits.ingress.bitsPerSecond, 20e6);
  const mean = (from: number, to: number) => {
    const xs = intervals.filter(([t]) => t >= from && t < to).map(([, v]) => v);
    return xs.reduce((a, b) => a + b, 0) / xs.length;
  };
  within10(mean(0.5, 1.5), 50, `before the change (${JSON.stringify(intervals)})`);
  within10(mean(2.5, 4), 20, `after the change (${JSON.stringify(intervals)})`);
});

test("moat limit over the control socket: shows, changes and removes a sandbox's limits; a bad value names the option", { skip }, async () => {
  const dir = mkdtempSync("/tmp/moat-limit-");
  const sock = `${dir}/control.sock`;
  const daemon: ChildProcess = world.spawnMoat(["daemon", "--control", sock]);
  try {
    for (let t = 0; t < 100 && (await world.moat(["ps", "--control", sock])).code !== 0; t++) await new Promise((r) => setTimeout(r, 100));
    const created = await world.moat(["create", "--control", sock, "--name", "lim", "--dns-forward", "none", "--limit-ingress", "50mbit", "--limit-conn-rate", "20"]);
    assert.equal(created.code, 0, created.stderr);
    assert.deepEqual((JSON.parse(created.stdout) as { limits: unknown }).limits, { egress: null, ingress: { bitsPerSecond: 50e6, burstBytes: 625000 }, connRate: { perSecond: 20, burst: 2 }, dnsRate: null });
    const changed = await world.moat(["limit", "--control", sock, "lim", "--limit-ingress", "20mbit", "--limit-conn-rate", "none"]);
    assert.equal(changed.code, 0, changed.stderr);
    assert.deepEqual(JSON.parse(changed.stdout), { egress: null, ingress: { bitsPerSecond: 20e6, burstBytes: 262144 }, connRate: null, dnsRate: null });
    const shown = await world.moat(["limit", "--control", sock, "lim"]);
    assert.deepEqual(JSON.parse(shown.stdout), JSON.parse(changed.stdout));
    const bad = await world.moat(["limit", "--control", sock, "lim", "--limit-egress", "20MB"]);
    assert.equal(bad.code, 125);
    assert.match(bad.stderr, /--limit-egress "20MB" is not a bandwidth/);
    // In force: a download in the sandbox is held to the new rate.
    const run = await world.moat(["exec", "--control", sock, "lim", "--", "iperf3", "-c", WORLD_IP4, "-R", "-t", "2", "-O", "1", "--json"], 30000);
    assert.equal(run.code, 0, run.stderr);
    within10((JSON.parse(run.stdout) as Iperf).end.sum_received.bits_per_second / 1e6, 20, "after moat limit");
  } finally {
    daemon.kill("SIGTERM");
    await new Promise((r) => daemon.once("exit", r));
    rmSync(dir, { recursive: true, force: true });
  }
});
