// http2-response-filter.ts — the server's side of an intercepted HTTP/2 connection, scrubbed of
// secret values on its way to the guest (RFC 9113 framing, RFC 7541 HPACK): what response-filter.ts
// does for HTTP/1.1.
//
// Theory of operation
// Frames are parsed as they stream, never held whole (but for the small ones):
//   HEADERS, PUSH_PROMISE, CONTINUATION  the header block (at most MAX_BLOCK) is decoded with the
//           server's HPACK state (hpack.js keeps the dynamic table the server's encoder builds,
//           table size updates included), each value scrubbed, and encoded again as literals
//           never indexed: the guest's decoder never gains a table entry, so it stays in step
//           without our tracking it, and our re-encoding needs no table either. Padding is
//           dropped (header frames are not flow-controlled), priority fields kept.
//   DATA    the payload goes through a per-stream ValueScanner in sameLength mode as it arrives:
//           an occurrence becomes a replacement of exactly its length. The scanner holds back a
//           tail that could begin an occurrence (at most the longest form − 1 bytes per stream),
//           released with the stream's next DATA, or at END_STREAM, trailers or RST_STREAM. What
//           is released goes out at once as DATA frames of at most 16384 bytes (the smallest
//           SETTINGS_MAX_FRAME_SIZE a client can have), so a 16 MiB frame streams through in
//           bounded memory. Flow control counts whole payloads, padding included: the padding of
//           an input frame is re-emitted as the padding of an output frame, so the guest receives
//           (and acknowledges with WINDOW_UPDATE) exactly the bytes the server sent, less what is
//           held back at that moment; nothing is ever added or lost.
//   coded   a response whose Content-Encoding is gzip, deflate or br: its DATA is decoded on the
//           side and scanned (bounded like response-filter.ts's), and passed on unchanged; the
//           coded bytes are held while the decoded text ends in what could begin a value. A value
//           found there cannot be replaced inside the coding: an error (the proxy closes) before
//           any byte that carries it leaves. Any other Content-Encoding is an error.
//   GOAWAY  its debug data (which a client may show) is scrubbed.
//   SETTINGS, PING, WINDOW_UPDATE, PRIORITY, RST_STREAM  pass (at most MAX_SMALL bytes).
//   other   extension frames (ALTSVC, ORIGIN, ...) are dropped: a receiver must ignore unknown
//           types, and their payload (which might carry a value) is never looked at.
// Anything malformed is an error: the proxy closes the connection.
import hpack from "hpack.js";
import type { Secret } from "./secrets.js";
import { SecretValues, ValueScanner, type ValueFound } from "./value-scanner.js";
import { decoderFor, MAX_DECODED, MAX_EXPANSION, type ScrubResult, type SyncDecoder } from "./response-filter.js";
import { encodeNeverIndexed, frameHeader } from "./h2-wire.js";

export const MAX_BLOCK = 65536;
/** The largest header list judged, decoded (curl takes 300 KiB of response headers). */
export const MAX_HEADER_LIST = 1 << 20;
const MAX_SMALL = 65536;
/** Coded DATA held while its decoded text ends in what could begin a value. */
const MAX_CODED_HELD = 1 << 18;
const OUT_FRAME = 16384;
const T_DATA = 0, T_HEADERS = 1, T_PRIORITY = 2, T_RST = 3, T_SETTINGS = 4, T_PUSH = 5, T_PING = 6, T_GOAWAY = 7, T_WINDOW = 8, T_CONTINUATION = 9;
const F_END_STREAM = 0x1, F_END_HEADERS = 0x4, F_PADDED = 0x8, F_PRIORITY = 0x20;

type Phase = "header" | "pad-length" | "data" | "padding" | "collect" | "skip";

/** A response body in a Content-Encoding: decoded on the side to be scanned, passed as it came. */
interface Coded {
  coding: string;
  dec: SyncDecoder | undefined;
  start: Buffer; // the first bytes, until there are two (deflate: zlib or raw)
  queue: Buffer[]; // coded bytes not yet forwarded: their decoded text ends in a possible value's start
  queued: number;
  detect: ValueScanner;
  inTotal: number;
  outTotal: number;
}

export interface Http2ScrubOptions {
  /** The largest HPACK table the server's encoder may use: the client's SETTINGS_HEADER_TABLE_SIZE (default 65536). */
  maxTableSize?: number;
}

export class Http2ResponseScrubber {
  private readonly values: SecretValues;
  private readonly whole: ValueScanner;
  private readonly streams = new Map<number, ValueScanner>();
  private readonly coded = new Map<number, Coded>();
  private readonly decoder;
  private phase: Phase = "header";
  private head: Buffer = Buffer.alloc(0);
  private len = 0;
  private type = 0;
  private flags = 0;
  private stream = 0;
  private left = 0; // payload bytes of the current frame still to come (data: the data part)
  private pad = 0;
  private collected: Buffer[] = [];
  private collectedLen = 0;
  // an open header block (HEADERS or PUSH_PROMISE without END_HEADERS)
  private block: { stream: number; type: number; flags: number; prefix: Buffer; parts: Buffer[]; size: number } | undefined;
  private failed: string | undefined;

  constructor(secrets: readonly Secret[], options: Http2ScrubOptions = {}) {
    this.values = SecretValues.of(secrets);
    this.whole = new ValueScanner(this.values);
    this.decoder = hpack.decompressor.create({ table: { maxSize: options.maxTableSize ?? 65536 } });
    // The server's encoder starts at the protocol's default; its size updates arrive in its blocks.
    (this.decoder as unknown as { updateTableSize(n: number): void }).updateTableSize(4096);
  }

  push(chunk: Buffer): ScrubResult {
    const out: Buffer[] = [];
    const scrubbed: ValueFound[] = [];
    if (this.failed) return { out, scrubbed, error: this.failed };
    try {
      this.feed(chunk, out, scrubbed);
    } catch (e) {
      this.failed = e instanceof H2Error ? e.message : `the server's HTTP/2 stream could not be scanned: ${(e as Error).message}`;
      return { out, scrubbed, error: this.failed };
    }
    return { out, scrubbed };
  }

  /**
   * The server has sent nothing for a while (call it after ~50 ms of quiet): what streams hold
   * back because it could begin a value goes out now as DATA (a streaming response, gRPC, is not
   * stalled on it). See ValueScanner.releaseHeld.
   */
  /** Whether a stream's bytes are held back (idle() would release some). */
  get holding(): boolean {
    if (this.failed) return false;
    for (const sc of this.streams.values()) if (sc.held) return true;
    return false;
  }

  idle(): ScrubResult {
    const out: Buffer[] = [];
    const scrubbed: ValueFound[] = [];
    if (this.failed) return { out, scrubbed };
    for (const [id, sc] of this.streams) if (sc.held) out.push(...dataFrames(id, sc.releaseHeld(scrubbed), 0, -1));
    return { out, scrubbed };
  }

  /** The server closed: what streams hold back goes, if we are between frames. */
  end(): Buffer[] {
    if (this.failed || this.phase !== "header" || this.head.length) return [];
    const out: Buffer[] = [];
    const found: ValueFound[] = [];
    for (const [id, sc] of this.streams) out.push(...dataFrames(id, sc.flush(found), 0, -1));
    this.streams.clear();
    return out;
  }

  private feed(chunk: Buffer, out: Buffer[], found: ValueFound[]): void {
    let b = chunk;
    while (b.length || (this.phase !== "header" && this.left === 0 && this.phase !== "pad-length")) {
      switch (this.phase) {
        case "header": {
          const need = 9 - this.head.length;
          this.head = this.head.length ? Buffer.concat([this.head, b.subarray(0, need)]) : b.subarray(0, need);
          b = b.subarray(need);
          if (this.head.length < 9) return;
          this.startFrame(Buffer.from(this.head));
          this.head = Buffer.alloc(0);
          continue;
        }
        case "pad-length": {
          this.pad = b[0]!;
          b = b.subarray(1);
          if (this.pad > this.len - 1) throw new H2Error(`DATA on stream ${this.stream} with padding longer than the frame`);
          this.left = this.len - 1 - this.pad;
          this.phase = "data";
          continue;
        }
        case "data": {
          const n = Math.min(this.left, b.length);
          if (n) {
            this.left -= n;
            const coded = this.coded.get(this.stream);
            if (coded) this.codedData(coded, this.stream, b.subarray(0, n), false, out, found);
            else out.push(...dataFrames(this.stream, this.scanner(this.stream).push(b.subarray(0, n), found), 0, -1));
            b = b.subarray(n);
          }
          if (this.left === 0) {
            if (this.flags & F_PADDED) { this.phase = "padding"; this.left = this.pad; continue; }
            this.endData(out, found);
          }
          continue;
        }
        case "padding": {
          const n = Math.min(this.left, b.length);
          this.left -= n;
          b = b.subarray(n);
          if (this.left === 0) this.endData(out, found);
          continue;
        }
        case "skip": {
          const n = Math.min(this.left, b.length);
          this.left -= n;
          b = b.subarray(n);
          if (this.left === 0) this.phase = "header";
          continue;
        }
        case "collect": {
          const n = Math.min(this.left, b.length);
          if (n) {
            this.collected.push(b.subarray(0, n));
            this.collectedLen += n;
            this.left -= n;
            b = b.subarray(n);
          }
          if (this.left === 0) {
            const payload = this.collected.length === 1 ? this.collected[0]! : Buffer.concat(this.collected);
            this.collected = [];
            this.collectedLen = 0;
            this.phase = "header";
            this.frame(payload, out, found);
          }
          continue;
        }
      }
    }
  }

  private startFrame(h: Buffer): void {
    this.len = h.readUIntBE(0, 3);
    this.type = h[3]!;
    this.flags = h[4]!;
    this.stream = h.readUInt32BE(5) & 0x7fffffff;
    this.left = this.len;
    if (this.block && this.type !== T_CONTINUATION) throw new H2Error(`a ${frameName(this.type)} frame inside the header block of stream ${this.block.stream}`);
    if (this.type === T_DATA) {
      if (this.stream === 0) throw new H2Error("DATA on stream 0");
      this.phase = this.flags & F_PADDED ? "pad-length" : "data";
      if (this.flags & F_PADDED && this.len === 0) throw new H2Error(`a padded DATA frame on stream ${this.stream} with no room for its pad length`);
      return;
    }
    if (this.type > T_CONTINUATION) {
      this.phase = "skip"; // an extension frame: ignored, as a receiver must (and never forwarded)
      return;
    }
    const cap = this.type === T_HEADERS || this.type === T_PUSH || this.type === T_CONTINUATION ? MAX_BLOCK + 261 : MAX_SMALL;
    if (this.len > cap) throw new H2Error(`a ${frameName(this.type)} frame of ${this.len} bytes (at most ${cap})`);
    this.phase = "collect";
  }

  private scanner(stream: number): ValueScanner {
    let sc = this.streams.get(stream);
    if (!sc) this.streams.set(stream, (sc = new ValueScanner(this.values, true)));
    return sc;
  }

  /** The end of a DATA frame: its padding re-emitted (flow control), END_STREAM releasing the carry. */
  private endData(out: Buffer[], found: ValueFound[]): void {
    this.phase = "header";
    const es = (this.flags & F_END_STREAM) !== 0;
    const padded = (this.flags & F_PADDED) !== 0;
    let tail: Buffer[] = [];
    if (es) this.endCoded(this.stream, out, found);
    if (es) {
      const sc = this.streams.get(this.stream);
      if (sc) { tail = sc.flush(found); this.streams.delete(this.stream); }
    }
    if (padded || es) out.push(...dataFrames(this.stream, tail, es ? F_END_STREAM : 0, padded ? this.pad : -1));
  }

  /**
   * Coded DATA: decoded on the side and scanned; the coded bytes go on unchanged once their
   * decoded text is known not to end inside a value. A value found in it cannot be replaced inside
   * the coding: the connection is refused (an error) before any of the bytes that carry it leave.
   */
  private codedData(c: Coded, stream: number, bytes: Buffer, final: boolean, out: Buffer[], found: ValueFound[]): void {
    if (bytes.length) { c.queue.push(Buffer.from(bytes)); c.queued += bytes.length; }
    let input = bytes;
    if (!c.dec) {
      c.start = c.start.length ? Buffer.concat([c.start, bytes]) : Buffer.from(bytes);
      if (c.start.length < 2 && !final) return;
      if (!c.start.length) { c.queue = []; c.queued = 0; return; } // an empty body: nothing was coded
      c.dec = decoderFor(c.coding, c.start)!;
      input = c.start;
      c.start = Buffer.alloc(0);
    }
    const hits: ValueFound[] = [];
    try {
      c.dec.write(input, final, (o) => {
        c.outTotal += o.length;
        if (c.outTotal > MAX_DECODED || c.outTotal > (c.inTotal + input.length) * MAX_EXPANSION + (1 << 20)) {
          throw new H2Error(`a ${c.coding} response body on stream ${stream} expanding more than ${MAX_EXPANSION}× (or beyond ${MAX_DECODED >> 20} MiB): refused as a compression bomb`);
        }
        c.detect.push(o, hits);
      });
      if (final) c.detect.flush(hits);
    } catch (e) {
      if (e instanceof H2Error) throw e;
      throw new H2Error(`a ${c.coding} response body on stream ${stream} that does not decode: ${(e as Error).message}`);
    }
    c.inTotal += input.length;
    if (hits.length) {
      found.push(...hits);
      throw new H2Error(`the value of secret ${hits[0]!.secret.env} (${hits[0]!.form}) in a ${c.coding}-coded response body on stream ${stream}: it cannot be replaced inside the coding, so the connection is closed`);
    }
    if (final || c.detect.held === 0) {
      out.push(...dataFrames(stream, c.queue, 0, -1));
      c.queue = [];
      c.queued = 0;
    } else if (c.queued > MAX_CODED_HELD) {
      throw new H2Error(`over ${MAX_CODED_HELD} bytes of a ${c.coding} response body on stream ${stream} held waiting to tell whether a value begins`);
    }
  }

  /** A coded body's end: the last of it decoded and judged, and what was held let go. */
  private endCoded(stream: number, out: Buffer[], found: ValueFound[]): void {
    const c = this.coded.get(stream);
    if (!c) return;
    this.coded.delete(stream);
    this.codedData(c, stream, Buffer.alloc(0), true, out, found);
  }

  /** What a stream holds back, released (before its trailers or its reset). */
  private release(stream: number, out: Buffer[], found: ValueFound[]): void {
    this.endCoded(stream, out, found);
    const sc = this.streams.get(stream);
    if (!sc) return;
    this.streams.delete(stream);
    out.push(...dataFrames(stream, sc.flush(found), 0, -1));
  }

  /** A whole non-DATA frame. */
  private frame(p: Buffer, out: Buffer[], found: ValueFound[]): void {
    const { type, flags, stream } = this;
    switch (type) {
      case T_HEADERS:
      case T_PUSH: {
        if (stream === 0) throw new H2Error(`${frameName(type)} on stream 0`);
        let q = p;
        let pad = 0;
        if (flags & F_PADDED) {
          if (!q.length) throw new H2Error(`a padded ${frameName(type)} frame with no pad length`);
          pad = q[0]!;
          q = q.subarray(1);
        }
        const prefixLen = type === T_PUSH ? 4 : flags & F_PRIORITY ? 5 : 0;
        if (q.length < prefixLen + pad) throw new H2Error(`a ${frameName(type)} frame on stream ${stream} shorter than its padding and fields`);
        const prefix = Buffer.from(q.subarray(0, prefixLen));
        q = q.subarray(prefixLen, q.length - pad);
        this.block = { stream, type, flags, prefix, parts: [Buffer.from(q)], size: q.length };
        break;
      }
      case T_CONTINUATION: {
        if (!this.block) throw new H2Error(`a CONTINUATION on stream ${stream} without HEADERS`);
        if (stream !== this.block.stream) throw new H2Error(`a CONTINUATION on stream ${stream} inside the header block of stream ${this.block.stream}`);
        // Each frame's header counts: empty CONTINUATIONs would otherwise be gathered without end.
        if (p.length) this.block.parts.push(Buffer.from(p));
        this.block.size += 9 + p.length;
        break;
      }
      case T_GOAWAY: {
        if (p.length < 8) throw new H2Error("a GOAWAY shorter than 8 bytes");
        const debug = this.whole.scrub(p.subarray(8), found).subarray(0, OUT_FRAME - 8);
        out.push(frameHeader(8 + debug.length, T_GOAWAY, flags, 0), p.subarray(0, 8), debug);
        return;
      }
      case T_RST: {
        // Reset: a coded body's held bytes are not judged further; zeros stand in for them (flow control).
        const c = this.coded.get(stream);
        if (c) { this.coded.delete(stream); if (c.queued) out.push(...dataFrames(stream, [Buffer.alloc(c.queued)], 0, -1)); }
        this.release(stream, out, found);
        out.push(frameHeader(p.length, type, flags, stream), p);
        return;
      }
      case T_SETTINGS:
      case T_PING:
      case T_WINDOW:
      case T_PRIORITY:
        out.push(frameHeader(p.length, type, flags, stream), p);
        return;
    }
    const blk = this.block!;
    if (blk.size > MAX_BLOCK) throw new H2Error(`a header block over ${MAX_BLOCK} bytes on stream ${blk.stream}`);
    if (!(flags & F_END_HEADERS)) return;
    this.block = undefined;
    const headers = this.decode(Buffer.concat(blk.parts), blk.stream);
    for (const h of headers) {
      h.name = this.whole.scrub(Buffer.from(h.name, "latin1"), found).toString("latin1");
      h.value = this.whole.scrub(Buffer.from(h.value, "latin1"), found).toString("latin1");
    }
    // A HEADERS after DATA ends the body (trailers): what the stream held back goes first.
    if (blk.type === T_HEADERS) this.release(blk.stream, out, found);
    // A response head: a coded body is decoded on the side to be judged.
    if (blk.type === T_HEADERS && headers.some((h) => h.name === ":status")) {
      const codings = headers.filter((h) => h.name === "content-encoding").flatMap((h) => h.value.split(",")).map((v) => v.trim().toLowerCase()).filter((v) => v && v !== "identity");
      if (codings.length > 1 || (codings.length === 1 && !["gzip", "x-gzip", "deflate", "br"].includes(codings[0]!))) {
        throw new H2Error(`a response body on stream ${blk.stream} in Content-Encoding ${JSON.stringify(this.whole.scrub(Buffer.from(codings.join(", "), "latin1"), []).toString("latin1").slice(0, 80))}, which cannot be scanned for secret values`);
      }
      if (codings.length === 1) this.coded.set(blk.stream, { coding: codings[0]!, dec: undefined, start: Buffer.alloc(0), queue: [], queued: 0, detect: new ValueScanner(this.values), inTotal: 0, outTotal: 0 });
    }
    const encoded = encodeNeverIndexed(headers);
    out.push(...headerFrames(blk.type, blk.stream, blk.prefix, encoded, blk.type === T_HEADERS ? (blk.flags & (F_END_STREAM | F_PRIORITY)) : 0));
  }

  private decode(block: Buffer, stream: number): { name: string; value: string }[] {
    const headers: { name: string; value: string }[] = [];
    try {
      this.decoder.write(block);
      this.decoder.execute();
      // One-byte references to a table entry expand without bound: the fields are counted as
      // they are read (RFC 7541 §4.1 sizes) and held to MAX_HEADER_LIST, more than clients take.
      let size = 0;
      for (let h = this.decoder.read(); h; h = this.decoder.read()) {
        const name = String(h.name), value = String(h.value);
        size += name.length + value.length + 32;
        if (size > MAX_HEADER_LIST) throw new H2Error(`a header list over ${MAX_HEADER_LIST} bytes once decoded on stream ${stream}`);
        headers.push({ name, value });
      }
    } catch (e) {
      if (e instanceof H2Error) throw e;
      throw new H2Error(`the server's header block on stream ${stream} does not decode (HPACK): ${(e as Error).message}`);
    }
    return headers;
  }
}

class H2Error extends Error {}

function frameName(t: number): string {
  return ["DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS", "PUSH_PROMISE", "PING", "GOAWAY", "WINDOW_UPDATE", "CONTINUATION"][t] ?? `type-${t}`;
}

/**
 * DATA frames of at most OUT_FRAME bytes carrying `pieces`; the last one carries `flags` and, when
 * pad >= 0, is PADDED with `pad` bytes (1 + pad bytes of flow control). No pieces and no flags or
 * padding: no frame.
 */
function dataFrames(stream: number, pieces: Buffer[], flags: number, pad: number): Buffer[] {
  const total = pieces.reduce((n, p) => n + p.length, 0);
  if (!total && !flags && pad < 0) return [];
  const out: Buffer[] = [];
  const lastRoom = OUT_FRAME - (pad >= 0 ? 1 + pad : 0);
  let left = total;
  let pi = 0;
  let po = 0;
  const take = (n: number) => {
    const got: Buffer[] = [];
    while (n > 0) {
      const p = pieces[pi]!;
      const k = Math.min(n, p.length - po);
      got.push(po === 0 && k === p.length ? p : p.subarray(po, po + k));
      po += k;
      n -= k;
      if (po === p.length) { pi++; po = 0; }
    }
    return got;
  };
  while (left > lastRoom) {
    const k = Math.min(OUT_FRAME, left);
    out.push(frameHeader(k, T_DATA, 0, stream), ...take(k));
    left -= k;
  }
  if (pad < 0 && !flags && left === 0) return out;
  if (pad >= 0) {
    out.push(frameHeader(1 + left + pad, T_DATA, flags | F_PADDED, stream), Buffer.from([pad]), ...take(left), Buffer.alloc(pad));
  } else {
    out.push(frameHeader(left, T_DATA, flags, stream), ...take(left));
  }
  return out;
}

/** HEADERS or PUSH_PROMISE (+ CONTINUATION) frames carrying `block` after `prefix` (priority / promised stream). */
function headerFrames(type: number, stream: number, prefix: Buffer, block: Buffer, flags: number): Buffer[] {
  const out: Buffer[] = [];
  const firstRoom = OUT_FRAME - prefix.length;
  let off = 0;
  for (let first = true; first || off < block.length; first = false) {
    const room = first ? firstRoom : OUT_FRAME;
    const piece = block.subarray(off, off + room);
    off += piece.length;
    const last = off >= block.length;
    const f = (first ? flags : 0) | (last ? F_END_HEADERS : 0);
    if (first) out.push(frameHeader(prefix.length + piece.length, type, f, stream), prefix, piece);
    else out.push(frameHeader(piece.length, T_CONTINUATION, f, stream), piece);
  }
  return out;
}

