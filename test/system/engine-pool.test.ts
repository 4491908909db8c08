// engine-pool.test.ts — sandboxes share engine worker threads, and stay apart on them: one
// sandbox's malformed frames and full flow table reach none of its neighbours on the same thread.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { World, WORLD_IP4, TESTBED_JS, TESTBED_SRC, systemTestSkipReason } from "../testbed/world.js";

const skip = systemTestSkipReason();
let world: World;
before(async () => {
  if (skip) return;
  world = World.create();
  await world.startServer("udp-echo", 7);
});
after(() => world?.teardown());

test("three sandboxes on one engine thread: a hostile one's flood and full table leave the others alone", { skip }, async () => {
  const r = await world.sandboxScript("engine-pool.js", [WORLD_IP4, `${TESTBED_JS}clients.js`, `${TESTBED_SRC}inject_frames.py`], 120000);
  assert.equal(r.code, 0, r.stderr);
  const s = JSON.parse(r.stdout);
  assert.deepEqual(s.shared.map((w: { sandboxes: number }) => w.sandboxes), [3], "one worker thread serves all three");
  for (const phase of ["before", "during", "after"] as const) {
    assert.deepEqual(s[phase].a, { code: 0, out: `a-${phase}` }, `${phase}: a's UDP exchange`);
    assert.deepEqual(s[phase].b, { code: 0, out: `b-${phase}` }, `${phase}: b's UDP exchange`);
  }
  assert.equal(s.flooded.code, 0, "the flood ran");
  const sum = (c: Record<string, number>) => Object.values(c).reduce((n, v) => n + v, 0);
  assert.ok(s.counters.hostile.DROP_FLOW_LIMIT > 0, `the hostile sandbox hit its own flow limit: ${JSON.stringify(s.counters)}`);
  assert.ok(sum(s.counters.hostile) > 1000, `its malformed frames were dropped and counted: ${JSON.stringify(s.counters)}`);
  // (a quiet guest's kernel sends a few frames the engine drops: IPv6 multicast listener reports)
  for (const n of ["a", "b"]) {
    assert.ok(sum(s.counters[n]) < 20 && !s.counters[n].DROP_FLOW_LIMIT, `nothing of it was counted against ${n}: ${JSON.stringify(s.counters)}`);
  }
  assert.deepEqual(s.afterDestroy.a, { code: 0, out: "a-alone" }, "a goes on after its neighbour is destroyed");
  assert.deepEqual(s.afterDestroy.workers.map((w: { sandboxes: number }) => w.sandboxes), [2]);
  assert.deepEqual(s.end.map((w: { sandboxes: number }) => w.sandboxes), [0], "the thread stays, serving nothing (and holding the process open no more)");
});
