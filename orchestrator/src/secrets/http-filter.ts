// http-filter.ts — the guest's side of an intercepted TLS connection, filtered on its way to the
// server: placeholders become secret values where they may, and are violations everywhere else.
//
// Theory of operation
// A connection to a host that some secret is for (SNI matches the secret's patterns and this
// sandbox's DNS pinned that name to the address) is parsed as HTTP/1.1, request by request
// (pipelined and kept-alive requests each judged):
//   head    bytes up to the blank line (at most MAX_HEAD): request line and header fields. Each
//           header value's placeholders are replaced by the value of a secret that is allowed for
//           this host, and `Authorization: Basic` is decoded, substituted and encoded again — but
//           only when the request's Host equals the SNI. Any placeholder left (another secret's,
//           one in the request line, a Host that is not the SNI) is a violation, and the request
//           never leaves.
//   body    Content-Length or chunked framing followed to the next request; the bytes are
//           scanned, not changed (substitution in bodies is not supported: a placeholder there is
//           a violation).
//   opaque  after an Upgrade (WebSocket), or a head over MAX_HEAD: scanned like any other stream.
// Any other connection is opaque from the start. Scanning holds back a tail that could be the
// start of a placeholder form, so a violation is caught before any of the placeholder's bytes
// leave, however it is split across writes.
import { PlaceholderScanner, secretsFor, substituteHeader, substituteQuery, type Secret, type Found } from "./secrets.js";

export const MAX_HEAD = 65536;

export interface Violation { secret: Secret; where: string; form: string; http: boolean }

export interface FilterResult {
  /** Bytes to send upstream now. */
  out: Buffer[];
  violation?: Violation;
}

type State = "head" | "length" | "chunk-size" | "chunk-data" | "chunk-crlf" | "trailers" | "opaque" | "buffer";

/** Largest request body held to substitute a secret in it; over it, a body with a placeholder is a violation. */
export const MAX_BODY = 1 << 20;

export class RequestFilter {
  private state: State;
  private head: Buffer = Buffer.alloc(0);
  private remaining = 0; // body bytes left (length / chunk-data), or CRLF bytes left (chunk-crlf)
  private line = ""; // chunk-size and trailer lines
  private http: boolean | undefined; // an opaque stream that began as an HTTP/1.x request (a violation gets a 403)
  // "buffer": a body held whole to substitute in it (secrets with inject.body), its head waiting
  private held: { lines: string[]; chunked: boolean; length: number; raw: Buffer[]; size: number } | undefined;
  private readonly scanner: PlaceholderScanner;
  /** Secrets whose value may be put into requests on this connection. */
  private readonly allowed: Secret[];

  constructor(secrets: readonly Secret[], private readonly sni: string | undefined, pinned: boolean) {
    this.allowed = secretsFor(secrets, sni, pinned);
    this.state = this.allowed.length ? "head" : "opaque";
    this.scanner = new PlaceholderScanner(secrets);
  }

  /** Whether this connection parses HTTP/1.1 (a host some secret is for). */
  get substituting(): boolean {
    return this.allowed.length > 0;
  }

  push(chunk: Buffer): FilterResult {
    const out: Buffer[] = [];
    let b = chunk;
    while (b.length) {
      if (this.state === "opaque") {
        this.http ??= /^[A-Z]{3,10} \S+ HTTP\/1\.[01]\r?\n/.test(b.toString("latin1", 0, 2048));
        return this.scan(b, out, this.http ? "a request" : "the stream", this.http);
      }
      if (this.state === "head") {
        const prev = this.head.length;
        this.head = prev ? Buffer.concat([this.head, b]) : b;
        const end = this.head.indexOf("\r\n\r\n", Math.max(0, prev - 3));
        if (end < 0) {
          if (this.head.length > MAX_HEAD) {
            // Too big to judge as a whole: from here on, a stream like any other.
            const h = this.head;
            this.head = Buffer.alloc(0);
            this.state = "opaque";
            return this.scan(h, out, "an oversized request head", true);
          }
          return { out };
        }
        const head = this.head.subarray(0, end + 4);
        b = this.head.subarray(end + 4);
        this.head = Buffer.alloc(0);
        const r = this.judgeHead(head.toString("latin1"));
        if ("violation" in r) return { out, violation: r.violation };
        if (r.head) out.push(Buffer.from(r.head, "latin1"));
        continue;
      }
      if (this.state === "buffer") {
        const h = this.held!;
        h.raw.push(b);
        h.size += b.length;
        b = Buffer.alloc(0);
        const raw = Buffer.concat(h.raw);
        h.raw = [raw];
        const body = h.chunked ? dechunk(raw) : raw.length >= h.length ? { payload: raw.subarray(0, h.length), used: h.length } : null;
        if (!body) {
          if (h.size > MAX_BODY + 65536) {
            // Too big to hold: judged as a stream from here (a placeholder in it is a violation).
            this.held = undefined;
            this.state = "opaque";
            out.push(Buffer.from(`${h.lines.join("\r\n")}\r\n\r\n`, "latin1"));
            return this.scan(raw, out, "an oversized request body", true);
          }
          return { out };
        }
        this.held = undefined;
        this.state = "head";
        const r = this.substituteBody(h.lines, body.payload);
        if ("violation" in r) return { out, violation: r.violation };
        out.push(r.request);
        b = raw.subarray(body.used); // the next request, pipelined
        continue;
      }
      if (this.state === "length" || this.state === "chunk-data") {
        const n = Math.min(this.remaining, b.length);
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
        out.push(b.subarray(0, n));
        this.remaining -= n;
        b = b.subarray(n);
        if (this.remaining === 0) this.state = "chunk-size";
        continue;
      }
      // chunk-size and trailers: line by line.
      const nl = b.indexOf("\n");
      const take = nl < 0 ? b.length : nl + 1;
      this.line += b.toString("latin1", 0, take);
      out.push(b.subarray(0, take));
      b = b.subarray(take);
      if (this.line.length > 8192) { this.state = "opaque"; this.line = ""; continue; } // not chunked framing after all: just scan
      if (nl < 0) continue;
      const line = this.line.trim();
      this.line = "";
      if (this.state === "chunk-size") {
        const size = parseInt(line.split(";")[0]!, 16);
        if (!Number.isFinite(size) || size < 0) { this.state = "opaque"; continue; }
        if (size === 0) this.state = "trailers";
        else { this.state = "chunk-data"; this.remaining = size; }
      } else if (line === "") {
        this.state = "head"; // trailers ended: the next request
      }
    }
    return { out };
  }

  /** The guest's stream ended: what was held back goes. */
  end(): Buffer[] {
    return [this.head, this.scanner.flush()].filter((b) => b.length);
  }

  private scan(b: Buffer, out: Buffer[], where: string, http: boolean): FilterResult {
    const r = this.scanner.push(b);
    if (r.found) return { out, violation: this.violation(r.found, where, http) };
    if (r.release.length) out.push(r.release);
    return { out };
  }

  private violation(f: Found, where: string, http: boolean): Violation {
    return { secret: f.secret, where: `${where}${this.sni ? ` to ${this.sni}` : ""}`, form: f.form, http };
  }

  /** One request head: substituted where allowed; a violation if a placeholder would remain. */
  private judgeHead(text: string): { head: string } | { violation: Violation } {
    const lines = text.slice(0, -4).split("\r\n");
    // No placeholder in any form anywhere (most requests) and no body to substitute in: the head
    // goes as it is.
    if (!this.allowed.some((x) => x.body) && !this.scanner.find(text)) {
      this.frame(lines);
      return { head: text };
    }
    const requestLine = lines[0] ?? "";
    const fields = lines.slice(1).map((l) => {
      const c = l.indexOf(":");
      return c < 0 ? { name: "", value: l, raw: l } : { name: l.slice(0, c).trim().toLowerCase(), value: l.slice(c + 1).trim(), raw: l };
    });
    const host = fields.find((f) => f.name === "host")?.value.toLowerCase().replace(/:\d+$/, "").replace(/\.$/, "");
    const hostOk = host !== undefined && host === this.sni;
    const checkRest = (s: string, where: string): Violation | undefined => {
      const found = this.scanner.find(s);
      return found ? this.violation(found, where, true) : undefined;
    };
    let line = requestLine;
    if (hostOk) {
      // METHOD SP target SP version: the query of the target, for secrets that allow it.
      const [method, target, version] = line.split(" ");
      if (target !== undefined && version !== undefined) {
        let t = target;
        for (const s of this.allowed) if (s.query) t = substituteQuery(s, t);
        line = `${method} ${t} ${version}`;
      }
    }
    const inLine = checkRest(line, "the request line");
    if (inLine) return { violation: inLine };
    const outLines = [line];
    for (const f of fields) {
      let value = f.value;
      if (hostOk && f.name) value = substituteHeader(this.allowed, f.name, value);
      const v = checkRest(`${f.name}: ${value}`, `header ${f.name || "(malformed)"}${hostOk ? "" : host === undefined ? " (no Host)" : ` (Host ${host} is not the SNI)`}`);
      if (v) return { violation: v };
      outLines.push(f.name && value !== f.value ? `${f.raw.slice(0, f.raw.indexOf(":"))}: ${value}` : f.raw);
    }
    this.frame(lines);
    const bodySecrets = hostOk && this.allowed.some((x) => x.body);
    const encoded = fields.some((f) => f.name === "content-encoding" && !/^identity$/i.test(f.value));
    if (bodySecrets && !encoded && (this.state === "length" || this.state === "chunk-size")) {
      // Hold the body whole: its head goes out with the substituted body's length.
      this.held = { lines: outLines, chunked: this.state === "chunk-size", length: this.remaining, raw: [], size: 0 };
      this.state = "buffer";
      return { head: "" };
    }
    return { head: `${outLines.join("\r\n")}\r\n\r\n` };
  }

  /** A held request: its body substituted, framed by Content-Length; a violation if a placeholder is left. */
  private substituteBody(lines: string[], payload: Buffer): { request: Buffer } | { violation: Violation } {
    let body = payload.toString("latin1");
    for (const s of this.allowed) if (s.body) body = body.split(s.placeholder).join(Buffer.from(s.value, "utf8").toString("latin1"));
    const found = this.scanner.find(body);
    if (found) return { violation: this.violation(found, "a request body", true) };
    const head = lines.filter((l) => !/^(content-length|transfer-encoding)\s*:/i.test(l));
    head.splice(1, 0, `Content-Length: ${Buffer.byteLength(body, "latin1")}`);
    return { request: Buffer.concat([Buffer.from(`${head.join("\r\n")}\r\n\r\n`, "latin1"), Buffer.from(body, "latin1")]) };
  }

  /** The body's framing from a head's lines: chunked wins over Content-Length (RFC 9112 §6.3). */
  private frame(lines: string[]): void {
    let te = "";
    let cl: string | undefined;
    let upgrade = false;
    let connection = "";
    for (let i = 1; i < lines.length; i++) {
      const l = lines[i]!;
      const c = l.indexOf(":");
      if (c < 0) continue;
      const name = l.slice(0, c).trim().toLowerCase();
      const value = l.slice(c + 1).trim();
      if (name === "transfer-encoding") te = value.toLowerCase();
      else if (name === "content-length") cl = value;
      else if (name === "upgrade") upgrade = true;
      else if (name === "connection") connection = value;
    }
    if ((upgrade && /upgrade/i.test(connection)) || /^connect /i.test(lines[0] ?? "")) this.state = "opaque";
    else if (te.includes("chunked")) this.state = "chunk-size";
    else if (cl !== undefined && /^\d+$/.test(cl) && Number(cl) > 0) { this.state = "length"; this.remaining = Number(cl); }
    else if (cl !== undefined && !/^\d+$/.test(cl)) this.state = "opaque"; // unparseable framing: just scan
    else this.state = "head";
  }
}

/** Why a request was blocked (never the value). */
export function forbiddenText(v: Violation): string {
  return `moat: blocked: the placeholder of secret ${v.secret.env} (${v.form}) in ${v.where}; it may be sent only to ${v.secret.hosts.join(", ")}\n`;
}

/** The answer a blocked HTTP/1.1 request gets: 403 and why. */
export function forbidden(v: Violation): Buffer {
  const body = forbiddenText(v);
  return Buffer.from(`HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
}

/** A complete chunked body at the start of `raw` (RFC 9112 §7.1): its payload and the bytes it used; null if incomplete. */
function dechunk(raw: Buffer): { payload: Buffer; used: number } | null {
  const parts: Buffer[] = [];
  let o = 0;
  for (;;) {
    const nl = raw.indexOf("\r\n", o);
    if (nl < 0) return null;
    const size = parseInt(raw.toString("latin1", o, nl).split(";")[0]!.trim(), 16);
    if (!Number.isFinite(size) || size < 0) throw new Error("a malformed chunk size");
    o = nl + 2;
    if (size === 0) {
      // Trailers, up to the blank line.
      for (;;) {
        const end = raw.indexOf("\r\n", o);
        if (end < 0) return null;
        const blank = end === o;
        o = end + 2;
        if (blank) return { payload: Buffer.concat(parts), used: o };
      }
    }
    if (raw.length < o + size + 2) return null;
    parts.push(raw.subarray(o, o + size));
    o += size + 2;
  }
}
