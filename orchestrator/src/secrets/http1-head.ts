// http1-head.ts — an HTTP/1.1 request head read as the strictest server reads it (RFC 9112), so
// that what moat judges (the authority a request is for, where its body ends) is what every
// server behind it will act on. Anything two parsers could read differently is refused, not
// guessed at: a parser differential is where a request smuggles past the proxy (RFC 9112 §11).
//
// Refused (each with a reason the guest is told):
//   line endings   a bare LF or bare CR anywhere in the head (§2.2: some servers end lines at LF)
//   request line   not exactly `token SP target SP HTTP/1.x`; a target with controls, spaces,
//                  non-ASCII or a fragment; CONNECT (authority-form: a tunnel moat cannot judge);
//                  `*` except for OPTIONS; an absolute-form target with userinfo, or whose
//                  authority is not the Host field's (§3.2.2: servers act on the target's)
//   fields         obs-fold (§5.2), whitespace before the colon (§5.1), a name that is not a
//                  token, a value with controls (§5.5)
//   Host           missing, repeated, or not a host[:port] (§3.2)
//   framing        Transfer-Encoding with Content-Length, Transfer-Encoding that is not exactly
//                  `chunked`, repeated, or in HTTP/1.0; Content-Length not digits, or repeated (§6)
// The checks are llhttp's strict mode (Node's own parser) or stricter; test/unit/http1-head.test.ts
// holds the two side by side.

export type BodyFraming = { kind: "none" } | { kind: "length"; length: number } | { kind: "chunked" };

export interface Field { name: string; value: string; raw: string }

export interface RequestHead {
  method: string;
  target: string;
  version: "HTTP/1.1" | "HTTP/1.0";
  fields: Field[];
  /** The authority the request is for, lower-case, without port or final dot (target's, else Host). */
  host: string;
  /** Whether the target is absolute-form (scheme://authority/...). */
  absolute: boolean;
  body: BodyFraming;
  /** Connection: upgrade with Upgrade: after this request the connection may stop being HTTP. */
  upgrade: boolean;
  /** The head as parsed (latin1, through its blank line). */
  text: string;
}

export class HeadError extends Error {
  constructor(readonly status: 400 | 403 | 405 | 431 | 501, message: string) {
    super(message);
  }
}

// tchar (RFC 9110 §5.6.2) and field-value bytes (VCHAR, obs-text, SP, HTAB: §5.5), by byte.
const TCHAR = new Uint8Array(256);
for (const c of "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") TCHAR[c.charCodeAt(0)] = 1;
const FIELD_BYTE = new Uint8Array(256).fill(1, 0x20, 0x7f).fill(1, 0x80, 0x100);
FIELD_BYTE[0x09] = 1;

/** Whether text[from, to) is a token: one or more tchar. */
export function isToken(text: string, from = 0, to = text.length): boolean {
  if (to <= from) return false;
  for (let i = from; i < to; i++) if (TCHAR[text.charCodeAt(i)] !== 1) return false;
  return true;
}

/** Whether text[from, to) is `lower` (a lower-case name) in any case, without making a string. */
export function nameIs(text: string, from: number, to: number, lower: string): boolean {
  if (to - from !== lower.length) return false;
  for (let i = 0; i < lower.length; i++) if ((text.charCodeAt(from + i) | 0x20) !== lower.charCodeAt(i)) return false;
  return true;
}

/** Whether text[from, to) holds only field-value bytes (no controls but HTAB, no DEL). */
function isFieldValue(text: string, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (FIELD_BYTE[text.charCodeAt(i)] !== 1) return false;
  return true;
}

/**
 * The header lines of a head's text (latin1, through its final CRLF CRLF), from `from` (the first
 * field line): `each(nameEnd, valueStart, valueEnd, lineStart, lineEnd)` per line, the value's
 * OWS trimmed. Line endings must have been checked (CRLF only). Throws `fail(reason)` for a line
 * that is folded, has no colon, or whose name is not a token.
 */
export function eachFieldLine(text: string, from: number, fail: (why: "fold" | "colon" | "name", line: string) => Error,
  each: (lineStart: number, nameEnd: number, valueStart: number, valueEnd: number, lineEnd: number) => void): void {
  const end = text.length - 4;
  for (let p = from; p <= end;) {
    let e = text.indexOf("\r\n", p);
    if (e < 0 || e > end) e = end;
    const c0 = text.charCodeAt(p);
    if (c0 === 0x20 || c0 === 0x09) throw fail("fold", text.slice(p, e));
    const c = text.indexOf(":", p);
    if (c < 0 || c >= e || c === p) throw fail("colon", text.slice(p, e));
    if (!isToken(text, p, c)) throw fail("name", text.slice(p, e));
    let vs = c + 1;
    let ve = e;
    while (vs < ve && (text.charCodeAt(vs) === 0x20 || text.charCodeAt(vs) === 0x09)) vs++;
    while (ve > vs && (text.charCodeAt(ve - 1) === 0x20 || text.charCodeAt(ve - 1) === 0x09)) ve--;
    each(p, c, vs, ve, e);
    p = e + 2;
  }
}

// A request target: visible ASCII, no fragment.
const TARGET = /^[\x21-\x22\x24-\x7e]+$/;
const HOST_PORT = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+)(:[0-9]{0,5})?$/;
const MAX_LENGTH_DIGITS = 15;

/**
 * Where the bytes of `buf` first break the line-ending rule (a bare LF or CR), or -1. `from` is
 * where new bytes start; the byte before it (if any) is taken into account.
 */
export function badLineEnding(buf: Buffer, from = 0): number {
  // (Buffer.indexOf is memchr: a head of a few hundred bytes costs a handful of calls, not a
  // JavaScript loop over every byte.)
  const start = Math.max(0, from - 1);
  for (let i = buf.indexOf(0x0a, start); i >= 0; i = buf.indexOf(0x0a, i + 1)) {
    if (i === 0 || buf[i - 1] !== 0x0d) return i;
  }
  for (let i = buf.indexOf(0x0d, start); i >= 0; i = buf.indexOf(0x0d, i + 1)) {
    if (i + 1 < buf.length && buf[i + 1] !== 0x0a) return i;
  }
  return -1;
}

/** badLineEnding for a whole head read as text (latin1). */
export function badLineEndingText(text: string): number {
  for (let i = text.indexOf("\n"); i >= 0; i = text.indexOf("\n", i + 1)) {
    if (i === 0 || text.charCodeAt(i - 1) !== 0x0d) return i;
  }
  for (let i = text.indexOf("\r"); i >= 0; i = text.indexOf("\r", i + 1)) {
    if (i + 1 < text.length && text.charCodeAt(i + 1) !== 0x0a) return i;
  }
  return -1;
}

/** The host of an authority (host[:port]): lower-case, no port, no final dot; null if malformed. */
export function hostOf(authority: string): string | null {
  if (isPlainName(authority)) return authority; // (the common case, read the same by the rules below)
  if (!HOST_PORT.test(authority)) return null;
  const h = authority.startsWith("[") ? authority.slice(0, authority.indexOf("]") + 1) : authority.replace(/:[0-9]*$/, "");
  if (h === "" || h.includes("%")) return null;
  return h.toLowerCase().replace(/\.$/, "");
}

/** Whether `s` is lower-case letters, digits, dots and hyphens, not ending in a dot: a host as it is. */
function isPlainName(s: string): boolean {
  const n = s.length;
  if (n === 0 || s.charCodeAt(n - 1) === 0x2e) return false;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (!((c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x2e || c === 0x2d)) return false;
  }
  return true;
}

/** Parse a complete request head (through its blank line). Throws HeadError. */
export function parseRequestHead(head: Buffer, lineEndingsChecked = false, text = head.toString("latin1")): RequestHead {
  const bad = lineEndingsChecked ? -1 : badLineEnding(head);
  if (bad >= 0) throw new HeadError(400, `a bare ${head[bad] === 0x0a ? "LF" : "CR"} in the request head (lines end in CRLF)`);
  if (!text.endsWith("\r\n\r\n")) throw new HeadError(400, "the request head does not end in a blank line");
  const last = text.length - 4;
  let eol = text.indexOf("\r\n");
  if (eol > last) eol = last;
  const requestLine = text.slice(0, eol);
  if (requestLine === "") throw new HeadError(400, "an empty line before the request line");
  const parts = requestLine.split(" ");
  if (parts.length !== 3) throw new HeadError(400, "the request line is not METHOD SP TARGET SP VERSION");
  const [method, target, version] = parts as [string, string, string];
  if (!isToken(method)) throw new HeadError(400, "the method is not a token");
  if (version !== "HTTP/1.1" && version !== "HTTP/1.0") throw new HeadError(version.startsWith("HTTP/") ? 501 : 400, `HTTP version ${JSON.stringify(version.slice(0, 16))} is not HTTP/1.1 or HTTP/1.0`);
  if (!TARGET.test(target)) throw new HeadError(400, "the request target holds a control, space, fragment or non-ASCII byte");
  if (method === "CONNECT") throw new HeadError(405, "CONNECT opens a tunnel moat cannot judge");

  const fields: Field[] = [];
  // What framing and routing read, gathered in the same pass.
  let hostCount = 0, hostValue = "", connection = "", upgrades = 0;
  const te: string[] = [];
  const cl: string[] = [];
  eachFieldLine(text, eol + 2, (why, line) => {
    if (why === "fold") return new HeadError(400, "a folded header line (obs-fold)");
    if (why === "colon") return new HeadError(400, "a header line without a name and a colon");
    return new HeadError(400, `header name ${JSON.stringify(line.slice(0, line.indexOf(":")).slice(0, 40))} is not a token (whitespace before the colon?)`);
  }, (ls, ne, vs, ve, le) => {
    const name = text.slice(ls, ne).toLowerCase();
    if (!isFieldValue(text, vs, ve)) throw new HeadError(400, `header ${text.slice(ls, ne)} holds a control character`);
    const value = text.slice(vs, ve);
    fields.push({ name, value, raw: text.slice(ls, le) });
    switch (name) {
      case "host": hostCount++; hostValue = value; break;
      case "transfer-encoding": te.push(value); break;
      case "content-length": cl.push(value); break;
      case "connection": connection = connection ? `${connection},${value.toLowerCase()}` : value.toLowerCase(); break;
      case "upgrade": upgrades++; break;
    }
  });

  if (hostCount !== 1) throw new HeadError(400, hostCount ? "more than one Host field" : "no Host field");
  const host = hostOf(hostValue);
  if (host === null) throw new HeadError(400, `Host ${JSON.stringify(hostValue.slice(0, 80))} is not host[:port]`);

  let absolute = false;
  if (target === "*") {
    if (method !== "OPTIONS") throw new HeadError(400, "the target * is only for OPTIONS");
  } else if (!target.startsWith("/")) {
    const m = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)/.exec(target);
    if (!m || !/^https?$/i.test(m[1]!)) throw new HeadError(400, "the request target is neither a path nor an http(s) URL");
    const authority = m[2]!;
    if (authority.includes("@")) throw new HeadError(400, "userinfo in the request target");
    const targetHost = hostOf(authority);
    if (targetHost === null) throw new HeadError(400, "the request target's authority is not host[:port]");
    if (targetHost !== host) throw new HeadError(403, `the request target names ${targetHost}, its Host field ${host}: a server acts on the target`);
    absolute = true;
  }

  let body: BodyFraming = { kind: "none" };
  if (te.length) {
    if (version === "HTTP/1.0") throw new HeadError(400, "Transfer-Encoding in an HTTP/1.0 request");
    if (cl.length) throw new HeadError(400, "both Transfer-Encoding and Content-Length");
    if (te.length > 1 || te[0]!.toLowerCase() !== "chunked") throw new HeadError(501, `Transfer-Encoding ${JSON.stringify(te.join(", ").slice(0, 60))} is not exactly chunked`);
    body = { kind: "chunked" };
  } else if (cl.length) {
    if (cl.length > 1) throw new HeadError(400, "more than one Content-Length field");
    const v = cl[0]!;
    if (!/^[0-9]+$/.test(v) || v.length > MAX_LENGTH_DIGITS) throw new HeadError(400, `Content-Length ${JSON.stringify(v.slice(0, 20))} is not a number`);
    const length = Number(v);
    if (length > 0) body = { kind: "length", length };
  }
  const upgrade = upgrades > 0 && /(^|[\s,])upgrade($|[\s,])/.test(connection);
  return { method, target, version, fields, host, absolute, body, upgrade, text };
}

/**
 * One chunk-size line (RFC 9112 §7.1) without its CRLF: the size, or null if malformed. Extensions
 * must be `;token[=token|quoted-string]` with no whitespace.
 */
export function parseChunkSize(line: string): number | null {
  const m = /^([0-9A-Fa-f]{1,15})((?:;[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:=(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+|"[\t\x20\x21\x23-\x5b\x5d-\x7e]*"))?)*)$/.exec(line);
  return m ? parseInt(m[1]!, 16) : null;
}

/**
 * `view` with `b` after it. Where `store` (a buffer `view` begins) has room, `b` is copied in there;
 * otherwise into a new store twice the size: bytes gathered a few at a time (a head sent a byte
 * per TLS record) cost linear time, not a copy of everything so far per piece.
 */
export function gather(view: Buffer, b: Buffer, store: Buffer | undefined): { view: Buffer; store: Buffer | undefined } {
  const n = view.length;
  if (n === 0) return { view: b, store: undefined };
  if (!store || store.buffer !== view.buffer || store.byteOffset !== view.byteOffset || store.length < n + b.length) {
    store = Buffer.allocUnsafe(Math.max(2 * (n + b.length), 4096));
    view.copy(store);
  }
  b.copy(store, n);
  return { view: store.subarray(0, n + b.length), store };
}
