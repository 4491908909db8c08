// rate-limits.test.ts — the grammar of the rate limits (gateway/limits.ts): what --limit-egress,
// --limit-ingress, --limit-conn-rate, --limit-dns-rate, the config file and the API take, their
// defaults, and the errors for what they do not take (the option, the value, the forms accepted).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { ConfigError } from "../../orchestrator/src/errors.js";
import { applyLimits, engineLimits, formatLimit, parseBandwidth, validateLimit, NO_LIMITS } from "../../orchestrator/src/gateway/limits.js";
import { parseConfig } from "../../orchestrator/src/cli/config-file.js";
import { MOAT_BIN } from "../testbed/world.js";

test("bandwidth: RATE in tc's bit units (×1000), BURST in bytes (×1024), 100 ms of the rate by default, at least 256 KiB", () => {
  assert.deepEqual(parseBandwidth("50mbit", "--limit-egress"), { bitsPerSecond: 50e6, burstBytes: 625000 });
  assert.deepEqual(parseBandwidth("10mbit", "--limit-egress"), { bitsPerSecond: 10e6, burstBytes: 262144 });
  assert.deepEqual(parseBandwidth("1.5GBit:4m", "--limit-egress"), { bitsPerSecond: 1.5e9, burstBytes: 4 * 1024 * 1024 });
  assert.deepEqual(parseBandwidth("500kbit:65536", "--limit-egress"), { bitsPerSecond: 500e3, burstBytes: 65536 });
  assert.deepEqual(parseBandwidth("8bit:64k", "--limit-egress"), { bitsPerSecond: 8, burstBytes: 65536 });
  assert.equal(parseBandwidth("none", "--limit-egress"), null);
  assert.equal(formatLimit(parseBandwidth("50mbit", "x")), "50mbit:625000", "the burst chosen is said");
  for (const text of ["1500mbit:4m", "500kbit:64k", "1gbit:1000000"]) {
    assert.equal(formatLimit(parseBandwidth(text, "x")), text, "written back as read");
  }
});

test("rates: N a second (a fraction too), BURST a whole number; connections default to a tenth of a second's worth, DNS to a second's", () => {
  assert.deepEqual(validateLimit("connRate", "20", "--limit-conn-rate"), { perSecond: 20, burst: 2 });
  assert.deepEqual(validateLimit("connRate", 0.5, "--limit-conn-rate"), { perSecond: 0.5, burst: 1 });
  assert.deepEqual(validateLimit("connRate", "20:5", "--limit-conn-rate"), { perSecond: 20, burst: 5 });
  assert.deepEqual(validateLimit("dnsRate", "50", "--limit-dns-rate"), { perSecond: 50, burst: 50 });
  assert.deepEqual(validateLimit("dnsRate", { perSecond: 5, burst: 9 }, "limits.dnsRate"), { perSecond: 5, burst: 9 });
  assert.equal(validateLimit("dnsRate", "none", "--limit-dns-rate"), null);
  assert.equal(formatLimit(validateLimit("connRate", "20", "x")), "20:2");
});

test("a bad value is refused with the option, the value and the forms it takes", () => {
  const cases: [key: "egress" | "connRate" | "dnsRate", value: unknown, message: RegExp, hint: RegExp][] = [
    ["egress", "10", /^--limit-egress "10" is not a bandwidth: RATE needs a unit$/, /bit, kbit, mbit or gbit/],
    ["egress", "10mbps", /^--limit-egress "10mbps" is not a bandwidth: moat's rates are bits per second \(tc's "mbps" would be bytes\): e\.g\. 80mbit for 10 MB\/s$/, /RATE\[:BURST\]/],
    ["egress", "10mb", /bits per second \(tc's "mb" would be bytes\)/, /RATE\[:BURST\]/],
    ["egress", "fast", /^--limit-egress "fast" is not a bandwidth$/, /e\.g\. 10mbit or 1\.5gbit/],
    ["egress", "10 mbit", /^--limit-egress "10 mbit" is not a bandwidth$/, /RATE\[:BURST\]/],
    ["egress", "10tbit", /"tbit" is not a unit/, /bit, kbit, mbit or gbit/],
    ["egress", "10mbit:512x", /"x" is not a unit of BURST/, /k, m or g/],
    ["egress", "10mbit:1k", /^--limit-egress "10mbit:1k" is not a bandwidth moat takes: BURST must be a whole number of bytes from 64k/, /at least 64k/],
    ["egress", "0mbit", /the rate must be from 8bit/, /RATE\[:BURST\]/],
    ["egress", { bitsPerSecond: 1e6, burst: 70000 }, /^--limit-egress has an unknown field "burst"$/, /burstBytes/],
    ["connRate", "20/s", /^--limit-conn-rate "20\/s" is not a rate$/, /N\[:BURST\]: N connections a second/],
    ["connRate", "20:0", /BURST must be a whole number from 1/, /N\[:BURST\]/],
    ["connRate", "0", /N must be above 0/, /N\[:BURST\]/],
    ["dnsRate", "-3", /^--limit-dns-rate "-3" is not a rate$/, /N DNS queries a second/],
    ["dnsRate", true, /^--limit-dns-rate is true, not a limit$/, /N\[:BURST\]/],
  ];
  for (const [key, value, message, hint] of cases) {
    const flag = { egress: "--limit-egress", connRate: "--limit-conn-rate", dnsRate: "--limit-dns-rate" }[key];
    assert.throws(() => validateLimit(key, value, flag), (e: unknown) => {
      assert.ok(e instanceof ConfigError, String(e));
      assert.match(e.message, message);
      assert.match(e.hint ?? "", hint);
      return true;
    }, JSON.stringify(value));
  }
});

test("changes: a key given sets its limit, null removes it, one left out keeps it; an unknown one is refused", () => {
  const a = applyLimits(NO_LIMITS, { egress: "50mbit", connRate: 20 });
  const b = applyLimits(a, { egress: null, ingress: "10mbit" });
  assert.deepEqual(b, { egress: null, ingress: { bitsPerSecond: 10e6, burstBytes: 262144 }, connRate: { perSecond: 20, burst: 2 }, dnsRate: null });
  assert.throws(() => applyLimits(a, { egres: "1mbit" } as never), /unknown limit "egres"/);
  // The engine's buckets: bytes (or events) per millisecond, and their size.
  assert.deepEqual(engineLimits(b), [[0, 0], [1250, 262144], [0.02, 2], [0, 0]]);
});

test("the config file's network.limits takes the same forms; a bad one names its path", () => {
  const c = parseConfig({ network: { limits: { egress: "50mbit:1m", connRate: 20, dnsRate: "5:10" } } }, "moat.json");
  assert.deepEqual(c.network?.limits, { egress: { bitsPerSecond: 50e6, burstBytes: 1048576 }, connRate: { perSecond: 20, burst: 2 }, dnsRate: { perSecond: 5, burst: 10 } });
  assert.throws(() => parseConfig({ network: { limits: { ingress: "1MB" } } }, "moat.json"), /^ConfigError: moat\.json: network\.limits\.ingress "1MB" is not a bandwidth/);
  assert.throws(() => parseConfig({ network: { limits: { bandwidth: "1mbit" } } }, "moat.json"), /unknown key "bandwidth" in network\.limits/);
});

test("moat run with a bad --limit-* value exits 125 saying what is wrong, before anything is created", () => {
  const dir = mkdtempSync(`${tmpdir()}/moat-limits-`);
  try {
    const cfg = `${dir}/moat.json`;
    writeFileSync(cfg, JSON.stringify({ network: { limits: { dnsRate: "lots" } } }));
    for (const [args, want] of [
      [["--limit-egress", "10mb"], /moat: --limit-egress "10mb" is not a bandwidth: moat's rates are bits per second/],
      [["--limit-conn-rate", "fast"], /moat: --limit-conn-rate "fast" is not a rate/],
      [["--config", cfg], /network\.limits\.dnsRate "lots" is not a rate/],
    ] as const) {
      const r = spawnSync(process.execPath, [MOAT_BIN, "run", ...args, "--", "true"], { encoding: "utf8" });
      assert.equal(r.status, 125, r.stderr);
      assert.match(r.stderr, want);
      assert.match(r.stderr, /moat: hint: give /);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
