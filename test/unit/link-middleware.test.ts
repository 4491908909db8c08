// link-middleware.test.ts — the options of the link decorators (orchestrator/src/links/middleware.ts):
// MOAT_FAULTS and --pcap are parsed strictly, and what is wrong is said with the way to write it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { parseFaults, validatePcap, DEFAULT_PCAP_MAX_BYTES } from "../../orchestrator/src/links/middleware.js";
import { ConfigError } from "../../orchestrator/src/errors.js";

test("MOAT_FAULTS: rates, delay, blackout, seed and direction", () => {
  assert.deepEqual(parseFaults("drop=0.01, reorder=0.01,dup=0.005,corrupt=0,delay=0.5,delay-ms=20,blackout-ms=3000,seed=7,direction=to-guest"),
    { drop: 0.01, reorder: 0.01, dup: 0.005, corrupt: 0, delay: 0.5, delayMs: 20, blackoutMs: 3000, seed: 7, direction: "to-guest" });
  assert.deepEqual(parseFaults(""), {});
});

test("MOAT_FAULTS: anything else is refused with the syntax", () => {
  for (const [text, why] of [
    ["drop=2", /drop 2 is not a probability/],
    ["drop=-0.1", /drop -0.1 is not a probability/],
    ["drop", /"drop" is not a fault setting/],
    ["loss=0.1", /"loss=0.1" is not a fault setting/],
    ["drop=abc", /"drop=abc" is not a fault setting/],
    ["seed=1.5", /seed 1.5 is not a non-negative integer/],
    ["delay-ms=999999", /delay-ms 999999 is out of range/],
    ["direction=up", /direction "up" is unknown/],
  ] as const) {
    assert.throws(() => parseFaults(text), (e: unknown) => e instanceof ConfigError && why.test(e.message) && /MOAT_FAULTS/.test(e.message) && !!e.hint, text);
  }
});

test("--pcap: the default bound, a path made absolute, and bounds too small for the header refused", () => {
  const p = validatePcap("x.pcap");
  assert.equal(p.maxBytes, DEFAULT_PCAP_MAX_BYTES);
  assert.ok(p.path.startsWith("/") && p.path.endsWith("/x.pcap"));
  assert.equal(validatePcap({ path: "/tmp/y.pcap", maxBytes: 0 }).maxBytes, 0);
  assert.throws(() => validatePcap({ path: "/tmp/y.pcap", maxBytes: 23 }), /not usable/);
  assert.throws(() => validatePcap(""), /no file given/);
  assert.throws(() => validatePcap("/no/such/dir/z.pcap"), /its directory does not exist/);
});
