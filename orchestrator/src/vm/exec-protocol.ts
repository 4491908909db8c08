// exec-protocol.ts — the host's side of the exec channel to a VM's agent (native-vmm/guest/agent.c),
// carried over the virtio-serial port "moat.exec".
//
// Every message is [type u8][len u32 big-endian][len bytes of payload].
//
//   guest → host
//     READY 0x01      once, when the agent is up; payload: the guest's uptime in ms (ASCII digits)
//     STDOUT 0x02     the command's stdout bytes
//     STDERR 0x03     the command's stderr bytes
//     EXIT 0x04       u32 BE exit status (0..255, or 128+N for death by signal N); sent once the
//                     command exited and its pipes are drained; another EXEC may follow
//   host → guest
//     EXEC 0x10       u32 BE argc, u32 BE envc, argc NUL-terminated argv strings, envc
//                     NUL-terminated "NAME=value" strings, one NUL-terminated cwd ("" means /).
//                     The environment is exactly this one; argv[0] is looked up in its PATH.
//                     A command that cannot start exits 127 (not found) or 126, with a message.
//     STDIN 0x11      bytes for the command's stdin
//     STDIN_EOF 0x12  close the command's stdin once the queued bytes are written
//     SIGNAL 0x13     u32 BE signal number for the command's process group
//     POWEROFF 0x14   sync and power off (closing the host's end of the port does the same)

export const Msg = {
  READY: 0x01,
  STDOUT: 0x02,
  STDERR: 0x03,
  EXIT: 0x04,
  EXEC: 0x10,
  STDIN: 0x11,
  STDIN_EOF: 0x12,
  SIGNAL: 0x13,
  POWEROFF: 0x14,
} as const;

/** The agent refuses larger frames; STDIN is sent in pieces well below it. */
export const MAX_FRAME_BYTES = 16 << 20;
export const STDIN_CHUNK_BYTES = 64 << 10;

export function frame(type: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(5);
  head[0] = type;
  head.writeUInt32BE(payload.length, 1);
  return Buffer.concat([head, payload]);
}

export function u32Frame(type: number, value: number): Buffer {
  const p = Buffer.alloc(4);
  p.writeUInt32BE(value >>> 0);
  return frame(type, p);
}

export function execFrame(argv: string[], env: string[], cwd: string): Buffer {
  for (const s of [...argv, ...env, cwd]) {
    if (s.includes("\0")) throw new TypeError(`a NUL byte in an argument, environment entry or cwd: ${JSON.stringify(s)}`);
  }
  const counts = Buffer.alloc(8);
  counts.writeUInt32BE(argv.length, 0);
  counts.writeUInt32BE(env.length, 4);
  const payload = Buffer.concat([counts, Buffer.from([...argv, ...env, cwd].map((s) => s + "\0").join(""))]);
  if (payload.length > MAX_FRAME_BYTES) throw new RangeError(`the command line and environment take ${payload.length} bytes (at most ${MAX_FRAME_BYTES})`);
  return frame(Msg.EXEC, payload);
}

/**
 * Cuts a byte stream into frames. Bytes are kept as the chunks they came in and joined once per
 * frame (never re-copied per chunk: a guest dribbling a 16 MiB frame in small writes costs one
 * copy of it, not one per write).
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private bytes = 0;

  /** The complete frames now available; a partial one is kept for the next push. */
  push(data: Buffer): { type: number; payload: Buffer }[] {
    if (data.length) {
      this.chunks.push(data);
      this.bytes += data.length;
    }
    const frames: { type: number; payload: Buffer }[] = [];
    for (;;) {
      if (this.bytes < 5) break;
      const head = this.peek(5);
      const len = head.readUInt32BE(1);
      if (len > MAX_FRAME_BYTES) throw new RangeError(`a frame of ${len} bytes from the guest`);
      if (this.bytes < 5 + len) break;
      const whole = this.take(5 + len);
      frames.push({ type: whole[0]!, payload: whole.subarray(5) });
    }
    return frames;
  }

  /** The first `n` bytes (n <= this.bytes), without consuming them. */
  private peek(n: number): Buffer {
    if (this.chunks[0]!.length >= n) return this.chunks[0]!;
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    for (const c of this.chunks) {
      at += c.copy(out, at, 0, Math.min(c.length, n - at));
      if (at === n) break;
    }
    return out;
  }

  /** Consume the first `n` bytes (n <= this.bytes) as one buffer. */
  private take(n: number): Buffer {
    this.bytes -= n;
    const first = this.chunks[0]!;
    if (first.length >= n) { // the common case: the frame is inside one chunk
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length, n - at);
      c.copy(out, at, 0, k);
      at += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    return out;
  }
}
