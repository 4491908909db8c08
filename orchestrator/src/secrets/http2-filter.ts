// http2-filter.ts — the guest's side of an intercepted HTTP/2 connection, filtered on its way to
// the server (RFC 9113 framing, RFC 7541 HPACK): the same rules as http-filter.ts for HTTP/1.1.
//
// Theory of operation
// Frames are passed through one by one. A request's header block (HEADERS, CONTINUATION) is
// decoded with the guest's HPACK state (hpack.js keeps the dynamic table the guest's encoder
// builds), judged — placeholders of a secret allowed for this host substituted in header values
// and Basic auth when :authority equals the SNI and the address was pinned; any placeholder left,
// in any header or in :path, is a violation — and encoded again for the server as literals that
// are never indexed: our side never adds to the server's dynamic table, so its decoder stays in
// step without our tracking it, and a substituted value is never indexed anywhere. DATA is
// scanned (a placeholder in a body is a violation). Every other frame passes untouched.
// A violation answers that stream with 403 and the reason (our HEADERS use no dynamic table
// either, so the guest's decoder stays in step with the server's encoder), then GOAWAY.
import hpack from "hpack.js";
import { PlaceholderScanner, secretsFor, substituteHeader, substituteQuery, type Secret } from "./secrets.js";
import type { FilterResult, Violation } from "./http-filter.js";

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");
const MAX_FRAME = 1 << 24;
const MAX_BLOCK = 65536;
const OUT_FRAME = 16384; // SETTINGS_MAX_FRAME_SIZE's default: what the server surely accepts
const T_DATA = 0, T_HEADERS = 1, T_CONTINUATION = 9;
const F_END_STREAM = 0x1, F_END_HEADERS = 0x4, F_PADDED = 0x8, F_PRIORITY = 0x20;

interface Header { name: string; value: string }

export class Http2RequestFilter {
  private buf: Buffer = Buffer.alloc(0);
  private preface = false;
  private block: Buffer[] = [];
  private blockStream = 0;
  private blockEndStream = false;
  private readonly decoder = hpack.decompressor.create({ table: { size: 4096 } });
  private readonly scanner: PlaceholderScanner;
  private readonly allowed: Secret[];

  constructor(secrets: readonly Secret[], private readonly sni: string | undefined, pinned: boolean) {
    this.allowed = secretsFor(secrets, sni, pinned);
    this.scanner = new PlaceholderScanner(secrets);
  }

  push(chunk: Buffer): FilterResult & { stream?: number } {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const out: Buffer[] = [];
    if (!this.preface) {
      if (this.buf.length < PREFACE.length) return { out };
      if (!this.buf.subarray(0, PREFACE.length).equals(PREFACE)) throw new Error("not an HTTP/2 connection preface");
      out.push(this.buf.subarray(0, PREFACE.length));
      this.buf = this.buf.subarray(PREFACE.length);
      this.preface = true;
    }
    while (this.buf.length >= 9) {
      const len = this.buf.readUIntBE(0, 3);
      if (len > MAX_FRAME) throw new Error("an oversized frame");
      if (this.buf.length < 9 + len) break;
      const type = this.buf[3]!;
      const flags = this.buf[4]!;
      const stream = this.buf.readUInt32BE(5) & 0x7fffffff;
      const frame = this.buf.subarray(0, 9 + len);
      const payload = frame.subarray(9);
      this.buf = this.buf.subarray(9 + len);
      if (type === T_HEADERS || (type === T_CONTINUATION && this.block.length)) {
        let p = payload;
        if (type === T_HEADERS) {
          let pad = 0;
          if (flags & F_PADDED) { pad = p[0]!; p = p.subarray(1); }
          if (flags & F_PRIORITY) p = p.subarray(5);
          if (pad > p.length) throw new Error("padding longer than the frame");
          p = p.subarray(0, p.length - pad);
          this.blockStream = stream;
          this.blockEndStream = (flags & F_END_STREAM) !== 0;
          this.block = [];
        } else if (stream !== this.blockStream) {
          throw new Error("a CONTINUATION of another stream");
        }
        this.block.push(p);
        if (this.block.reduce((n, b) => n + b.length, 0) > MAX_BLOCK) throw new Error("a header block over 64 KiB");
        if (!(flags & F_END_HEADERS)) continue;
        const r = this.judge(Buffer.concat(this.block));
        this.block = [];
        if ("violation" in r) return { out, violation: r.violation, stream: this.blockStream };
        out.push(...headerFrames(this.blockStream, r.block, this.blockEndStream));
        continue;
      }
      if (type === T_CONTINUATION) throw new Error("a CONTINUATION without HEADERS");
      if (type === T_DATA && len) {
        const found = this.scanner.find(payload.toString("latin1"));
        if (found) return { out, violation: { secret: found.secret, form: found.form, where: `a request body${this.sni ? ` to ${this.sni}` : ""}`, http: true }, stream };
      }
      out.push(frame);
    }
    return { out };
  }

  end(): Buffer[] {
    return [];
  }

  /** Decode, judge and re-encode one request's header block. */
  private judge(block: Buffer): { block: Buffer } | { violation: Violation } {
    this.decoder.write(block);
    this.decoder.execute();
    const headers: Header[] = [];
    for (let h = this.decoder.read(); h; h = this.decoder.read()) headers.push({ name: String(h.name), value: String(h.value) });
    const authority = headers.find((h) => h.name === ":authority")?.value ?? headers.find((h) => h.name === "host")?.value;
    const host = authority?.toLowerCase().replace(/:\d+$/, "").replace(/\.$/, "");
    const hostOk = host !== undefined && host === this.sni;
    const v = (where: string, text: string): Violation | undefined => {
      const found = this.scanner.find(text);
      return found ? { secret: found.secret, form: found.form, where: `${where}${this.sni ? ` to ${this.sni}` : ""}`, http: true } : undefined;
    };
    for (const h of headers) {
      if (hostOk && h.name === ":path") for (const s of this.allowed) if (s.query) h.value = substituteQuery(s, h.value);
      if (hostOk && !h.name.startsWith(":")) h.value = substituteHeader(this.allowed, h.name, h.value);
      const where = h.name === ":path" ? "the request's path" : `header ${h.name}${hostOk ? "" : host === undefined ? " (no :authority)" : ` (:authority ${host} is not the SNI)`}`;
      const bad = v(where, `${h.name}: ${h.value}`);
      if (bad) return { violation: bad };
    }
    return { block: encodeNeverIndexed(headers) };
  }
}

/** A header block of literals never indexed, with literal names (RFC 7541 §6.2.3): no table state. */
function encodeNeverIndexed(headers: Header[]): Buffer {
  const parts: Buffer[] = [];
  const str = (s: string) => {
    const b = Buffer.from(s, "latin1");
    return Buffer.concat([integer(b.length, 7, 0x00), b]);
  };
  for (const h of headers) parts.push(Buffer.from([0x10]), str(h.name), str(h.value));
  return Buffer.concat(parts);
}

/** An HPACK integer with an N-bit prefix (RFC 7541 §5.1), `first` holding the bits above it. */
function integer(n: number, bits: number, first: number): Buffer {
  const max = (1 << bits) - 1;
  if (n < max) return Buffer.from([first | n]);
  const out = [first | max];
  n -= max;
  while (n >= 128) { out.push((n & 127) | 128); n = Math.floor(n / 128); }
  out.push(n);
  return Buffer.from(out);
}

function frameHeader(len: number, type: number, flags: number, stream: number): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(len, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(stream, 5);
  return h;
}

/** HEADERS (+ CONTINUATION) frames carrying `block`. */
function headerFrames(stream: number, block: Buffer, endStream: boolean): Buffer[] {
  const out: Buffer[] = [];
  for (let off = 0, first = true; first || off < block.length; first = false) {
    const piece = block.subarray(off, off + OUT_FRAME);
    off += piece.length;
    const last = off >= block.length;
    const flags = (first && endStream ? F_END_STREAM : 0) | (last ? F_END_HEADERS : 0);
    out.push(frameHeader(piece.length, first ? T_HEADERS : T_CONTINUATION, flags, stream), piece);
  }
  return out;
}

/** The guest's answer to a blocked request on `stream`: 403 with the reason, then GOAWAY. */
export function forbiddenH2(stream: number, reason: string): Buffer {
  const body = Buffer.from(reason);
  const block = Buffer.concat([
    // :status (static index 8) and content-type (31), literal without indexing, no table change.
    Buffer.from([0x08]), Buffer.from([3]), Buffer.from("403"),
    Buffer.from([0x0f, 0x10]), Buffer.from([10]), Buffer.from("text/plain"),
  ]);
  const goaway = Buffer.alloc(8);
  goaway.writeUInt32BE(stream, 0); // last stream id
  goaway.writeUInt32BE(0, 4); // NO_ERROR
  return Buffer.concat([
    frameHeader(block.length, T_HEADERS, F_END_HEADERS, stream), block,
    frameHeader(body.length, T_DATA, F_END_STREAM, stream), body,
    frameHeader(8, 7, 0, 0), goaway,
  ]);
}
