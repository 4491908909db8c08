// checksum.test.ts — the engine's SIMD Internet checksum (engine-wasm/assembly/wire/checksum.ts)
// against the plain RFC 1071 reference in test/helpers/frames.ts.
//
// Test bytes are written into the engine's memory at layout.BENCH_BASE (a 1 MiB scratch area);
// the largest inputs run past that area into the unused tail of the engine's fixed-size memory,
// which is checked to be large enough before use.
import { test } from "node:test";
import assert from "node:assert/strict";
import { EngineHarness } from "../helpers/engine-harness.js";
import { refChecksum, ipv4 } from "../helpers/frames.js";
import { layout } from "../../orchestrator/src/engine/layout.js";
import { prng } from "../helpers/prng.js";

const h = new EngineHarness();


function randomBytes(rand: () => number, len: number): Uint8Array {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = (rand() * 256) | 0;
  return b;
}

/** The engine's checksum of `bytes`, placed at BENCH_BASE + `offset`. */
function engineChecksum(bytes: Uint8Array, offset = 0): number {
  const p = layout.BENCH_BASE + offset;
  assert.ok(p + bytes.length <= h.mem.length, `test buffer of ${bytes.length} bytes does not fit in engine memory`);
  h.mem.set(bytes, p);
  return h.engine.internetChecksum(p, bytes.length);
}

const hex = (v: number) => `0x${v.toString(16).padStart(4, "0")}`;

const LARGE_LENGTHS = [1499, 1500, 9000, 16383, 16384, 16385, 16384 + 63, 16384 + 64, 65535, 65536, 131072, 2 * 1024 * 1024];

test("checksum equals the reference on random buffers of every length 0..200", () => {
  const rand = prng(1);
  for (let len = 0; len <= 200; len++) {
    for (let rep = 0; rep < 4; rep++) {
      const b = randomBytes(rand, len);
      assert.equal(hex(engineChecksum(b)), hex(refChecksum(b)), `length ${len}, repetition ${rep}`);
    }
  }
});

test("checksum equals the reference on random buffers of large lengths (1499 .. 2 MiB)", () => {
  const rand = prng(2);
  for (const len of LARGE_LENGTHS) {
    const b = randomBytes(rand, len);
    assert.equal(hex(engineChecksum(b)), hex(refChecksum(b)), `length ${len}`);
  }
});

test("checksum equals the reference at odd (unaligned) start offsets", () => {
  const rand = prng(3);
  const lengths = [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 63, 64, 65, 127, 128, 129, 200, 1499, 1500, 9000, 65535, 65536];
  for (const offset of [1, 3, 5, 7, 9, 13, 15, 17, 63]) {
    for (const len of lengths) {
      const b = randomBytes(rand, len);
      assert.equal(hex(engineChecksum(b, offset)), hex(refChecksum(b)), `offset ${offset}, length ${len}`);
    }
  }
});

test("checksum of all-0xff buffers equals the reference (0x0000 for even, 0x00ff for odd lengths)", () => {
  // Every word is 0xffff: the widest possible lane sums, where an accumulator overflow would show.
  for (const len of [1, 2, 3, 4, 63, 64, 65, 127, 128, 199, 200, ...LARGE_LENGTHS]) {
    for (const offset of [0, 1]) {
      const b = new Uint8Array(len).fill(0xff);
      const expected = len % 2 === 0 ? 0x0000 : 0x00ff;
      assert.equal(hex(refChecksum(b)), hex(expected), `reference, length ${len}`);
      assert.equal(hex(engineChecksum(b, offset)), hex(expected), `length ${len}, offset ${offset}`);
    }
  }
});

test("checksum of all-zero buffers (and the empty buffer) is 0xffff", () => {
  for (const len of [0, 1, 2, 64, 65, 1500, 65536]) {
    assert.equal(hex(engineChecksum(new Uint8Array(len))), "0xffff", `length ${len}`);
  }
});

test("checksum is independent of the bytes that follow the buffer", () => {
  // Guards the tail loops (8-byte, 2-byte, odd byte) against reading past `len`.
  const rand = prng(4);
  for (let len = 0; len <= 80; len++) {
    const b = randomBytes(rand, len);
    const p = layout.BENCH_BASE + 5;
    h.mem.set(b, p);
    h.mem.fill(0x00, p + len, p + len + 32);
    const a = h.engine.internetChecksum(p, len);
    h.mem.fill(0xa5, p + len, p + len + 32);
    assert.equal(hex(h.engine.internetChecksum(p, len)), hex(a), `length ${len}`);
    assert.equal(hex(a), hex(refChecksum(b)), `length ${len}`);
  }
});

test("a buffer followed by its own checksum verifies to 0", () => {
  const rand = prng(5);
  for (const len of [0, 2, 20, 64, 1500, 9000, 65534]) {
    const b = randomBytes(rand, len + 2);
    b[len] = 0;
    b[len + 1] = 0;
    const c = refChecksum(b);
    b[len] = c >> 8;
    b[len + 1] = c & 255;
    assert.equal(hex(engineChecksum(b, 3)), "0x0000", `length ${len}`);
  }
});

test("verifying a correct IPv4 header (with and without options) yields 0", () => {
  const plain = Uint8Array.from(ipv4("172.30.0.2", "198.51.100.7", 17, []).slice(0, 20));
  assert.equal(hex(engineChecksum(plain)), "0x0000");
  assert.equal(hex(engineChecksum(plain, 1)), "0x0000", "unaligned");
  const withOptions = Uint8Array.from(ipv4("172.30.0.2", "198.51.100.7", 6, [], { options: [0x94, 0x04, 0, 0, 1, 1, 1, 0] }).slice(0, 28));
  assert.equal(withOptions[0], 0x47);
  assert.equal(hex(engineChecksum(withOptions)), "0x0000");
});

test("verifying an IPv4 header with a corrupted checksum does not yield 0", () => {
  const bad = Uint8Array.from(ipv4("172.30.0.2", "198.51.100.7", 17, [], { badChecksum: true }).slice(0, 20));
  assert.notEqual(engineChecksum(bad), 0);
  assert.equal(hex(engineChecksum(bad)), hex(refChecksum(bad)));
});
