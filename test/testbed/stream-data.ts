// stream-data.ts — deterministic test streams: chunk i (64 KiB) is a fixed pseudo-random block
// whose first 8 bytes carry i, so a lost, duplicated or reordered segment changes the hash.
import { createHash } from "node:crypto";

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

/** SHA-256 of the first `bytes` bytes of the stream. */
export function streamHash(bytes: number): string {
  const h = createHash("sha256");
  for (let i = 0; i * CHUNK < bytes; i++) h.update(chunk(i, Math.min(CHUNK, bytes - i * CHUNK)));
  return h.digest("hex");
}
