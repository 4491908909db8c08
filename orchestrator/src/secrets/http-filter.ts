// http-filter.ts — the guest's side of an intercepted TLS connection, filtered on its way to the
// server: placeholders become secret values where they may, and are violations everywhere else;
// on a connection a domain rule admitted, every request's authority is held to that rule.
//
// Theory of operation
// A connection is parsed as HTTP/1.1, request by request (pipelined and kept-alive requests each
// judged), when a secret is for its SNI (substitution) or a domain rule admitted it (binding):
//   head    bytes up to the blank line (at most MAX_HEAD), read by http1-head.ts as the strictest
//           server reads them; whatever another parser could read differently (a bare LF, two
//           Hosts, Transfer-Encoding with Content-Length, an absolute-form target naming another
//           host, ...) is refused with a status and a reason, and the connection ends. Then the
//           request's authority is judged (`authority`: the domain rule's names and this
//           sandbox's pins). Placeholders in header values become the value of a secret allowed
//           for this host, `Authorization: Basic` is decoded, substituted and encoded again — only
//           when the authority is the SNI, the address pinned to it, and the method not TRACE.
//           Any placeholder left (another secret's, one in the request line, another authority)
//           is a violation, and the request never leaves.
//   body    Content-Length or chunked framing (strict chunk lines, CRLF after each chunk, trailer
//           fields checked like headers) followed to the next request; the bytes are scanned
//           with a carry, or held whole (at most MAX_BODY) for secrets substituted in bodies.
//   opaque  after an Upgrade (WebSocket): scanned like any other stream.
// Any other connection is opaque from the start: scanned for placeholders only. Scanning holds
// back a tail that could be the start of a placeholder form, so a violation is caught before any
// of the placeholder's bytes leave, however it is split across writes. Memory per connection:
// one head (64 KiB), one held body (1 MiB, only for inject.body secrets), the scanner's carry.
import { matchesPattern } from "../model/names.js";
import { PlaceholderScanner, secretsFor, substituteHeader, substituteQuery, type Secret, type Found } from "./secrets.js";
import { HeadError, badLineEnding, badLineEndingText, gather, nameIs, parseChunkSize, parseRequestHead, type RequestHead } from "./http1-head.js";

export const MAX_HEAD = 65536;

export interface Violation { secret: Secret; where: string; form: string; http: boolean }

/** A request moat will not forward: answered with `status` and `reason`, the connection closed. */
export interface Refusal { status: number; reason: string }

export interface FilterResult {
  /** Bytes to send upstream now. */
  out: Buffer[];
  violation?: Violation;
  refusal?: Refusal;
}

/** What a filter knows of its connection. */
export interface FilterContext {
  sni: string | undefined;
  /** This sandbox's DNS pinned the destination address to the SNI. */
  pinned: boolean;
  /**
   * Set on a connection a domain rule admitted: why a request for `host` may not go (not covered
   * by the rule, or not pinned to the destination), or null. Every request is then parsed.
   */
  authority?(host: string): string | null;
  /** Each request forwarded, in order (the response side follows them). */
  onRequest?(method: string, http10: boolean): void;
}

type State = "head" | "length" | "chunk-size" | "chunk-data" | "chunk-crlf" | "trailers" | "opaque" | "buffer" | "ws";

/** Largest request body held to substitute a secret in it; over it, a body with a placeholder is a violation. */
export const MAX_BODY = 1 << 20;
const MAX_LINE = 8192;
const CRLFCRLF = Buffer.from("\r\n\r\n", "latin1");

export class RequestFilter {
  private state: State;
  private head: Buffer = Buffer.alloc(0);
  private headStore: Buffer | undefined; // where `head` grows (gather)
  private remaining = 0; // body bytes left (length / chunk-data), or CRLF bytes left (chunk-crlf)
  private line = ""; // chunk-size and trailer lines
  private chunkTail = ""; // the last bytes of a chunked body's data so far (a placeholder split over chunks)
  // The start of a Content-Length body, held until its first line is whole (startsAsRequest).
  private firstLine = false;
  private first: Buffer = Buffer.alloc(0);
  private firstStore: Buffer | undefined;
  private firstContent = -1; // where its first byte other than CR/LF is
  private http: boolean | undefined; // an opaque stream that began as an HTTP/1.x request (a violation gets a 403)
  // "buffer": a body held whole to substitute in it (secrets with inject.body), its head waiting
  private held: { lines: string[]; chunked: boolean; length: number; raw: Buffer; store: Buffer | undefined; chunks: Dechunk } | undefined;
  private readonly scanner: PlaceholderScanner;
  /** Secrets whose value may be put into requests on this connection. */
  private readonly allowed: Secret[];
  /** Some allowed secret is substituted in bodies. */
  private readonly bodySecrets: boolean;
  private readonly sni: string | undefined;
  /** Whether any value was put into a request on this connection (its responses are scrubbed). */
  substituted = false;

  constructor(secrets: readonly Secret[], private readonly ctx: FilterContext) {
    this.sni = ctx.sni;
    this.allowed = secretsFor(secrets, ctx.sni, ctx.pinned);
    this.bodySecrets = this.allowed.some((x) => x.body);
    // Every connection with secrets is read as HTTP where it is HTTP (so a WebSocket's masked
    // frames are unmasked before scanning); only the ones moat must judge refuse what is not.
    this.strict = this.allowed.length > 0 || ctx.authority !== undefined;
    this.state = secrets.length || ctx.authority ? "head" : "opaque";
    this.scanner = new PlaceholderScanner(secrets);
    // A secret is for this name, but the address was not one DNS gave this sandbox for it.
    const sni = ctx.sni;
    this.unpinned = !ctx.pinned && sni !== undefined && secrets.some((s) => matchesPattern(sni, s.hosts));
  }

  private readonly unpinned: boolean;
  private readonly strict: boolean;
  private ws: { hdr: Buffer; left: number; mask: Buffer; off: number; tail: string } | undefined;

  /** Whether this connection parses HTTP/1.1 (a host some secret is for, or a domain rule's). */
  get parsing(): boolean {
    return this.allowed.length > 0 || this.ctx.authority !== undefined;
  }

  /** Whether a value may be substituted on this connection. */
  get substituting(): boolean {
    return this.allowed.length > 0;
  }

  push(chunk: Buffer): FilterResult {
    const out: Buffer[] = [];
    let b = chunk;
    while (b.length) {
      if (this.state === "ws") return this.wsScan(b, out);
      if (this.state === "opaque") {
        this.http ??= /^[A-Z]{3,10} \S+ HTTP\/1\.[01]\r?\n/.test(b.toString("latin1", 0, 2048));
        return this.scan(b, out, this.http ? "a request" : "the stream", this.http);
      }
      if (this.state === "head") {
        const prev = this.head.length;
        if (prev === 0) this.head = b;
        else ({ view: this.head, store: this.headStore } = gather(this.head, b, this.headStore));
        // Not the start of a request line at all (a binary protocol): judged at once rather than
        // after a blank line that will never come.
        if (!startsAsRequestLine(this.head)) return this.refuse(out, 400, "not an HTTP/1.1 request", this.takeHead());
        const end = this.head.indexOf(CRLFCRLF, Math.max(0, prev - 3));
        const limit = end < 0 ? this.head.length : end + 4;
        // A bare LF ends a line (or a head) for some servers: refused as soon as it is seen. (A
        // head that came whole, the common case, is read as text once and checked there.)
        const text = end >= 0 && prev === 0 ? this.head.toString("latin1", 0, limit) : undefined;
        if ((text !== undefined ? badLineEndingText(text) : badLineEnding(this.head.subarray(0, limit), prev)) >= 0) return this.refuse(out, 400, "a bare LF or CR in the request head (lines end in CRLF)", this.takeHead());
        if (end < 0) {
          if (this.head.length > MAX_HEAD) return this.refuse(out, 431, `a request head over ${MAX_HEAD} bytes`, this.takeHead());
          return { out };
        }
        const head = this.head.subarray(0, end + 4);
        b = this.head.subarray(end + 4);
        this.head = Buffer.alloc(0);
        let parsed: RequestHead;
        try {
          parsed = parseRequestHead(head, true, text); // (its line endings were checked as they came)
        } catch (e) {
          if (e instanceof HeadError) return this.refuse(out, e.status, e.message, Buffer.concat([head, b]));
          throw e;
        }
        const why = this.ctx.authority?.(parsed.host);
        if (why) return this.refuse(out, 403, why, Buffer.alloc(0));
        // After an upgrade moat stops reading requests, but a server that does not take it (no
        // 101: nginx, Node without an 'upgrade' listener, Python) reads on: what follows must be
        // something no server reads as a request (masked WebSocket frames, wsScan), and nothing
        // it might read first (a body, an HTTP/2 preface after h2c) may be left unjudged.
        if (parsed.upgrade && this.strict) {
          if (!isWebSocket(parsed)) return this.refuse(out, 501, `an Upgrade to ${JSON.stringify(parsed.fields.filter((f) => f.name === "upgrade").map((f) => f.value).join(", ").slice(0, 40))}: moat could not judge the requests after it (only WebSocket is upgraded to)`, Buffer.alloc(0));
          if (parsed.body.kind !== "none") return this.refuse(out, 400, "an Upgrade request with a body (a server that does not upgrade reads requests after it)", Buffer.alloc(0));
        }
        const r = this.judgeHead(parsed, parsed.text);
        if ("violation" in r) return { out, violation: r.violation };
        this.ctx.onRequest?.(parsed.method, parsed.version === "HTTP/1.0");
        if (r.head) out.push(Buffer.from(r.head, "latin1"));
        continue;
      }
      if (this.state === "buffer") {
        const h = this.held!;
        // Gathered in place and its chunks parsed from where the last piece left off: a body
        // sent a byte at a time in tiny chunks costs linear time, not a re-parse per byte.
        ({ view: h.raw, store: h.store } = gather(h.raw, b, h.store));
        b = Buffer.alloc(0);
        const raw = h.raw;
        let body: { payload: Buffer; used: number } | null;
        try {
          body = h.chunked ? dechunk(raw, h.chunks) : raw.length >= h.length ? { payload: raw.subarray(0, h.length), used: h.length } : null;
        } catch (e) {
          return this.refuse(out, 400, (e as Error).message, Buffer.alloc(0));
        }
        if (!body) {
          if (raw.length > MAX_BODY + 65536) return this.refuse(out, 413, `a request body to substitute in over ${MAX_BODY} bytes`, Buffer.alloc(0));
          return { out };
        }
        this.held = undefined;
        this.state = "head";
        const r = this.substituteBody(h.lines, body.payload);
        if ("violation" in r) return { out, violation: r.violation };
        if ("refusal" in r) return this.refuse(out, r.refusal.status, r.refusal.reason, Buffer.alloc(0));
        out.push(r.request);
        b = raw.subarray(body.used); // the next request, pipelined
        continue;
      }
      if (this.state === "length" && this.firstLine) {
        // The start of a Content-Length body, held until its first line is whole (or it is too
        // long to be a request line, or the body ends): a server that leaves the body unread
        // (Python's http.server, for a handler that does not read it) parses it as the next
        // request, for whatever Host it names.
        const n = Math.min(this.remaining - this.first.length, b.length);
        const before = this.first.length;
        ({ view: this.first, store: this.firstStore } = gather(this.first, b.subarray(0, n), this.firstStore));
        b = b.subarray(n);
        // (a placeholder in what is held is a violation at once, as it would be were it streamed)
        const found = this.scanner.find(this.first.toString("latin1", Math.max(0, before - 3 * this.scanner.maxFormLength)));
        if (found) return { out, violation: this.violation(found, "a request body", true) };
        // Done when a line with something in it has ended (leading blank lines skipped, as
        // nginx and llhttp skip them), when it is longer than any server reads a request line
        // (Python: 64 KiB), or when the body is all here. Looked for in the new bytes only.
        if (this.firstContent < 0) {
          for (let i = before; i < this.first.length; i++) if (this.first[i] !== 0x0d && this.first[i] !== 0x0a) { this.firstContent = i; break; }
        }
        const lineEnd = this.firstContent < 0 ? -1 : this.first.indexOf(0x0a, Math.max(this.firstContent, before));
        if (lineEnd < 0 && this.first.length <= MAX_HEAD && this.first.length < this.remaining) continue;
        this.firstContent = -1;
        this.firstLine = false;
        if (startsAsRequest(this.first.toString("latin1", 0, lineEnd < 0 ? this.first.length : lineEnd + 1))) return this.refuse(out, 400, "a request body that begins as a request line (a server that does not read the body would take it for the next request)", Buffer.alloc(0));
        b = b.length ? Buffer.concat([this.first, b]) : this.first;
        this.first = Buffer.alloc(0);
        this.firstStore = undefined;
        continue;
      }
      if (this.state === "length" || this.state === "chunk-data") {
        const n = Math.min(this.remaining, b.length);
        if (this.state === "chunk-data") {
          // The scanner is flushed at each chunk's end (its held bytes must go before the CRLF):
          // the last bytes of the body so far are kept, and where they meet the next chunk's
          // data is looked at too (a placeholder split over chunks: the body a server reads).
          const t = this.scanner.maxFormLength * 3;
          const found = this.chunkTail ? this.scanner.find(this.chunkTail + b.toString("latin1", 0, Math.min(n, t))) : undefined;
          if (found) return { out, violation: this.violation(found, "a request body", true) };
          this.chunkTail = (this.chunkTail + b.toString("latin1", Math.max(0, n - t), n)).slice(-t);
        }
        const r = this.scan(b.subarray(0, n), out, "a request body", true);
        if (r.violation) return r;
        this.remaining -= n;
        b = b.subarray(n);
        if (this.remaining === 0) {
          out.push(this.scanner.flush());
          this.state = this.state === "length" ? "head" : "chunk-crlf";
          this.remaining = 2;
        }
        continue;
      }
      if (this.state === "chunk-crlf") {
        const n = Math.min(this.remaining, b.length);
        const expect = this.remaining === 2 ? "\r\n" : "\n";
        if (b.toString("latin1", 0, n) !== expect.slice(0, n)) return this.refuse(out, 400, "a chunk not followed by CRLF", b);
        out.push(b.subarray(0, n));
        this.remaining -= n;
        b = b.subarray(n);
        if (this.remaining === 0) this.state = "chunk-size";
        continue;
      }
      // chunk-size and trailers: line by line, each line whole before any of it goes.
      const nl = b.indexOf("\n");
      const take = nl < 0 ? b.length : nl + 1;
      this.line += b.toString("latin1", 0, take);
      b = b.subarray(take);
      if (this.line.length > MAX_LINE) return this.refuse(out, 400, "a chunk line or trailer over 8 KiB", Buffer.concat([this.takeLine(), b]));
      if (nl < 0) continue;
      const raw = this.line;
      this.line = "";
      if (!raw.endsWith("\r\n") || raw.slice(0, -2).includes("\r")) return this.refuse(out, 400, "a bare LF or CR in chunked framing", Buffer.concat([Buffer.from(raw, "latin1"), b]));
      const line = raw.slice(0, -2);
      if (this.state === "chunk-size") {
        const size = parseChunkSize(line);
        if (size === null) return this.refuse(out, 400, "a malformed chunk size line", Buffer.concat([Buffer.from(raw, "latin1"), b]));
        out.push(Buffer.from(raw, "latin1"));
        if (size === 0) this.state = "trailers";
        else { this.state = "chunk-data"; this.remaining = size; }
      } else if (line === "") {
        out.push(Buffer.from(raw, "latin1"));
        this.state = "head"; // trailers ended: the next request
      } else {
        if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*$/.test(line)) return this.refuse(out, 400, "a malformed trailer field", Buffer.concat([Buffer.from(raw, "latin1"), b]));
        const found = this.scanner.find(line);
        if (found) return { out, violation: this.violation(found, "a trailer", true) };
        out.push(Buffer.from(raw, "latin1"));
      }
    }
    return { out };
  }

  /**
   * WebSocket frames from the guest (RFC 6455 §5.2): each frame's payload unmasked and scanned
   * with a tail carried across frames (a placeholder split over frames is caught in the frame
   * that completes it); the frames themselves go on unchanged.
   */
  private wsScan(b: Buffer, out: Buffer[]): FilterResult {
    const ws = this.ws!;
    while (b.length) {
      if (ws.left === 0) {
        // A frame header: 2 bytes, then 2 or 8 bytes of length, then the 4-byte mask key.
        const before = ws.hdr.length;
        const take = Math.min(b.length, 14 - before);
        ws.hdr = Buffer.concat([ws.hdr, b.subarray(0, take)]);
        if (ws.hdr.length < 2) return { out };
        const len7 = ws.hdr[1]! & 0x7f;
        const masked = (ws.hdr[1]! & 0x80) !== 0;
        // A client masks every frame (RFC 6455 §5.1). Unmasked bytes would be a request to a
        // server that answered the upgrade without 101 (no HTTP request has a byte over 0x7f
        // second), unjudged: refused where moat judges requests.
        if (!masked && this.strict) return this.refuse(out, 400, "an unmasked WebSocket frame from the client (after an upgrade the server may not have taken, it would be read as a request)", Buffer.alloc(0));
        // Nor its first byte: Python's http.server splits a request line at any Unicode space
        // (0x85, 0xA0 too), so a "frame" opening A0 A0 "GET " is a request line to it. A frame's
        // first byte has RSV2 and RSV3 clear (and RSV1: compression is never negotiated, see
        // judgeHead), a defined opcode, and FIN on a control frame: none of those is a space to
        // any parser.
        if (this.strict && (!validFirstByte(ws.hdr[0]!) || (ws.hdr[0]! & 0x40) !== 0)) return this.refuse(out, 400, `a WebSocket frame with reserved bits or opcode (first byte 0x${ws.hdr[0]!.toString(16)})`, Buffer.alloc(0));
        const need = 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0) + (masked ? 4 : 0);
        if (ws.hdr.length < need) return { out }; // (all of b went into the header)
        const headBytes = ws.hdr.subarray(0, need);
        out.push(headBytes);
        b = b.subarray(need - before);
        const len = len7 === 126 ? headBytes.readUInt16BE(2) : len7 === 127 ? Number(headBytes.readBigUInt64BE(2)) : len7;
        ws.mask = masked ? Buffer.from(headBytes.subarray(need - 4, need)) : Buffer.alloc(4);
        ws.off = 0;
        ws.left = len;
        ws.hdr = Buffer.alloc(0);
        if (len === 0) continue;
      }
      const piece = b.subarray(0, Math.min(ws.left, b.length));
      b = b.subarray(piece.length);
      const plain = Buffer.allocUnsafe(piece.length);
      for (let i = 0; i < piece.length; i++) plain[i] = piece[i]! ^ ws.mask[(ws.off + i) & 3]!;
      ws.off += piece.length;
      ws.left -= piece.length;
      const hay = ws.tail + plain.toString("latin1");
      const found = this.scanner.find(hay);
      if (found) return { out, violation: this.violation(found, "a WebSocket message", false) };
      ws.tail = hay.slice(-(3 * this.scanner.maxFormLength));
      out.push(piece);
    }
    return { out };
  }

  /**
   * The guest's stream ended: what was held back goes (an unfinished head never does where moat
   * judges requests). Elsewhere an unfinished head is scanned like any other bytes: a server may
   * still act on it (Python's http.server reads headers up to the end of the stream).
   */
  end(): FilterResult {
    const out: Buffer[] = [];
    if (!this.parsing && this.head.length) {
      const r = this.scan(this.takeHead(), out, "a request", true);
      if (r.violation) return r;
    }
    const rest = this.scanner.flush();
    if (rest.length) out.push(rest);
    return { out };
  }

  /**
   * Bytes that break HTTP's rules: on a connection moat must judge (substitution, a domain rule)
   * the request is refused; on any other the bytes (`pending`, none of them sent) are scanned as
   * an opaque stream from here on, as before parsing was tried.
   */
  private refuse(out: Buffer[], status: number, reason: string, pending: Buffer): FilterResult {
    this.state = "opaque";
    if (!this.strict) {
      this.http = true;
      return pending.length ? this.scan(pending, out, "a request", true) : { out };
    }
    return { out, refusal: { status, reason: `${reason}${this.sni ? ` (to ${this.sni})` : ""}` } };
  }

  private takeHead(): Buffer {
    const h = this.head;
    this.head = Buffer.alloc(0);
    return h;
  }

  private takeLine(): Buffer {
    const l = Buffer.from(this.line, "latin1");
    this.line = "";
    return l;
  }

  private scan(b: Buffer, out: Buffer[], where: string, http: boolean): FilterResult {
    const r = this.scanner.push(b);
    if (r.found) return { out, violation: this.violation(r.found, where, http) };
    if (r.release.length) out.push(r.release);
    return { out };
  }

  private violation(f: Found, where: string, http: boolean): Violation {
    // (a head's own text says why already)
    const note = this.unpinned && !where.includes(" (") ? ` (an address this sandbox's DNS never returned for ${this.sni})` : "";
    return { secret: f.secret, where: `${where}${note}${this.sni ? ` to ${this.sni}` : ""}`, form: f.form, http };
  }

  /** One request head: substituted where allowed; a violation if a placeholder would remain. */
  private judgeHead(h: RequestHead, text: string): { head: string } | { violation: Violation } {
    // WebSocket compression (permessage-deflate) would hide a value the server sends back from
    // the scrubber, and a placeholder in the guest's frames from the scanner: never offered.
    if (isWebSocket(h) && this.scanner.active && h.fields.some((f) => f.name === "sec-websocket-extensions")) {
      h = { ...h, fields: h.fields.filter((f) => f.name !== "sec-websocket-extensions") };
      text = `${[text.slice(0, text.indexOf("\r\n")), ...h.fields.map((f) => f.raw)].join("\r\n")}\r\n\r\n`;
    }
    this.frame(h);
    // No placeholder in any form anywhere (most requests) and no body to substitute in: the head
    // goes as it is.
    if (!this.bodySecrets && !this.scanner.find(text)) return { head: text };
    const hostOk = h.host === this.sni && h.method !== "TRACE" && this.allowed.length > 0;
    let line = `${h.method} ${h.target} ${h.version}`;
    if (hostOk) {
      let t = h.target;
      for (const s of this.allowed) if (s.query) t = substituteQuery(s, t);
      if (t !== h.target) this.substituted = true;
      line = `${h.method} ${t} ${h.version}`;
    }
    const outLines = [line];
    for (const f of h.fields) {
      const value = hostOk ? substituteHeader(this.allowed, f.name, f.value) : f.value;
      if (value === f.value) outLines.push(f.raw);
      else {
        this.substituted = true;
        outLines.push(`${f.raw.slice(0, f.raw.indexOf(":"))}: ${value}`);
      }
    }
    // Once a value went out on this connection, what comes back is scanned: asked for uncompressed.
    const replaced = this.identity(outLines, h.fields.findIndex((f) => f.name === "accept-encoding"));
    const joined = outLines.join("\r\n");
    // A placeholder left anywhere in what would go (one search over the whole, and over a line
    // identity() took out; no form spans a line), then, only if there is one, where: the first
    // line holding it is what the guest is told.
    if (this.scanner.find(joined) || (replaced !== undefined && this.scanner.find(replaced))) {
      const why = hostOk ? "" : h.method === "TRACE" ? " (TRACE echoes it back)" : notHere(h.host, this.sni, this.unpinned, "Host");
      const inLine = this.scanner.find(line);
      if (inLine) return { violation: this.violation(inLine, "the request line", true) };
      for (const f of h.fields) {
        const found = this.scanner.find(`${f.name}: ${hostOk ? substituteHeader(this.allowed, f.name, f.value) : f.value}`);
        if (found) return { violation: this.violation(found, `header ${f.name}${why}`, true) };
      }
      return { violation: this.violation((this.scanner.find(joined) ?? this.scanner.find(replaced!))!, `the request head${why}`, true) };
    }
    const bodySecrets = hostOk && this.bodySecrets;
    const encoded = h.fields.some((f) => f.name === "content-encoding" && !/^identity$/i.test(f.value));
    if (bodySecrets && !encoded && (this.state === "length" || this.state === "chunk-size")) {
      // Hold the body whole: its head goes out with the substituted body's length.
      this.held = { lines: outLines, chunked: this.state === "chunk-size", length: this.remaining, raw: Buffer.alloc(0), store: undefined, chunks: { o: 0, spans: [], trailers: false } };
      this.state = "buffer";
      return { head: "" };
    }
    return { head: `${joined}\r\n\r\n` };
  }

  /**
   * Once a value went out on this connection, what comes back is scanned: ask for it uncompressed
   * (`lines` changed in place). Returns the Accept-Encoding line it replaced, if any.
   */
  private identity(lines: string[], field?: number): string | undefined {
    if (!this.substituted) return undefined;
    // (a field line's name is followed by its colon at once: parseRequestHead refuses a space there)
    // (`field`: where Accept-Encoding is among the head's fields, -1 if nowhere; lines[0] is the request line)
    const i = field !== undefined ? (field < 0 ? -1 : field + 1) : lines.findIndex((l, k) => k > 0 && l.charCodeAt(15) === 0x3a && nameIs(l, 0, 15, "accept-encoding"));
    if (i < 0) {
      lines.push("Accept-Encoding: identity");
      return undefined;
    }
    const was = lines[i];
    lines[i] = "Accept-Encoding: identity";
    return was;
  }

  /** A held request: its body substituted, framed by Content-Length; a violation if a placeholder is left. */
  private substituteBody(lines: string[], payload: Buffer): { request: Buffer } | { violation: Violation } | { refusal: Refusal } {
    let body = payload.toString("latin1");
    // (a server that left it unread would send a value put into it to the Host it names)
    if (!payload.length || startsAsRequest(body.slice(0, MAX_HEAD + 2))) {
      if (payload.length) return { refusal: { status: 400, reason: "a request body that begins as a request line (a server that does not read the body would take it for the next request)" } };
    }
    for (const s of this.allowed) if (s.body) body = body.split(s.placeholder).join(Buffer.from(s.value, "utf8").toString("latin1"));
    const found = this.scanner.find(body);
    if (found) return { violation: this.violation(found, "a request body", true) };
    if (body !== payload.toString("latin1")) this.substituted = true;
    const head = lines.filter((l) => !/^(content-length|transfer-encoding)\s*:/i.test(l));
    this.identity(head); // (the lines were all judged with the head)
    head.splice(1, 0, `Content-Length: ${Buffer.byteLength(body, "latin1")}`);
    return { request: Buffer.concat([Buffer.from(`${head.join("\r\n")}\r\n\r\n`, "latin1"), Buffer.from(body, "latin1")]) };
  }

  /** The body's framing, from the strictly parsed head. */
  private frame(h: RequestHead): void {
    if (isWebSocket(h)) {
      this.state = "ws";
      this.ws = { hdr: Buffer.alloc(0), left: 0, mask: Buffer.alloc(4), off: 0, tail: "" };
    } else if (h.upgrade) this.state = "opaque";
    else if (h.body.kind === "chunked") { this.state = "chunk-size"; this.chunkTail = ""; }
    else if (h.body.kind === "length") { this.state = "length"; this.remaining = h.body.length; this.firstLine = this.strict; }
    else this.state = "head";
  }
}

/** A WebSocket frame's first byte (RFC 6455 §5.2): RSV2/RSV3 clear, a defined opcode, control frames FIN. */
function validFirstByte(b: number): boolean {
  const op = b & 0x0f;
  if ((b & 0x30) !== 0) return false;
  if (op <= 2) return true;
  return op >= 8 && op <= 10 && (b & 0xc0) === 0x80; // control: FIN, never compressed
}

/**
 * Whether body bytes begin as a request would, to a server that parses an unread body as the next
 * request: after any CR/LF, a line of at least two words (split as Python's str.split() splits:
 * any space, 0x85 and 0xA0 too) whose first is GET (HTTP/0.9, which Python serves) or whose last
 * begins HTTP/.
 */
export function startsAsRequest(text: string): boolean {
  const line = text.replace(/^[\r\n]+/, "").split("\n", 1)[0]!;
  const words = line.split(/[\s\x1c-\x1f\x85]+/).filter(Boolean);
  return words.length >= 2 && (words[0] === "GET" || words[words.length - 1]!.startsWith("HTTP/"));
}

/** A request upgrading its connection to WebSocket. */
/** Whether a head begins as a request line does: 1 to 20 capital letters, then a space (or nothing yet). */
function startsAsRequestLine(b: Buffer): boolean {
  const n = Math.min(b.length, 21);
  let i = 0;
  while (i < n && b[i]! >= 0x41 && b[i]! <= 0x5a) i++;
  if (i === 0 || i > 20) return false;
  return i === n || b[i] === 0x20;
}

function isWebSocket(h: RequestHead): boolean {
  return h.upgrade && h.fields.some((f) => f.name === "upgrade" && /(^|[\s,])websocket($|[\s,])/i.test(f.value));
}

/**
 * Why no value may go into a request for `host` on a connection to `sni` (" (...)"), or "" when
 * the secret is simply not for this host (the violation's text names the hosts it is for).
 */
export function notHere(host: string, sni: string | undefined, unpinned: boolean, field: string): string {
  if (host !== sni) return ` (${field} ${host} is not the SNI)`;
  if (unpinned) return ` (an address this sandbox's DNS never returned for ${sni})`;
  return "";
}

/** Why a request was blocked (never the value). */
export function forbiddenText(v: Violation): string {
  return `moat: blocked: the placeholder of secret ${v.secret.env} (${v.form}) in ${v.where}; it may be sent only to ${v.secret.hosts.join(", ")}\n`;
}

/** The answer a refused HTTP/1.1 request gets: its status and why; the connection closes. */
export function refusedHttp(r: Refusal): Buffer {
  const body = `moat: refused: ${r.reason}\n`;
  const text = { 400: "Bad Request", 403: "Forbidden", 405: "Method Not Allowed", 413: "Content Too Large", 431: "Request Header Fields Too Large", 501: "Not Implemented" }[r.status] ?? "Refused";
  return Buffer.from(`HTTP/1.1 ${r.status} ${text}\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
}

/** The answer a blocked HTTP/1.1 request gets: 403 and why. */
export function forbidden(v: Violation): Buffer {
  const body = forbiddenText(v);
  return Buffer.from(`HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
}

/** How far dechunk() got in a held body: the next line's offset, the chunks' data so far, whether in the trailers. */
interface Dechunk { o: number; spans: [number, number][]; trailers: boolean; data?: [number, number] }

/**
 * A complete chunked body at the start of `raw` (RFC 9112 §7.1, strictly): its payload and the
 * bytes it used; null if incomplete. Resumes at `st` (what earlier calls parsed of the same, longer
 * `raw`), so each call costs what is new; a line over MAX_LINE is refused rather than searched again.
 */
function dechunk(raw: Buffer, st: Dechunk): { payload: Buffer; used: number } | null {
  for (;;) {
    if (st.data) {
      // A chunk whose size line was read: its data and CRLF, once all here.
      const [start, size] = st.data;
      if (raw.length < start + size + 2) return null;
      if (raw[start + size] !== 0x0d || raw[start + size + 1] !== 0x0a) throw new Error("a chunk not followed by CRLF");
      st.spans.push([start, start + size]);
      st.o = start + size + 2;
      st.data = undefined;
      continue;
    }
    const nl = raw.indexOf("\r\n", st.o);
    if (nl < 0) {
      if (raw.length - st.o > MAX_LINE) throw new Error(`a chunk line or trailer over ${MAX_LINE} bytes`);
      return null;
    }
    if (st.trailers) {
      const blank = nl === st.o;
      if (!blank && !/^[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*$/.test(raw.toString("latin1", st.o, nl))) throw new Error("a malformed trailer field");
      st.o = nl + 2;
      if (blank) return { payload: Buffer.concat(st.spans.map(([a, z]) => raw.subarray(a, z))), used: st.o };
      continue;
    }
    const size = parseChunkSize(raw.toString("latin1", st.o, nl));
    if (size === null) throw new Error("a malformed chunk size line");
    if (size === 0) {
      st.trailers = true;
      st.o = nl + 2;
      continue;
    }
    st.data = [nl + 2, size];
  }
}
