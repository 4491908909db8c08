// http2-filter.ts — the guest's side of an intercepted HTTP/2 connection, filtered on its way to
// the server (RFC 9113 framing, RFC 7541 HPACK): the same rules as http-filter.ts for HTTP/1.1.
//
// Theory of operation
// Frames are passed through one by one. A request's header block (HEADERS, CONTINUATION) is
// decoded with the guest's HPACK state (hpack.js keeps the dynamic table the guest's encoder
// builds) and judged as the strictest server would (RFC 9113 §8.2–8.3: lower-case names, no
// connection-specific fields, no CR/LF/NUL in values, the four request pseudo-headers once each
// and first, :authority and Host agreeing, no CONNECT) — a request that breaks a rule is refused
// with 400, one whose authority the domain rule does not bind (FilterContext.authority) with 403.
// Placeholders of a secret allowed for this host are substituted in header values and Basic auth
// when the authority equals the SNI and the address was pinned; any placeholder left, in any
// header or in :path, is a violation. Blocks are encoded again for the server as literals that
// are never indexed: our side never adds to the server's dynamic table, so its decoder stays in
// step without our tracking it, and a substituted value is never indexed anywhere. DATA is
// streamed, never held: its header goes on at once and its payload is scanned as it arrives,
// with a per-stream tail carried across frames (a placeholder split over frames is caught when
// its last byte arrives). Every other frame (at most 64 KiB) is scanned and passed untouched.
// Memory per connection: one frame header, one non-DATA frame, one header block (64 KiB, and
// 64 KiB of fields once decoded), a placeholder-length tail per open stream.
import hpack from "hpack.js";
import { matchesPattern } from "../model/names.js";
import { PlaceholderScanner, secretsFor, substituteHeader, substituteQuery, type Secret } from "./secrets.js";
import { notHere, type FilterContext, type FilterResult, type Violation } from "./http-filter.js";
import { gather } from "./http1-head.js";
import { encodeNeverIndexed, frameHeader } from "./h2-wire.js";

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");
const MAX_CONTROL_FRAME = 65536;
const MAX_BLOCK = 65536;
/** The largest header list (decoded, RFC 7541 §4.1 sizes) judged: an HTTP/1.1 head's limit. */
export const MAX_HEADER_LIST = 65536;
const MAX_STREAMS = 4096;
const OUT_FRAME = 16384; // SETTINGS_MAX_FRAME_SIZE's default: what the server surely accepts
const T_DATA = 0, T_HEADERS = 1, T_CONTINUATION = 9;
const F_END_STREAM = 0x1, F_END_HEADERS = 0x4, F_PADDED = 0x8, F_PRIORITY = 0x20;
const CONNECTION_SPECIFIC = new Set(["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"]);
const REQUEST_PSEUDO = new Set([":method", ":scheme", ":authority", ":path"]);

interface Header { name: string; value: string }

/** A request the filter refused, on its stream. */
export interface H2Result extends FilterResult { stream?: number }

export class Http2RequestFilter {
  private buf: Buffer = Buffer.alloc(0);
  private bufStore: Buffer | undefined; // where `buf` grows (gather)
  private preface = false;
  private block: Buffer[] = [];
  private blockSize = 0;
  private blockStream = 0;
  private blockEndStream = false;
  private dataLeft = 0; // payload bytes of the current DATA frame still to come
  private dataStream = 0;
  private dataEnd = false;
  private dataPadded = false;
  private dataPad = -1; // a padded frame's pad length, once read
  private readonly tails = new Map<number, string>(); // per stream: the last bytes of its DATA, for a placeholder split across frames
  private readonly opened = new Set<number>(); // streams whose request headers were seen (a second block is trailers)
  // The guest's encoder table: 4096 bytes (RFC 7541's default) until the guest's own size update,
  // which may raise it to what the server allowed, capped here at 64 KiB (more is refused).
  private readonly decoder = (() => {
    const d = hpack.decompressor.create({ table: { maxSize: 65536 } });
    d.updateTableSize(4096);
    return d;
  })();
  private readonly scanner: PlaceholderScanner;
  private readonly allowed: Secret[];
  private readonly sni: string | undefined;
  private readonly tailLen: number;
  /** Whether any value was put into a request on this connection. */
  substituted = false;

  /** Whether a value may be substituted on this connection (its responses are then scrubbed). */
  get substituting(): boolean {
    return this.allowed.length > 0;
  }

  constructor(secrets: readonly Secret[], private readonly ctx: FilterContext) {
    this.sni = ctx.sni;
    this.allowed = secretsFor(secrets, ctx.sni, ctx.pinned);
    this.scanner = new PlaceholderScanner(secrets);
    this.tailLen = Math.max(0, 3 * this.scanner.maxFormLength - 1); // (a form spread by %XX escapes)
    const sni = ctx.sni;
    this.unpinned = !ctx.pinned && sni !== undefined && secrets.some((s) => matchesPattern(sni, s.hosts));
  }

  /** A secret is for the SNI, but the address was not one this sandbox's DNS returned for it. */
  private readonly unpinned: boolean;

  push(chunk: Buffer): H2Result {
    const out: Buffer[] = [];
    let b = chunk;
    if (!this.preface) {
      this.buf = this.buf.length ? Buffer.concat([this.buf, b]) : b;
      if (this.buf.length < PREFACE.length) {
        if (!PREFACE.subarray(0, this.buf.length).equals(this.buf)) throw new Error("not an HTTP/2 connection preface");
        return { out };
      }
      if (!this.buf.subarray(0, PREFACE.length).equals(PREFACE)) throw new Error("not an HTTP/2 connection preface");
      out.push(PREFACE);
      b = this.buf.subarray(PREFACE.length);
      this.buf = Buffer.alloc(0);
      this.preface = true;
    }
    while (b.length) {
      if (this.dataLeft > 0) {
        const piece = b.subarray(0, Math.min(this.dataLeft, b.length));
        b = b.subarray(piece.length);
        // Of a padded frame only the data is the body's text: not its pad length, not its padding.
        let text = piece;
        if (this.dataPad >= 0 || this.dataPadded) {
          let from = 0;
          if (this.dataPadded && this.dataPad < 0) {
            this.dataPad = piece[0]!;
            if (this.dataPad > this.dataLeft - 1) throw new Error("DATA with padding longer than the frame");
            from = 1;
          }
          const dataEnd = this.dataLeft - this.dataPad; // bytes of this frame before its padding, from piece[0]
          text = piece.subarray(from, Math.max(from, Math.min(piece.length, dataEnd)));
        }
        this.dataLeft -= piece.length;
        const v = this.scanData(this.dataStream, text);
        if (v) return { out, violation: v, stream: this.dataStream };
        out.push(piece);
        if (this.dataLeft === 0 && this.dataEnd) this.closeStream(this.dataStream);
        continue;
      }
      // A frame header, and for frames other than DATA the whole frame.
      ({ view: this.buf, store: this.bufStore } = gather(this.buf, b, this.bufStore));
      b = Buffer.alloc(0);
      if (this.buf.length < 9) break;
      const len = this.buf.readUIntBE(0, 3);
      const type = this.buf[3]!;
      const flags = this.buf[4]!;
      const stream = this.buf.readUInt32BE(5) & 0x7fffffff;
      if (type === T_DATA) {
        if (this.block.length) throw new Error("DATA inside a header block");
        out.push(this.buf.subarray(0, 9));
        b = this.buf.subarray(9);
        this.buf = Buffer.alloc(0);
        this.dataLeft = len;
        this.dataStream = stream;
        this.dataEnd = (flags & F_END_STREAM) !== 0;
        this.dataPadded = (flags & F_PADDED) !== 0;
        this.dataPad = -1;
        if (this.dataPadded && len === 0) throw new Error("a padded DATA frame without its pad length");
        if (len === 0 && this.dataEnd) this.closeStream(stream);
        continue;
      }
      if (len > MAX_CONTROL_FRAME) throw new Error(`a frame of type ${type} over 64 KiB`);
      if (this.buf.length < 9 + len) break;
      const frame = this.buf.subarray(0, 9 + len);
      const payload = frame.subarray(9);
      b = this.buf.subarray(9 + len);
      this.buf = Buffer.alloc(0);
      if (this.block.length && type !== T_CONTINUATION) throw new Error("a header block interrupted by another frame");
      if (type === T_HEADERS || type === T_CONTINUATION) {
        let p = payload;
        if (type === T_HEADERS) {
          let pad = 0;
          if (flags & F_PADDED) { if (!p.length) throw new Error("a padded frame without its pad length"); pad = p[0]!; p = p.subarray(1); }
          if (flags & F_PRIORITY) p = p.subarray(5);
          if (pad > p.length) throw new Error("padding longer than the frame");
          p = p.subarray(0, p.length - pad);
          this.blockStream = stream;
          this.blockEndStream = (flags & F_END_STREAM) !== 0;
          this.block = [];
          this.blockSize = 0;
        } else if (!this.block.length) {
          throw new Error("a CONTINUATION without HEADERS");
        } else if (stream !== this.blockStream) {
          throw new Error("a CONTINUATION of another stream");
        }
        // Each frame's header counts too: empty CONTINUATIONs would otherwise be gathered without
        // end (a CONTINUATION flood), ten times their size in memory.
        if (p.length) this.block.push(p);
        else if (!this.block.length) this.block.push(p); // (an empty HEADERS still opens a block)
        this.blockSize += 9 + p.length;
        if (this.blockSize > MAX_BLOCK) throw new Error("a header block over 64 KiB (its frames' headers counted)");
        if (!(flags & F_END_HEADERS)) continue;
        const s = this.blockStream;
        const r = this.judge(Buffer.concat(this.block), s);
        this.block = [];
        if ("violation" in r) return { out, violation: r.violation, stream: s };
        if ("refusal" in r) return { out, refusal: r.refusal, stream: s };
        out.push(...headerFrames(s, r.block, this.blockEndStream));
        if (this.blockEndStream) this.closeStream(s);
        continue;
      }
      // A client cannot push (RFC 9113 §8.4): its header block would go on undecoded, unjudged.
      if (type === 5) throw new Error("a PUSH_PROMISE from the client");
      // Any other frame (SETTINGS, PING, GOAWAY's debug data, unknown types, ...): scanned whole.
      const found = len ? this.scanner.find(payload.toString("latin1")) : undefined;
      if (found) return { out, violation: { secret: found.secret, form: found.form, where: `an HTTP/2 frame of type ${type}${this.sni ? ` to ${this.sni}` : ""}`, http: false } };
      if (type === 3) this.closeStream(stream); // RST_STREAM
      out.push(frame);
    }
    return { out };
  }

  end(): H2Result {
    return { out: [] };
  }

  private closeStream(stream: number): void {
    this.tails.delete(stream);
    this.opened.delete(stream);
  }

  /** A piece of a DATA payload on `stream`: a violation if a placeholder ends in it. */
  private scanData(stream: number, piece: Buffer): Violation | undefined {
    if (!this.scanner.active) return undefined;
    const hay = (this.tails.get(stream) ?? "") + piece.toString("latin1");
    const found = this.scanner.find(hay);
    if (found) return { secret: found.secret, form: found.form, where: `a request body${this.sni ? ` to ${this.sni}` : ""}`, http: true };
    if (!this.tails.has(stream) && this.tails.size >= MAX_STREAMS) throw new Error("too many streams with data in flight");
    this.tails.set(stream, hay.slice(-this.tailLen));
    return undefined;
  }

  /** Decode, check, judge and re-encode one header block (a request's, or its trailers). */
  private judge(block: Buffer, stream: number): { block: Buffer } | { violation: Violation } | { refusal: { status: number; reason: string } } {
    this.decoder.write(block);
    this.decoder.execute();
    const to = this.sni ? ` (to ${this.sni})` : "";
    const refuse = (status: number, reason: string) => ({ refusal: { status, reason: `${reason}${to}` } });
    // HPACK lets a one-byte reference stand for a whole table entry: a 64 KiB block of them is
    // gigabytes of fields. Their size is counted as they are read (RFC 7541 §4.1: name, value,
    // 32 each) and held to what an HTTP/1.1 head may be; over it, nothing more is looked at.
    const headers: Header[] = [];
    let listSize = 0;
    for (let h = this.decoder.read(); h; h = this.decoder.read()) {
      const name = String(h.name), value = String(h.value);
      listSize += name.length + value.length + 32;
      if (listSize > MAX_HEADER_LIST) {
        while (this.decoder.read()); // (drop the rest: the connection ends)
        return refuse(431, `a header list over ${MAX_HEADER_LIST} bytes once decoded`);
      }
      headers.push({ name, value });
    }
    const trailers = this.opened.has(stream);
    const seen = new Set<string>();
    let regular = false;
    for (const h of headers) {
      if (/[\r\n\0]/.test(h.value) || /^[ \t]|[ \t]$/.test(h.value)) return refuse(400, `header ${JSON.stringify(h.name.slice(0, 40))} holds CR, LF, NUL or surrounding whitespace`);
      if (h.name.startsWith(":")) {
        if (trailers) return refuse(400, "a pseudo-header in trailers");
        if (regular) return refuse(400, "a pseudo-header after a regular field");
        if (!REQUEST_PSEUDO.has(h.name)) return refuse(400, `pseudo-header ${JSON.stringify(h.name.slice(0, 20))} is not a request's`);
        if (seen.has(h.name)) return refuse(400, `${h.name} given twice`);
        seen.add(h.name);
      } else {
        regular = true;
        if (!/^[!#$%&'*+.^_`|~0-9a-z-]+$/.test(h.name)) return refuse(400, `header name ${JSON.stringify(h.name.slice(0, 40))} is not a lower-case token`);
        if (CONNECTION_SPECIFIC.has(h.name)) return refuse(400, `connection-specific header ${h.name} in HTTP/2`);
        if (h.name === "te" && h.value.toLowerCase() !== "trailers") return refuse(400, "te other than trailers");
      }
    }
    const get = (n: string) => headers.filter((h) => h.name === n).map((h) => h.value);
    let host: string | undefined;
    if (!trailers) {
      if (stream === 0 || stream % 2 === 0) throw new Error("request headers on a stream the client may not open");
      if (!this.opened.has(stream) && this.opened.size >= MAX_STREAMS) throw new Error("too many open streams");
      this.opened.add(stream);
      const method = get(":method")[0];
      if (method === undefined) return refuse(400, "no :method");
      if (method === "CONNECT") return refuse(405, "CONNECT opens a tunnel moat cannot judge");
      const path = get(":path")[0];
      if (!get(":scheme").length || !path) return refuse(400, "no :scheme or :path");
      // Origin-form only (RFC 9113 §8.3.1), as an HTTP/1.1 target is held to (http1-head.ts): a
      // server that reads :path as a request line's target acts on an absolute one's host.
      if (path === "*" ? method !== "OPTIONS" : !/^\/[\x21-\x22\x24-\x7e]*$/.test(path)) return refuse(400, `:path ${JSON.stringify(path.slice(0, 60))} is not a path (or * for OPTIONS)`);
      const authority = get(":authority")[0];
      const hostFields = get("host");
      if (hostFields.length > 1) return refuse(400, "more than one host field");
      const a = authority ?? hostFields[0];
      if (a === undefined) return refuse(400, "no :authority or host");
      if (authority !== undefined && hostFields.length && hostFields[0]!.toLowerCase() !== authority.toLowerCase()) return refuse(403, `:authority ${authority} and host ${hostFields[0]} differ`);
      if (/[@\s]/.test(a) || !/^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=-]+)(:[0-9]{0,5})?$/.test(a)) return refuse(400, ":authority is not host[:port]");
      host = (a.startsWith("[") ? a.slice(0, a.indexOf("]") + 1) : a.replace(/:[0-9]*$/, "")).toLowerCase().replace(/\.$/, "");
      const why = this.ctx.authority?.(host);
      if (why) return refuse(403, why);
      if (method === "TRACE") host = undefined; // TRACE echoes its request back: no value goes into one
    }
    const hostOk = host !== undefined && host === this.sni && this.allowed.length > 0;
    const v = (where: string, text: string): Violation | undefined => {
      const found = this.scanner.find(text);
      return found ? { secret: found.secret, form: found.form, where: `${where}${this.sni ? ` to ${this.sni}` : ""}`, http: true } : undefined;
    };
    let changed = false;
    for (const h of headers) {
      const before = h.value;
      if (hostOk && h.name === ":path") for (const s of this.allowed) if (s.query) h.value = substituteQuery(s, h.value);
      if (hostOk && !h.name.startsWith(":")) h.value = substituteHeader(this.allowed, h.name, h.value);
      if (h.value !== before) changed = true;
      const where = h.name === ":path" ? "the request's path" : `${trailers ? "trailer" : "header"} ${h.name}${hostOk || trailers ? "" : host === undefined ? " (no :authority, or TRACE)" : notHere(host, this.sni, this.unpinned, ":authority")}`;
      const bad = v(where, `${h.name}: ${h.value}`);
      if (bad) return { violation: bad };
    }
    if (changed) {
      this.substituted = true;
      // What comes back is scanned for the value: ask for it uncompressed.
      const i = headers.findIndex((h) => h.name === "accept-encoding");
      if (i >= 0) headers[i]!.value = "identity";
      else headers.push({ name: "accept-encoding", value: "identity" });
    }
    return { block: encodeNeverIndexed(headers) };
  }
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

/**
 * The guest's answer to a request moat stopped on `stream`: `status` with the reason, then GOAWAY.
 * `settingsFirst` when the server's SETTINGS never reached the guest (a connection must open with
 * SETTINGS, or the client reports a protocol error instead of the answer).
 */
export function forbiddenH2(stream: number, reason: string, status = 403, settingsFirst = false): Buffer {
  const body = Buffer.from(reason);
  const code = Buffer.from(String(status));
  const block = Buffer.concat([
    // :status (static index 8) and content-type (31), literal without indexing, no table change.
    Buffer.from([0x08]), Buffer.from([code.length]), code,
    Buffer.from([0x0f, 0x10]), Buffer.from([10]), Buffer.from("text/plain"),
  ]);
  const goaway = Buffer.alloc(8);
  goaway.writeUInt32BE(stream, 0); // last stream id
  goaway.writeUInt32BE(0, 4); // NO_ERROR
  return Buffer.concat([
    settingsFirst ? frameHeader(0, 4, 0, 0) : Buffer.alloc(0),
    frameHeader(block.length, T_HEADERS, F_END_HEADERS, stream), block,
    frameHeader(body.length, T_DATA, F_END_STREAM, stream), body,
    frameHeader(8, 7, 0, 0), goaway,
  ]);
}
