// response-filter.ts — the server's side of an intercepted HTTP/1.1 connection on which secret
// values may have been substituted, scrubbed on its way to the guest: a value the server reflects
// (CORS Access-Control-Allow-Origin, an /echo endpoint, TRACE, an error page) goes back to the
// guest as the placeholder, never as the value.
//
// Theory of operation
// The request side calls request() for each request head it forwards, in order; each response
// answers the oldest one (pipelining), which says whether it can have a body (HEAD) and how the
// guest can be told where it ends (HTTP/1.0 knows no chunked coding).
//   head     bytes up to the blank line, at most MAX_HEAD, parsed strictly: a status line, header
//            fields "name: value", CRLF only — a bare LF, an obs-fold, a bad or conflicting
//            Content-Length / Transfer-Encoding is an error (the proxy closes: bytes it cannot
//            judge never pass). The head is scrubbed whole (header values are where CORS reflects).
//   1xx      no body; 101 (and 2xx to CONNECT) → everything after is an opaque stream, scanned in
//            sameLength mode (WebSocket and other framings count bytes); opaque() does the same.
//   body     HEAD, 204, 304: none. Otherwise chunked, Content-Length or close-delimited, streamed
//            through a ValueScanner (a bounded carry, never the whole body). A replacement changes
//            the length, so bodies are re-framed: to an HTTP/1.1 request as chunked (new chunk
//            sizes), to HTTP/1.0 close-delimited (Content-Length dropped, Connection: close, and
//            `close` tells the proxy to end the connection after the body). Trailers are scrubbed.
//   coding   gzip, x-gzip, deflate, br bodies are decompressed as they stream (node:zlib, fed in
//            slices with a cap on each slice's output and on the total: at most 64× the
//            compressed size + 1 MiB, and 256 MiB), scanned and sent decompressed
//            (Content-Encoding dropped); any other Content-Encoding is an error: a value inside
//            it could not be seen.
import zlib from "node:zlib";
import type { Secret } from "./secrets.js";
import { SecretValues, ValueScanner, type ValueFound } from "./value-scanner.js";
import { badLineEndingText, eachFieldLine, nameIs } from "./http1-head.js";

export const MAX_HEAD = 65536;
const MAX_LINE = 4096; // a chunk-size line
const MAX_TRAILERS = 65536;
const SLICE = 16384; // compressed bytes given to the decoder at once
/** A coded body may expand to at most this many times its size (+ 1 MiB), and to at most MAX_DECODED. */
export const MAX_EXPANSION = 64;
export const MAX_DECODED = 256 << 20;
const EMPTY = Buffer.alloc(0);
const CRLFCRLF = Buffer.from("\r\n\r\n", "latin1");

export interface ScrubResult {
  /** Bytes for the guest now. */
  out: Buffer[];
  /** Values replaced by their placeholder. */
  scrubbed: ValueFound[];
  /** The response cannot be judged: send `out`, then close the connection. */
  error?: string;
  /** The response was close-delimited for an HTTP/1.0 client: send `out`, then end the connection. */
  close?: boolean;
}

type State = "head" | "length" | "chunk-size" | "chunk-data" | "chunk-crlf" | "trailers" | "eof" | "opaque" | "done";

interface Pending { method: string; http10: boolean }

/**
 * A zlib/brotli decoder driven synchronously, chunk by chunk, in bounded steps. node:zlib has no
 * public API for that (its *Sync functions are one-shot: they close the stream after one chunk),
 * so this drives the native handle the way node's own processChunkSync does, without the close:
 * handle.writeSync(flush, in, inOff, inLen, out, outOff, outLen) leaves [availOut, availIn] in
 * _writeState; errors arrive through the stream (errored). Stable since node 12; checked at start.
 */
interface ZlibHandle { writeSync(flush: number, input: Buffer, inOff: number, inLen: number, out: Buffer, outOff: number, outLen: number): void }
interface ZlibInternals { _handle: ZlibHandle | null; _writeState: Uint32Array; errored: Error | null; close(): void; on(e: "error", f: () => void): void }
const OUT_STEP = 65536;

/** The decoder for a Content-Encoding (gzip, x-gzip, deflate — zlib or raw, told by `start` — br), or undefined. */
export function decoderFor(coding: string, start: Buffer): SyncDecoder | undefined {
  const zlibWrapped = start.length >= 2 && (start[0]! & 0x0f) === 8 && ((start[0]! << 8) | start[1]!) % 31 === 0;
  switch (coding) {
    case "gzip": case "x-gzip": return new SyncDecoder("gzip");
    case "deflate": return new SyncDecoder(zlibWrapped ? "deflate" : "deflate-raw");
    case "br": return new SyncDecoder("br");
    default: return undefined;
  }
}

export class SyncDecoder {
  private readonly z: ZlibInternals;
  constructor(kind: "gzip" | "deflate" | "deflate-raw" | "br") {
    const z = (kind === "br" ? zlib.createBrotliDecompress() : kind === "deflate" ? zlib.createInflate() : kind === "deflate-raw" ? zlib.createInflateRaw() : zlib.createGunzip()) as unknown as ZlibInternals;
    if (typeof z._handle?.writeSync !== "function" || !(z._writeState instanceof Uint32Array)) throw new Error("this node's zlib cannot be driven synchronously: compressed responses cannot be scanned");
    z.on("error", () => {}); // (reported through `errored`, synchronously)
    this.z = z;
    this.flush = kind === "br" ? zlib.constants.BROTLI_OPERATION_PROCESS : zlib.constants.Z_NO_FLUSH;
    this.finish = kind === "br" ? zlib.constants.BROTLI_OPERATION_FINISH : zlib.constants.Z_FINISH;
    this.br = kind === "br";
  }
  private readonly flush: number;
  private readonly finish: number;
  private readonly br: boolean;

  /** Decode `input`; each output piece is handed to `sink` as it comes (at most OUT_STEP bytes). */
  write(input: Buffer, final: boolean, sink: (b: Buffer) => void): void {
    const z = this.z;
    const h = z._handle;
    if (!h) throw new Error("the decoder was closed");
    let inOff = 0;
    let inLen = input.length;
    for (;;) {
      const out = Buffer.allocUnsafe(OUT_STEP);
      h.writeSync(final ? this.finish : this.flush, input, inOff, inLen, out, 0, OUT_STEP);
      if (z.errored) throw z.errored;
      const availOut = z._writeState[0]!;
      const availIn = z._writeState[1]!;
      const have = OUT_STEP - availOut;
      if (have) sink(out.subarray(0, have));
      inOff += inLen - availIn;
      inLen = availIn;
      if (availOut !== 0) {
        // Output room left: the decoder took all it could. A zlib stream that ended leaves input
        // unread (what follows its end); brotli reports it by an error.
        if (inLen && !this.br) {
          throw new Error("data after the end of the coded stream");
        }
        return;
      }
    }
  }

  close(): void {
    this.z.close();
  }
}

export class ResponseScrubber {
  private readonly values: SecretValues;
  private readonly pending: Pending[] = [];
  private state: State = "head";
  private head: Buffer = Buffer.alloc(0);
  private remaining = 0;
  private line = "";
  private trailers: Buffer[] = [];
  private trailerSize = 0;
  private scanner: ValueScanner;
  /** Output framing of the current body. */
  private chunkedOut = false;
  private closeAfter = false;
  private inflater: SyncDecoder | undefined;
  private codingName = "";
  private codedStart: Buffer = Buffer.alloc(0);
  private inTotal = 0;
  private outTotal = 0;
  private failed: string | undefined;

  constructor(secrets: readonly Secret[]) {
    this.values = SecretValues.of(secrets);
    this.scanner = new ValueScanner(this.values);
  }

  /**
   * From here on the server's bytes are an opaque stream (after 101 Switching Protocols, a
   * CONNECT tunnel, or when the request side stopped parsing HTTP): scanned in sameLength mode,
   * since whatever framing it has (WebSocket frames, ...) counts bytes. Returns what a partly
   * received head held, scanned the same way. (Called mid-body, the guest sees the rest of that
   * body unframed: for a connection whose HTTP can no longer be followed.)
   */
  opaque(found: ValueFound[] = []): Buffer[] {
    if (this.state === "opaque" || this.failed) return [];
    this.scanner = new ValueScanner(this.values, true);
    this.state = "opaque";
    const held = this.head;
    this.head = Buffer.alloc(0);
    return held.length ? this.scanner.push(held, found) : [];
  }

  /** A request head was forwarded (in order): its method, and whether it was HTTP/1.0. */
  request(method: string, http10: boolean): void {
    this.pending.push({ method: method.toUpperCase(), http10 });
  }

  push(chunk: Buffer): ScrubResult {
    const out: Buffer[] = [];
    const scrubbed: ValueFound[] = [];
    if (this.failed) return { out, scrubbed, error: this.failed };
    try {
      this.feed(chunk, out, scrubbed);
    } catch (e) {
      this.failed = e instanceof ResponseError ? e.message : `the response could not be scanned: ${(e as Error).message}`;
      this.inflater?.close();
      return { out, scrubbed, error: this.failed };
    }
    return this.state === "done" ? { out, scrubbed, close: true } : { out, scrubbed };
  }

  /** Whether bytes are held back (idle() would release some). */
  get holding(): boolean {
    return !this.failed && this.scanner.held > 0;
  }

  /**
   * The server has sent nothing for a while (call it after ~50 ms of quiet): bytes the scanner
   * holds back because they could begin a value go out now, so a streamed response (server-sent
   * events, long polling) is not stalled on them. See ValueScanner.releaseHeld.
   */
  idle(): ScrubResult {
    const out: Buffer[] = [];
    const scrubbed: ValueFound[] = [];
    if (this.failed || this.scanner.held === 0) return { out, scrubbed };
    const released = this.scanner.releaseHeld(scrubbed);
    const n = released.reduce((k, b) => k + b.length, 0);
    if (!n) return { out, scrubbed };
    if (this.state === "opaque" || !this.chunkedOut) out.push(...released);
    else out.push(Buffer.from(`${n.toString(16)}\r\n`), ...released, Buffer.from("\r\n"));
    return { out, scrubbed };
  }

  /** The server closed: what is held back, and the end of a close-delimited body. */
  end(): Buffer[] {
    if (this.failed) return [];
    const out: Buffer[] = [];
    const found: ValueFound[] = [];
    try {
      if (this.state === "eof") {
        this.body(Buffer.alloc(0), out, found, true);
        if (this.chunkedOut) out.push(Buffer.from("0\r\n\r\n"));
      } else if (this.state === "opaque") {
        out.push(...this.scanner.flush(found));
      } else if (this.state === "length" || this.state === "chunk-data" || this.state === "chunk-size" || this.state === "chunk-crlf") {
        // Cut short by the server: what was held goes (scanned), the guest sees the body end early.
        const rest: Buffer[] = [];
        this.body(Buffer.alloc(0), rest, found, true);
        out.push(...rest);
      }
    } catch {
      // a corrupt compressed tail: nothing more to send
    }
    this.state = "done";
    return out;
  }

  private feed(chunk: Buffer, out: Buffer[], found: ValueFound[]): void {
    let b = chunk;
    while (b.length) {
      switch (this.state) {
        case "done":
          return; // after a close-delimited body the connection ends: nothing more goes to the guest
        case "opaque":
          out.push(...this.scanner.push(b, found));
          return;
        case "eof":
          this.body(b, out, found, false);
          return;
        case "head": {
          const prev = this.head.length;
          this.head = prev ? Buffer.concat([this.head, b]) : b;
          const end = this.head.indexOf(CRLFCRLF, Math.max(0, prev - 3));
          if (end < 0 || end + 4 > MAX_HEAD) {
            if (this.head.length > MAX_HEAD || (end >= 0 && end + 4 > MAX_HEAD)) throw new ResponseError(`a response head over ${MAX_HEAD} bytes`);
            this.checkBareLf(this.head, Math.max(0, prev - 1));
            return;
          }
          const head = this.head.subarray(0, end + 4);
          b = this.head.subarray(end + 4);
          this.head = EMPTY;
          b = b.subarray(this.response(head, b, out, found));
          continue;
        }
        case "length": {
          const n = Math.min(this.remaining, b.length);
          this.remaining -= n;
          this.body(b.subarray(0, n), out, found, this.remaining === 0);
          b = b.subarray(n);
          if (this.remaining === 0) this.bodyDone(out);
          continue;
        }
        case "chunk-data": {
          const n = Math.min(this.remaining, b.length);
          this.remaining -= n;
          this.body(b.subarray(0, n), out, found, false);
          b = b.subarray(n);
          if (this.remaining === 0) { this.state = "chunk-crlf"; this.remaining = 2; }
          continue;
        }
        case "chunk-crlf": {
          const want = this.remaining === 2 ? 0x0d : 0x0a;
          if (b[0] !== want) throw new ResponseError("a chunk of the response body is not followed by CRLF");
          b = b.subarray(1);
          if (--this.remaining === 0) this.state = "chunk-size";
          continue;
        }
        case "chunk-size":
        case "trailers": {
          const nl = b.indexOf(0x0a);
          const take = nl < 0 ? b.length : nl + 1;
          this.line += b.toString("latin1", 0, take);
          b = b.subarray(take);
          if (this.line.length > MAX_LINE) throw new ResponseError(`a ${this.state === "chunk-size" ? "chunk-size" : "trailer"} line over ${MAX_LINE} bytes`);
          if (nl < 0) continue;
          const line = this.line;
          this.line = "";
          if (!line.endsWith("\r\n") || line.indexOf("\r") !== line.length - 2) throw new ResponseError("a bare LF or CR in the chunked framing of a response");
          const text = line.slice(0, -2);
          if (this.state === "chunk-size") {
            const m = /^([0-9A-Fa-f]{1,12})[ \t]*(;.*)?$/.exec(text);
            if (!m) throw new ResponseError(`a chunk size ${this.quote(text, 40)} that is not hexadecimal`);
            const size = parseInt(m[1]!, 16);
            if (size === 0) { this.state = "trailers"; this.trailers = []; this.trailerSize = 0; continue; }
            this.state = "chunk-data";
            this.remaining = size;
            continue;
          }
          // trailers
          if (text === "") {
            this.body(Buffer.alloc(0), out, found, true);
            const t = this.trailers.length ? this.scanner.scrub(Buffer.concat(this.trailers), found) : Buffer.alloc(0);
            if (this.chunkedOut) out.push(Buffer.from("0\r\n"), t, Buffer.from("\r\n"));
            this.bodyDone(out);
            continue;
          }
          if (/^[ \t]/.test(text)) throw new ResponseError("an obs-fold in the trailers of a response");
          if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+:/.test(text)) throw new ResponseError("a trailer line that is not a header field");
          this.trailerSize += line.length;
          if (this.trailerSize > MAX_TRAILERS) throw new ResponseError(`trailers over ${MAX_TRAILERS} bytes`);
          this.trailers.push(Buffer.from(line, "latin1"));
          continue;
        }
      }
    }
  }

  /**
   * The server's text quoted in a reason (for the audit log, the library's callback): its values
   * replaced first, then cut, so no part of one is ever quoted.
   */
  private quote(text: string, n: number): string {
    return JSON.stringify(new ValueScanner(this.values).scrub(Buffer.from(text, "latin1"), []).toString("latin1").slice(0, n));
  }

  private checkBareLf(h: Buffer, from = 0): void {
    for (let i = h.indexOf(0x0a, from); i >= 0; i = h.indexOf(0x0a, i + 1)) {
      if (i === 0 || h[i - 1] !== 0x0d) throw new ResponseError("a bare LF in a response head (only CRLF ends a line)");
    }
  }

  /**
   * A whole response head: judged, re-framed, scrubbed, sent; the body's state set. `rest` is what
   * follows it in the same buffer: a Content-Length body there whole, with no value in it or in
   * the head, goes as the server sent it (no re-framing: its length does not change). Returns how
   * many bytes of `rest` it took.
   */
  private response(head: Buffer, rest: Buffer, out: Buffer[], found: ValueFound[]): number {
    const text = head.toString("latin1");
    // (one search for a bare CR or LF and a NUL over the whole head: most heads need no more)
    const suspect = badLineEndingText(text) >= 0 || text.includes("\0");
    if (suspect) this.checkBareLf(head);
    const eol = text.indexOf("\r\n");
    const statusLine = text.slice(0, eol);
    const status = /^HTTP\/1\.([01]) ([1-9]\d\d)(?: [^\r\n]*)?$/.exec(statusLine);
    if (!status) throw new ResponseError(`a status line ${this.quote(statusLine, 60)} that is not HTTP/1.x`);
    const code = Number(status[2]);
    const respHttp10 = status[1] === "0";
    // What framing needs, read without a string per field (the common response is passed as it
    // came); every line judged all the same.
    const te: string[] = [];
    const cl: string[] = [];
    const ceValues: string[] = [];
    eachFieldLine(text, eol + 2, (why, line) => new ResponseError(why === "fold"
      ? "an obs-fold (a header line beginning with whitespace) in a response head"
      : `a response header line ${this.quote(line, 60)} that is not "name: value"`), (ls, ne, vs, ve) => {
      for (let i = vs; suspect && i < ve; i++) {
        const c = text.charCodeAt(i);
        if (c === 0 || c === 0x0d) throw new ResponseError(`response header ${text.slice(ls, ne)} holds a NUL or CR`);
      }
      if (nameIs(text, ls, ne, "transfer-encoding")) te.push(text.slice(vs, ve));
      else if (nameIs(text, ls, ne, "content-length")) cl.push(text.slice(vs, ve));
      else if (nameIs(text, ls, ne, "content-encoding")) ceValues.push(text.slice(vs, ve));
    });
    const req = code >= 200 || code === 101 ? this.pending.shift() : this.pending[0];
    if (!req) throw new ResponseError(`a response (${code}) to no request`);
    // Interim responses: no body; the final one follows. 101: the connection becomes something else.
    if (code < 200) {
      out.push(this.scanner.scrub(head, found));
      if (code === 101) this.opaque(found);
      return 0;
    }
    if (req.method === "CONNECT" && code < 300) {
      out.push(this.scanner.scrub(head, found));
      this.opaque(found);
      return 0;
    }
    const noBody = req.method === "HEAD" || code === 204 || code === 304;
    // Framing, judged strictly (RFC 9112 §6): conflicting framing is how responses get smuggled.
    let chunkedIn = false;
    let length = -1;
    if (te.length) {
      if (cl.length) throw new ResponseError("a response with both Transfer-Encoding and Content-Length");
      const codings = te.flatMap((v) => v.split(",")).map((s) => s.trim().toLowerCase()).filter(Boolean);
      if (codings.length !== 1 || codings[0] !== "chunked") throw new ResponseError(`a response Transfer-Encoding ${this.quote(te.join(", "), 80)} other than chunked`);
      if (respHttp10) throw new ResponseError("an HTTP/1.0 response with Transfer-Encoding");
      chunkedIn = true;
    } else if (cl.length) {
      const vals = cl.length === 1 && !cl[0]!.includes(",") ? [cl[0]!] : [...new Set(cl.flatMap((v) => v.split(",")).map((s) => s.trim()))];
      if (vals.length !== 1) throw new ResponseError("a response with conflicting Content-Length values");
      const v = vals[0]!;
      if (!/^\d{1,15}$/.test(v)) throw new ResponseError(`a response Content-Length ${this.quote(v, 30)} that is not a number`);
      length = Number(v);
    }
    if (noBody) {
      out.push(this.scanner.scrub(head, found));
      this.state = "head";
      return 0;
    }
    const ce = !ceValues.length ? [] : ceValues.flatMap((v) => v.split(",")).map((s) => s.trim().toLowerCase()).filter((s) => s && s !== "identity");
    if (ce.length > 1) throw new ResponseError(`a response body in ${ce.length} content codings (${this.quote(ce.join(", "), 80)}): only one can be scanned`);
    this.inflater = undefined;
    this.codedStart = Buffer.alloc(0);
    this.codingName = ce[0] ?? "";
    if (this.codingName && !["gzip", "x-gzip", "deflate", "br"].includes(this.codingName)) {
      throw new ResponseError(`a response body in Content-Encoding ${this.quote(this.codingName, 80)}, which cannot be scanned for secret values`);
    }
    this.inTotal = this.outTotal = 0;
    if (!this.codingName && length >= 0 && rest.length >= length && rest.buffer === head.buffer && rest.byteOffset === head.byteOffset + head.length) {
      // The whole response is here and the same length whatever the framing: when neither the
      // head nor the body holds a value, it goes as it came (the common case, at no copy).
      const whole = Buffer.from(head.buffer, head.byteOffset, head.length + length);
      const seen: ValueFound[] = [];
      if (this.scanner.scrub(whole, seen) === whole && seen.length === 0) {
        out.push(whole);
        this.state = "head";
        return length;
      }
    }
    this.scanner = new ValueScanner(this.values);
    // The head, re-framed: the body's length may change.
    this.chunkedOut = !req.http10 && !respHttp10;
    this.closeAfter = !this.chunkedOut;
    const drop = new Set(["content-length", "transfer-encoding", ...(this.codingName ? ["content-encoding"] : []), ...(this.closeAfter ? ["connection", "keep-alive"] : [])]);
    const kept: string[] = [];
    eachFieldLine(text, eol + 2, () => new ResponseError("unreachable"), (ls, ne, vs, ve) => {
      if (!drop.has(text.slice(ls, ne).toLowerCase())) kept.push(`${text.slice(ls, ne)}: ${text.slice(vs, ve)}`);
    });
    kept.push(this.chunkedOut ? "Transfer-Encoding: chunked" : "Connection: close");
    const rebuilt = Buffer.from(`${statusLine}\r\n${kept.join("\r\n")}\r\n\r\n`, "latin1");
    out.push(this.scanner.scrub(rebuilt, found));
    if (chunkedIn) this.state = "chunk-size";
    else if (length >= 0) {
      this.state = "length";
      this.remaining = length;
      if (length === 0) { this.body(Buffer.alloc(0), out, found, true); this.bodyDone(out); }
    } else this.state = "eof";
    return 0;
  }

  /** Body bytes (as the server framed them, the framing removed): decoded, scanned, framed for the guest. */
  private body(b: Buffer, out: Buffer[], found: ValueFound[], last: boolean): void {
    const plain: Buffer[] = [];
    if (this.codingName) this.decode(b, plain, last);
    else if (b.length) plain.push(b);
    const scanned: Buffer[] = [];
    for (const p of plain) scanned.push(...this.scanner.push(p, found));
    if (last) scanned.push(...this.scanner.flush(found));
    const n = scanned.reduce((s, x) => s + x.length, 0);
    if (!n) return;
    if (this.chunkedOut) out.push(Buffer.from(`${n.toString(16)}\r\n`), ...scanned, Buffer.from("\r\n"));
    else out.push(...scanned);
  }

  /** The end of a body: the next response's head, or (close-delimited to the guest) the end. */
  private bodyDone(out: Buffer[]): void {
    if (this.state === "length" && this.chunkedOut) out.push(Buffer.from("0\r\n\r\n"));
    this.inflater?.close();
    this.inflater = undefined;
    this.state = this.closeAfter ? "done" : "head";
  }

  private decode(b: Buffer, plain: Buffer[], last: boolean): void {
    if (!this.inflater) {
      // "deflate" is told apart (zlib-wrapped or raw) by its first two bytes: wait for them.
      if (this.codedStart.length) { b = Buffer.concat([this.codedStart, b]); this.codedStart = Buffer.alloc(0); }
      if (b.length < 2 && !last) { this.codedStart = Buffer.from(b); return; }
      // "deflate" is meant to be zlib-wrapped (RFC 9110 §8.4.1.2); some servers send it raw.
      this.inflater = decoderFor(this.codingName, b);
    }
    const z = this.inflater!;
    if (!b.length && !last) return;
    if (!b.length && this.inTotal === 0) return; // an empty body: nothing was coded
    // Fed in slices, so that what one slice expands to is checked before the next is decoded.
    for (let off = 0; off < b.length || (last && off === 0); off += SLICE) {
      const slice = b.subarray(off, off + SLICE);
      const end = last && off + SLICE >= b.length;
      try {
        z.write(slice, end, (o) => {
          this.outTotal += o.length;
          if (this.outTotal > MAX_DECODED || this.outTotal > (this.inTotal + slice.length) * MAX_EXPANSION + (1 << 20)) {
            throw new ResponseError(`a ${this.codingName} response body expanding more than ${MAX_EXPANSION}× (or beyond ${MAX_DECODED >> 20} MiB): refused as a compression bomb`);
          }
          plain.push(Buffer.from(o));
        });
      } catch (e) {
        if (e instanceof ResponseError) throw e;
        throw new ResponseError(`a ${this.codingName} response body that does not decode: ${(e as Error).message}`);
      }
      this.inTotal += slice.length;
    }
  }
}

class ResponseError extends Error {}
