// vm-exec-protocol.test.ts — the host's reader of what a VM guest's exec agent sends. The guest is
// untrusted: any cut of the byte stream must give the same frames, an oversized length must be
// refused before anything is buffered, and a large frame dribbled in small writes must cost one
// copy, not one per write (a guest could otherwise stall the host's event loop for seconds).
import { test } from "node:test";
import assert from "node:assert/strict";
import { FrameDecoder, frame, Msg, MAX_FRAME_BYTES } from "../../orchestrator/src/vm/exec-protocol.js";
import { prng } from "../helpers/prng.js";

test("frames come out whole however the stream is cut", () => {
  const rand = prng(7);
  const sent = Array.from({ length: 200 }, (_, i) => frame(i % 2 ? Msg.STDOUT : Msg.STDERR, Buffer.alloc(Math.floor(rand() * 3000), i & 255)));
  const stream = Buffer.concat(sent);
  for (const maxCut of [1, 7, 4096, 100000]) {
    const d = new FrameDecoder();
    const got: { type: number; payload: Buffer }[] = [];
    for (let at = 0; at < stream.length;) {
      const n = 1 + Math.floor(rand() * maxCut);
      got.push(...d.push(stream.subarray(at, at + n)));
      at += n;
    }
    assert.equal(got.length, sent.length, `cuts up to ${maxCut}`);
    got.forEach((f, i) => {
      assert.equal(f.type, sent[i]![0], `frame ${i}'s type`);
      assert.ok(f.payload.equals(sent[i]!.subarray(5)), `frame ${i}'s payload`);
    });
  }
});

test("a length beyond the limit is refused at once", () => {
  const head = Buffer.alloc(5);
  head[0] = Msg.STDOUT;
  head.writeUInt32BE(MAX_FRAME_BYTES + 1, 1);
  assert.throws(() => new FrameDecoder().push(head), /a frame of \d+ bytes/);
});

test("a 16 MiB frame in 4 KiB writes is read in linear time", () => {
  const big = frame(Msg.STDOUT, Buffer.alloc(MAX_FRAME_BYTES - 16, 0x61));
  const d = new FrameDecoder();
  const start = performance.now();
  let frames = 0;
  for (let at = 0; at < big.length; at += 4096) frames += d.push(big.subarray(at, at + 4096)).length;
  const ms = performance.now() - start;
  assert.equal(frames, 1);
  // Quadratic re-copying took 6.9 s here; linear takes tens of milliseconds.
  assert.ok(ms < 1500, `${ms.toFixed(0)} ms`);
});
