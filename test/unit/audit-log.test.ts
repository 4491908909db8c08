// audit-log.test.ts — orchestrator/src/policy/audit.ts's AuditLog: repeats aggregated into
// summaries, a bounded set of keys, a size cap, and the errors of a bad path or bad options.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { setTimeout as sleep } from "node:timers/promises";
import { AuditLog, type DenyEvent } from "../../orchestrator/src/policy/audit.js";
import { ConfigError } from "../../orchestrator/src/errors.js";

const dir = mkdtempSync(join(tmpdir(), "moat-audit-log-"));
let files = 0;
const tempPath = (): string => join(dir, `audit-${files++}.jsonl`);

after(() => rmSync(dir, { recursive: true, force: true }));

/** Denial number i: a connect loop to 10.0.0.5:22, each from a new source port. */
function deny(i: number, over: Partial<DenyEvent> = {}): DenyEvent {
  return {
    time: new Date(Date.UTC(2025, 0, 1) + i).toISOString(),
    sandbox: "sb",
    direction: "outbound",
    protocol: "tcp",
    source: `172.30.0.2:${32768 + (i % 28000)}`,
    destination: "10.0.0.5",
    port: 22,
    rule: "default",
    action: "deny",
    ...over,
  };
}

function lines(path: string): Record<string, unknown>[] {
  return readFileSync(path, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** Sum over the file of the events each line stands for: 1, or a summary's "repeated". */
function eventsWritten(path: string): number {
  return lines(path).filter((l) => l.kind !== "audit-log-full").reduce((n, l) => n + ((l.repeated as number | undefined) ?? 1), 0);
}

test("a flood of one denial is one line, then one summary on close()", () => {
  const path = tempPath();
  const log = new AuditLog(path);
  const events = Array.from({ length: 100_000 }, (_, i) => deny(i));
  for (let i = 0; i < events.length; i += 1000) log.write(events.slice(i, i + 1000)); // as the ring drains
  assert.deepEqual(lines(path), [events[0]]);
  log.close();
  assert.deepEqual(lines(path), [events[0], { ...events[1], repeated: 99_999, until: events[99_999]!.time }]);
  assert.ok(statSync(path).size < 1000, `${statSync(path).size} bytes`);
  assert.equal(log.dropped, 0);
  assert.equal(log.heldKeys, 0);
});

test("every distinct key gets its first event written; the source port does not split keys", () => {
  const path = tempPath();
  const log = new AuditLog(path);
  const distinct = [
    deny(0),
    deny(1, { sandbox: "other" }),
    deny(2, { direction: "inbound" }),
    deny(3, { protocol: "udp" }),
    deny(4, { destination: "10.0.0.6" }),
    deny(5, { port: 23 }),
    deny(6, { rule: "rules[0] deny:egress@group:private" }),
  ];
  log.write(distinct);
  log.write(distinct.map((e, i) => ({ ...e, time: deny(100 + i).time, source: "172.30.0.2:9" })));
  const dns = [
    { time: deny(7).time, sandbox: "sb", kind: "dns-blocked", name: "ads.test", detail: "block list" },
    { time: deny(8).time, sandbox: "sb", kind: "dns-blocked", name: "ads2.test", detail: "block list" },
    { time: deny(9).time, sandbox: "sb", kind: "dns-rebinding", name: "ads.test", detail: "block list" },
    { time: deny(10).time, sandbox: "sb", kind: "dns-blocked", name: "ads.test", detail: "other" },
  ];
  log.writeRecords(dns);
  log.writeRecords([{ ...dns[0]!, time: deny(11).time }]);
  assert.deepEqual(lines(path), [...distinct, ...dns]);
  log.close();
  const summaries = lines(path).slice(distinct.length + dns.length);
  assert.equal(summaries.length, distinct.length + 1);
  assert.ok(summaries.every((s) => s.repeated === 1));
  assert.deepEqual(summaries.at(-1), { ...dns[0], time: deny(11).time, repeated: 1, until: deny(11).time });
});

test("a key's interval ends by timer: its summary is written, then the next event starts a new one", async () => {
  const path = tempPath();
  const log = new AuditLog(path, { intervalMs: 50 });
  log.write([deny(0), deny(1), deny(2)]);
  assert.equal(lines(path).length, 1);
  for (let waited = 0; lines(path).length < 2 && waited < 2000; waited += 10) await sleep(10);
  assert.deepEqual(lines(path), [deny(0), { ...deny(1), repeated: 2, until: deny(2).time }]);
  log.write([deny(3), deny(4)]);
  assert.deepEqual(lines(path).slice(2), [deny(3)]);
  log.close();
  assert.deepEqual(lines(path).slice(3), [{ ...deny(4), repeated: 1, until: deny(4).time }]);
});

test("an interval that ended while the timer could not run is summarised before the next event", () => {
  const path = tempPath();
  const log = new AuditLog(path, { intervalMs: 20 });
  log.write([deny(0), deny(1)]);
  const start = performance.now();
  while (performance.now() - start < 40); // keep the event loop (and the timer) from running
  log.write([deny(2)]);
  assert.deepEqual(lines(path), [deny(0), { ...deny(1), repeated: 1, until: deny(1).time }, deny(2)]);
  log.close();
});

test("the timer keeps no process alive, and pending summaries are written at exit", () => {
  const path = tempPath();
  const audit = new URL("../../orchestrator/src/policy/audit.js", import.meta.url).href;
  const script = `import { AuditLog } from ${JSON.stringify(audit)};
    new AuditLog(${JSON.stringify(path)}, { intervalMs: 60000 }).write(${JSON.stringify([deny(0), deny(1)])});`;
  const t0 = performance.now();
  const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], { timeout: 10_000, encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  assert.ok(performance.now() - t0 < 10_000);
  assert.deepEqual(lines(path), [deny(0), { ...deny(1), repeated: 1, until: deny(1).time }]);
});

test("the size cap: one audit-log-full line, then nothing written, the rest counted in dropped", () => {
  const path = tempPath();
  const maxBytes = 2000;
  const log = new AuditLog(path, { maxBytes });
  log.write([deny(0), deny(1)]); // a repeat pending when the cap is reached: dropped too
  const events = Array.from({ length: 1000 }, (_, i) => deny(i, { port: 1000 + i }));
  log.write(events);
  const size = statSync(path).size;
  const written = lines(path);
  const last = written.at(-1)!;
  assert.equal(last.kind, "audit-log-full");
  assert.equal(last.detail, `size cap of ${maxBytes} bytes reached; further events are counted, not written`);
  assert.ok(size <= maxBytes + JSON.stringify(last).length + 1, `${size} bytes`);
  assert.ok(written.length > 5);
  log.write([deny(0), deny(5000, { port: 5000 })]);
  log.close();
  assert.equal(statSync(path).size, size);
  assert.equal(eventsWritten(path) + log.dropped, 2 + 1000 + 2);
  assert.equal(log.dropped, 2 + 1000 + 2 - (written.length - 1));
});

test("the size cap counts what the file held already", () => {
  const path = tempPath();
  writeFileSync(path, "x".repeat(1900) + "\n");
  const log = new AuditLog(path, { maxBytes: 2000 });
  log.write([deny(0, { port: 1 }), deny(1, { port: 2 })]);
  const content = readFileSync(path, "utf8").split("\n").filter(Boolean); // the filler is not JSON
  assert.equal(content.length, 2);
  assert.equal((JSON.parse(content[1]!) as { kind: string }).kind, "audit-log-full");
  assert.equal(log.dropped, 2);
});

test("past maxKeys, new keys are counted in one overflow summary per kind", () => {
  const path = tempPath();
  const log = new AuditLog(path, { maxKeys: 100 });
  log.write(Array.from({ length: 1000 }, (_, i) => deny(i, { port: 1 + i })));
  log.writeRecords(Array.from({ length: 10 }, (_, i) => ({ time: deny(2000 + i).time, sandbox: "sb", kind: "dns-blocked", name: `n${i}.test`, detail: "" })));
  assert.equal(lines(path).length, 100);
  assert.equal(log.heldKeys, 102); // 100 keys, and an overflow count for each of two kinds
  log.close();
  const overflow = lines(path).slice(100);
  const detail = (kind: string) => `limit of 100 distinct events per 10000 ms reached; further ${kind} events are counted, not written`;
  assert.deepEqual(overflow, [
    { v: 1, time: deny(100).time, sandbox: "sb", kind: "audit-log-overflow", of: "flow-denied", detail: detail("flow-denied"), repeated: 900, until: deny(999).time },
    { v: 1, time: deny(2000).time, sandbox: "sb", kind: "audit-log-overflow", of: "dns-blocked", detail: detail("dns-blocked"), repeated: 10, until: deny(2009).time },
  ]);
  assert.equal(eventsWritten(path), 1010);
  assert.equal(log.heldKeys, 0);
});

test("an unwritable path or a bad option is a ConfigError", () => {
  assert.throws(() => new AuditLog(join(dir, "no-such-dir", "audit.jsonl")), (e: unknown) =>
    e instanceof ConfigError && /cannot write the audit log/.test(e.message) && !!e.hint);
  const bad = [{ intervalMs: 0 }, { intervalMs: -5 }, { intervalMs: 1.5 }, { intervalMs: NaN }, { maxBytes: 0 }, { maxBytes: Infinity }, { maxKeys: 0 }, { maxKeys: 2.5 }];
  for (const options of bad) {
    assert.throws(() => new AuditLog(tempPath(), options), (e: unknown) =>
      e instanceof ConfigError && /is not a positive whole number/.test(e.message) && !!e.hint, JSON.stringify(options));
  }
});
