// ring.test.ts — the TypeScript ring (test/helpers/ring.ts): its protocol on one
// thread, across two threads, and against the engine's AssemblyScript consumer and producer.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Worker } from "node:worker_threads";
import { once } from "node:events";
import { performance } from "node:perf_hooks";
import { setImmediate as yieldToLoop } from "node:timers/promises";
import { RingView, PUBLISH_BATCH, SLEEP_CONSUMER } from "../helpers/ring.js";
import { layout as L } from "../../orchestrator/src/engine/layout.js";
import { EngineHarness, testConfig } from "../helpers/engine-harness.js";
import { eth, arpRequest, mac } from "../helpers/frames.js";
import { seqFrameLen, FNV_OFFSET, FNV_PRIME, type ProducerData, type ProducerResult, type RingGeometryData } from "./ring-producer.worker.js";

/** A standalone ring in its own SharedArrayBuffer: control block at 0, then descriptors, then buffers. */
function makeRing(slots: number, slotBytes: number, startCounter = 0): RingGeometryData {
  const ctrl = 0;
  const descBase = L.RING_CTRL_BYTES;
  const bufBase = descBase + slots * L.DESC_BYTES;
  const buffer = new SharedArrayBuffer(bufBase + slots * slotBytes);
  const dv = new DataView(buffer);
  dv.setUint32(ctrl + L.RING_CTRL_HEAD, startCounter, true);
  dv.setUint32(ctrl + L.RING_CTRL_TAIL, startCounter, true);
  return { buffer, ctrl, descBase, bufBase, slots, slotBytes };
}
function view(g: RingGeometryData): RingView {
  return new RingView(g.buffer, g.ctrl, g.descBase, g.bufBase, g.slots, g.slotBytes);
}
function ctrlWord(g: RingGeometryData, field: number): number {
  return Atomics.load(new Int32Array(g.buffer), (g.ctrl + field) >> 2) >>> 0;
}

/** Starts ring-producer.worker.js; `result` settles with its report (or its error). */
function startProducer(data: ProducerData): { worker: Worker; result: Promise<ProducerResult>; error: () => unknown } {
  const worker = new Worker(new URL("./ring-producer.worker.js", import.meta.url), { workerData: data });
  let failure: unknown;
  const result = new Promise<ProducerResult>((resolve, reject) => {
    worker.once("message", resolve);
    worker.once("error", (e) => { failure = e; reject(e); });
    worker.once("exit", (code) => { if (code !== 0) reject(new Error(`producer exited with ${code}`)); });
  });
  result.catch(() => {}); // observed by the test through `await result` / error()
  return { worker, result, error: () => failure };
}

test("counters wrap past 2^32: 10 x slots frames keep order, length, contents and descriptor words", () => {
  const START = 0xfffffff0;
  const g = makeRing(8, 64, START);
  const ring = view(g);
  const bytes = new Uint8Array(g.buffer);
  const total = 10 * g.slots;
  const lenOf = (i: number) => 1 + ((i * 37) % g.slotBytes);
  let pushed = 0, popped = 0, batch = 1;
  while (popped < total) {
    // batches of 1..slots frames, so slot positions and the wrap point move around
    for (let k = 0; k < batch && pushed < total; k++, pushed++) {
      const off = ring.reserve();
      assert.equal(off, g.bufBase + (((START + pushed) >>> 0) & (g.slots - 1)) * g.slotBytes);
      const len = lenOf(pushed);
      for (let j = 0; j < len; j++) bytes[off + j] = (pushed * 7 + j) & 255;
      ring.commit(len, pushed, ~pushed >>> 0, pushed ^ 0x5a5a);
    }
    ring.publish();
    const n = ring.available();
    assert.equal(n, pushed - popped);
    for (let i = 0; i < n; i++, popped++) {
      const e = ring.peek(i);
      assert.equal(e.len, lenOf(popped));
      assert.equal(e.token, popped);
      assert.equal(e.aux, ~popped >>> 0);
      assert.equal(e.flags, popped ^ 0x5a5a);
      for (let j = 0; j < e.len; j++) {
        if (bytes[e.offset + j] !== ((popped * 7 + j) & 255)) assert.fail(`frame ${popped} byte ${j} differs`);
      }
    }
    ring.release(n);
    batch = (batch % g.slots) + 1;
  }
  const end = (START + total) >>> 0;
  assert.ok(end < START, "the counters wrapped");
  assert.equal(ctrlWord(g, L.RING_CTRL_HEAD), end);
  assert.equal(ctrlWord(g, L.RING_CTRL_TAIL), end);
  assert.equal(ring.available(), 0);
});

test("reserve returns -1 while every slot is in use and a slot again once the consumer releases one", () => {
  const g = makeRing(8, 32);
  const producer = view(g);
  const consumer = view(g);
  for (let i = 0; i < g.slots; i++) {
    assert.notEqual(producer.reserve(), -1);
    producer.commit(i + 1, i);
  }
  producer.publish();
  assert.equal(producer.reserve(), -1);
  assert.equal(producer.reserve(), -1, "still full");
  assert.equal(consumer.available(), g.slots);
  consumer.release(0);
  assert.equal(producer.reserve(), -1, "releasing nothing frees nothing");
  consumer.release(1);
  assert.equal(producer.reserve(), g.bufBase, "the freed slot is the oldest one, slot 0");
  producer.commit(10, 8);
  assert.equal(producer.reserve(), -1, "full again");
});

test("commits stay invisible to the consumer until publish(), or until 32 have accumulated", () => {
  const g = makeRing(64, 16);
  const producer = view(g);
  const consumer = view(g);
  for (let i = 0; i < PUBLISH_BATCH - 1; i++) {
    assert.notEqual(producer.reserve(), -1);
    producer.commit(4, i);
    assert.equal(consumer.available(), 0, `after ${i + 1} commits`);
  }
  assert.equal(ctrlWord(g, L.RING_CTRL_TAIL), 0);
  producer.publish();
  assert.equal(consumer.available(), PUBLISH_BATCH - 1);
  for (let i = 0; i < PUBLISH_BATCH; i++) {
    producer.reserve();
    producer.commit(4, i);
    assert.equal(consumer.available(), i < PUBLISH_BATCH - 1 ? PUBLISH_BATCH - 1 : 2 * PUBLISH_BATCH - 1, `after ${i + 1} more commits`);
  }
  assert.equal(producer.publishCount, 2);
});

test("a full ring publishes the pending commits, so the consumer can free slots", () => {
  const g = makeRing(8, 16);
  const producer = view(g);
  const consumer = view(g);
  for (let i = 0; i < g.slots; i++) {
    producer.reserve();
    producer.commit(4, i);
  }
  assert.equal(consumer.available(), 0, "8 < 32 commits: not published yet");
  assert.equal(producer.reserve(), -1);
  assert.equal(consumer.available(), g.slots);
});

test("publish and release notify only when the other side's sleep flag is set", () => {
  const g = makeRing(8, 16);
  const producer = view(g);
  const consumer = view(g);
  const i32 = new Int32Array(g.buffer);
  const sleep = (g.ctrl + L.RING_CTRL_SLEEP) >> 2;
  producer.reserve();
  producer.commit(4);
  producer.publish();
  assert.equal(producer.notifyCount, 0);
  Atomics.store(i32, sleep, SLEEP_CONSUMER);
  producer.publish();
  assert.equal(producer.notifyCount, 0, "nothing new to publish, nothing to notify");
  producer.reserve();
  producer.commit(4);
  producer.publish();
  assert.equal(producer.notifyCount, 1);
  assert.equal(producer.publishCount, 2);
  Atomics.store(i32, sleep, 0);
  consumer.available();
  consumer.release(1);
  assert.equal(consumer.notifyCount, 0);
  Atomics.store(i32, sleep, 2);
  consumer.release(1);
  assert.equal(consumer.notifyCount, 1);
});

test("waitForData on an empty ring returns 0 after its timeout and clears its sleep flag", () => {
  const g = makeRing(8, 16);
  const consumer = view(g);
  const t0 = performance.now();
  assert.equal(consumer.waitForData(30), 0);
  const waited = performance.now() - t0;
  assert.ok(waited >= 25 && waited < 1000, `waited ${waited.toFixed(1)} ms for a 30 ms timeout`);
  assert.equal(ctrlWord(g, L.RING_CTRL_SLEEP), 0);
});

test("two threads: 200000 frames through a 256-slot ring arrive in order and intact, with few notifies", async () => {
  const FRAMES = 200_000;
  const g = makeRing(256, 2048);
  const consumer = view(g);
  const bytes = new Uint8Array(g.buffer);
  const dv = new DataView(g.buffer);
  const producer = startProducer({ ...g, mode: "seq", frames: FRAMES });
  await once(producer.worker, "online");

  const deadline = Date.now() + 60_000;
  let seq = 0, h = FNV_OFFSET, total = 0, sleeps = 0;
  const t0 = performance.now();
  while (seq < FRAMES) {
    const n = consumer.waitForData(100);
    if (n === 0) {
      sleeps++;
      await yieldToLoop(); // lets a producer error surface
      if (producer.error()) throw producer.error();
      if (Date.now() > deadline) assert.fail(`stalled at frame ${seq}`);
      continue;
    }
    for (let i = 0; i < n; i++, seq++) {
      const e = consumer.peek(i);
      const len = seqFrameLen(seq, g.slotBytes);
      if (e.token !== seq || e.len !== len || e.aux !== len || dv.getUint32(e.offset, true) !== seq) {
        assert.fail(`frame ${seq}: token ${e.token}, len ${e.len} (want ${len}), aux ${e.aux}, seq ${dv.getUint32(e.offset, true)}`);
      }
      for (let j = e.offset, end = e.offset + e.len; j < end; j++) h = Math.imul(h ^ bytes[j]!, FNV_PRIME);
      total += e.len;
    }
    consumer.release(n);
  }
  const seconds = (performance.now() - t0) / 1000;
  const sent = await producer.result;
  await once(producer.worker, "exit").catch(() => {});

  assert.equal(sent.sent, FRAMES);
  assert.equal(total, sent.bytes);
  assert.equal(h >>> 0, sent.checksum, "content checksum");
  assert.equal(consumer.available(), 0);
  const notifies = sent.notifies + consumer.notifyCount;
  console.log(`ring: ${FRAMES} frames (${(total / 1e6).toFixed(0)} MB) in ${(seconds * 1000).toFixed(0)} ms = ` +
    `${(FRAMES / seconds / 1e6).toFixed(2)} M frames/s, ${(total / seconds / 1e9).toFixed(2)} GB/s; ` +
    `notifies: producer ${sent.notifies}, consumer ${consumer.notifyCount} (publishes ${sent.publishes}, ` +
    `producer full-ring waits ${sent.fullWaits}, consumer timeouts ${sleeps})`);
  assert.ok(notifies < FRAMES / 10, `${notifies} notifies for ${FRAMES} frames`);
});

test("cross-language: a TS producer thread feeds the engine's RX ring; the engine answers all 20000 ARP requests", async () => {
  const N = 20_000;
  const h = new EngineHarness();
  const buffer = h.memory.buffer as SharedArrayBuffer;
  const template = eth("ff:ff:ff:ff:ff:ff", testConfig.guestMac, 0x0806,
    arpRequest(testConfig.guestMac, testConfig.guestIp4, testConfig.gatewayIp4));
  const rx = new RingView(buffer, L.RX_CTRL, L.RX_DESC_BASE, L.RX_BUF_BASE, L.RX_SLOTS, L.SLOT_BYTES);
  const tx = new RingView(buffer, L.TX_CTRL, L.TX_DESC_BASE, L.TX_BUF_BASE, L.TX_SLOTS, L.SLOT_BYTES);
  const producer = startProducer({
    buffer, ctrl: L.RX_CTRL, descBase: L.RX_DESC_BASE, bufBase: L.RX_BUF_BASE, slots: L.RX_SLOTS, slotBytes: L.SLOT_BYTES,
    mode: "frames", count: N, template,
  });
  await once(producer.worker, "online");

  const guestMac = mac(testConfig.guestMac);
  const mem = h.mem;
  const deadline = Date.now() + 60_000;
  let consumed = 0, replies = 0, runs = 0;
  while (consumed < N) {
    if (rx.waitForData(100) === 0) {
      await yieldToLoop();
      if (producer.error()) throw producer.error();
      if (Date.now() > deadline) assert.fail(`stalled after ${consumed} frames`);
      continue;
    }
    consumed += h.engine.engineRun(h.now);
    h.engine.engineReleaseRx();
    runs++;
    const m = tx.available();
    for (let i = 0; i < m; i++) {
      const e = tx.peek(i);
      const o = e.offset;
      if (e.len !== 42 || mem[o + 12] !== 0x08 || mem[o + 13] !== 0x06 || mem[o + 21] !== 2 ||
          guestMac.some((b, k) => mem[o + k] !== b)) {
        assert.fail(`TX frame ${replies + i} is not an ARP reply to the guest`);
      }
    }
    tx.release(m);
    replies += m;
  }
  const sent = await producer.result;
  await once(producer.worker, "exit").catch(() => {});

  const counters = h.counters();
  const drops = Object.entries(counters).filter(([name]) => name.startsWith("DROP_"));
  assert.equal(counters.RX_FRAMES, N);
  assert.equal(counters.ARP_REPLIES, N);
  assert.equal(counters.RX_BYTES, sent.bytes, "frame lengths (42..60 bytes) crossed the ring intact");
  assert.deepEqual(drops, []);
  assert.equal(replies, N);
  assert.equal(rx.available(), 0);
  assert.equal(h.dv.getUint32(L.RX_CTRL + L.RING_CTRL_HEAD, true), N, "RX head after many laps of the ring");
  console.log(`engine ring: ${N} ARP requests in ${runs} engine runs (${Math.ceil(N / L.RX_SLOTS)}+ ring laps); ` +
    `producer publishes ${sent.publishes}, notifies ${sent.notifies}, full-ring waits ${sent.fullWaits}`);
});
