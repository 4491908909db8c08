// stream-data.ts — deterministic test streams: chunk i (64 KiB) is a fixed pseudo-random block
// whose first 8 bytes carry i, so a lost, duplicated or reordered segment changes the hash.
import { createHash } from "node:crypto";
import type { Writable } from "node:stream";

export const CHUNK = 65536;
const base = Buffer.alloc(CHUNK);
let x = 0x12345678;
for (let i = 0; i < CHUNK; i++) {
  x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
  base[i] = x & 255;
}

/** Chunk `i` of the stream, `len` bytes (the last chunk may be short). Reuses one buffer. */
const scratch = Buffer.alloc(CHUNK);
export function chunk(i: number, len = CHUNK): Buffer {
  base.copy(scratch);
  scratch.writeBigUInt64LE(BigInt(i), 0);
  return scratch.subarray(0, len);
}

/**
 * Chunk buffers for writing a stream without a 64 KiB allocation per chunk (each a fresh region
 * the kernel faults in: it made the world's test server the busiest process of a bulk bench).
 * A buffer is given back by its write's callback, when the stream no longer holds it.
 */
export class ChunkPool {
  private readonly free: Buffer[] = [];

  /** Chunk `i` (`len` bytes) in a buffer of the pool, and the callback that gives it back. */
  take(i: number, len = CHUNK): [Buffer, () => void] {
    const b = this.free.pop() ?? Buffer.allocUnsafeSlow(CHUNK);
    base.copy(b);
    b.writeBigUInt64LE(BigInt(i), 0);
    return [b.subarray(0, len), () => { if (this.free.length < 256) this.free.push(b); }];
  }
}

/** Write the first `bytes` bytes of the stream to `w`, waiting for drain, from a pool of buffers. */
export async function writeStream(w: Writable, bytes: number, pool = new ChunkPool()): Promise<void> {
  for (let i = 0, sent = 0; sent < bytes; i++) {
    const len = Math.min(CHUNK, bytes - sent);
    const [b, done] = pool.take(i, len);
    if (!w.write(b, done)) await new Promise<void>((r) => w.once("drain", () => r()));
    sent += len;
  }
}

/** SHA-256 of the first `bytes` bytes of the stream. */
export function streamHash(bytes: number): string {
  const h = createHash("sha256");
  for (let i = 0; i * CHUNK < bytes; i++) h.update(chunk(i, Math.min(CHUNK, bytes - i * CHUNK)));
  return h.digest("hex");
}
