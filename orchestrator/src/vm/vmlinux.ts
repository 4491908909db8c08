// vmlinux.ts — the uncompressed kernel (ELF vmlinux) taken out of a bzImage, so QEMU can boot it
// through its PVH entry point and the guest skips decompressing itself (slow under TCG).
//
// A bzImage (x86 boot protocol >= 2.08) says where its compressed payload is: payload_offset and
// payload_length at 0x248/0x24c of the setup header, counted from the protected-mode code, which
// starts after (setup_sects + 1) * 512 bytes. The payload's magic tells the compressor; the
// kernel appends the uncompressed size as 4 little-endian bytes. gzip is undone by node's zlib,
// LZ4 (Debian's choice for 6.1) by the small legacy-frame decoder here, xz and zstd by their
// tools when installed. The result is usable only if it is an ELF carrying the Xen PVH entry note
// (XEN_ELFNOTE_PHYS32_ENTRY), which QEMU needs to boot an ELF kernel on pc/q35.
import { execFileSync } from "node:child_process";
import { gunzipSync } from "node:zlib";
import { findInPath } from "../sandbox/host-checks.js";

/** The ELF vmlinux inside `bzImage`, or a reason why it cannot be used (then boot the bzImage). */
export function extractVmlinux(bzImage: Buffer): { vmlinux: Buffer } | { reason: string } {
  if (bzImage.length < 0x260 || bzImage.toString("latin1", 0x202, 0x206) !== "HdrS") return { reason: "not a bzImage" };
  if (bzImage.readUInt16LE(0x206) < 0x208) return { reason: "boot protocol older than 2.08" };
  const setupSects = bzImage[0x1f1] || 4;
  const start = (setupSects + 1) * 512 + bzImage.readUInt32LE(0x248);
  const payload = bzImage.subarray(start, start + bzImage.readUInt32LE(0x24c));
  const size = payload.readUInt32LE(payload.length - 4);
  let vmlinux: Buffer;
  try {
    if (payload[0] === 0x1f && payload[1] === 0x8b) vmlinux = gunzipSync(payload, { finishFlush: 2 /* Z_SYNC_FLUSH: ignore the appended size */ });
    else if (payload.readUInt32LE(0) === LZ4_LEGACY_MAGIC) vmlinux = lz4Legacy(payload, size);
    else if (payload.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) vmlinux = viaTool("xz", ["-dc", "--single-stream"], payload);
    else if (payload.readUInt32LE(0) === 0xfd2fb528) vmlinux = viaTool("zstd", ["-dc"], payload.subarray(0, payload.length - 4));
    else return { reason: `unsupported kernel compression (magic ${payload.subarray(0, 4).toString("hex")})` };
  } catch (err) {
    return { reason: `decompressing the kernel failed: ${(err as Error).message}` };
  }
  if (!hasPvhNote(vmlinux)) return { reason: "the kernel has no PVH entry note" };
  return { vmlinux };
}

function viaTool(tool: string, args: string[], input: Buffer): Buffer {
  const path = findInPath(tool);
  if (!path) throw new Error(`${tool} is not installed`);
  return execFileSync(path, args, { input, maxBuffer: 1 << 30, stdio: ["pipe", "pipe", "ignore"] });
}

const LZ4_LEGACY_MAGIC = 0x184c2102;

/** LZ4 legacy frame (`lz4 -l`): the magic, then blocks of [u32 LE compressed size][LZ4 block]. */
function lz4Legacy(src: Buffer, size: number): Buffer {
  const dst = Buffer.alloc(size);
  let sp = 4;
  let dp = 0;
  while (src.length - sp > 4) { // the last 4 bytes are the kernel's appended size
    const blockSize = src.readUInt32LE(sp);
    sp += 4;
    if (blockSize === LZ4_LEGACY_MAGIC) continue; // concatenated frames
    if (sp + blockSize > src.length) throw new Error("truncated LZ4 block");
    dp = lz4Block(src, sp, sp + blockSize, dst, dp);
    sp += blockSize;
  }
  if (dp !== size) throw new Error(`LZ4 gave ${dp} bytes, the kernel says ${size}`);
  return dst;
}

/** One LZ4 block: sequences of [token][literal length+][literals][offset u16 LE][match length+]. */
function lz4Block(src: Buffer, sp: number, end: number, dst: Buffer, dp: number): number {
  for (;;) {
    const token = src[sp++]!;
    let literals = token >> 4;
    if (literals === 15) for (let b = 255; b === 255;) literals += b = src[sp++]!;
    src.copy(dst, dp, sp, sp + literals);
    sp += literals;
    dp += literals;
    if (sp >= end) return dp; // the last sequence has literals only
    const offset = src[sp]! | (src[sp + 1]! << 8);
    sp += 2;
    let match = token & 15;
    if (match === 15) for (let b = 255; b === 255;) match += b = src[sp++]!;
    match += 4;
    if (offset === 0 || offset > dp || dp + match > dst.length) throw new Error("corrupt LZ4 block");
    if (offset >= match) dst.copy(dst, dp, dp - offset, dp - offset + match);
    else for (let i = 0; i < match; i++) dst[dp + i] = dst[dp - offset + i]!; // overlapping: repeats
    dp += match;
  }
}

/** Whether an ELF64 image has a PT_NOTE with the "Xen" note type 18 (XEN_ELFNOTE_PHYS32_ENTRY). */
function hasPvhNote(elf: Buffer): boolean {
  for (const ph of elfProgramHeaders(elf)) {
    if (ph.type !== 4 /* PT_NOTE */) continue;
    let p = ph.offset;
    while (p + 12 <= ph.offset + ph.size) {
      const namesz = elf.readUInt32LE(p);
      const descsz = elf.readUInt32LE(p + 4);
      const type = elf.readUInt32LE(p + 8);
      const name = elf.toString("latin1", p + 12, p + 12 + namesz).replace(/\0+$/, "");
      if (name === "Xen" && type === 18) return true;
      p += 12 + align4(namesz) + align4(descsz);
    }
  }
  return false;
}

/** The program headers of a little-endian ELF64 file (none if it is not one): type, file offset, file size. */
export function* elfProgramHeaders(elf: Buffer): Generator<{ type: number; offset: number; size: number }> {
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2 || elf[5] !== 1) return;
  const phoff = Number(elf.readBigUInt64LE(0x20));
  const phentsize = elf.readUInt16LE(0x36);
  for (let i = 0; i < elf.readUInt16LE(0x38); i++) {
    const ph = phoff + i * phentsize;
    yield { type: elf.readUInt32LE(ph), offset: Number(elf.readBigUInt64LE(ph + 8)), size: Number(elf.readBigUInt64LE(ph + 32)) };
  }
}

function align4(n: number): number {
  return (n + 3) & ~3;
}
