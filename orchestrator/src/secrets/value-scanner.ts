// value-scanner.ts — finds secret VALUES in a byte stream given chunk by chunk and replaces each
// with the secret's placeholder: what keeps a server that reflects a request (CORS
// Access-Control-Allow-Origin, an /echo endpoint, TRACE, an error page quoting a header) from
// handing the real value back to the guest.
//
// Theory of operation
// The forms looked for are those the request side looks for placeholders in (secrets.ts,
// placeholderForms): raw; base64 at the 3 alignments, standard and url alphabet; percent-encoded
// (%XX, any case); JSON \u00XX (any case). Percent and JSON escapes are DECODED while matching, so a
// value encoded only in part ("sk-%41BC", "\u0073k-ABC") is found too, as are JSON's short escapes
// (\" \\ \/ \t \b \f) and '+' for a space. The value's UTF-8 bytes are looked for, and its latin1
// bytes where those differ (a header value travels as latin1).
// A chunk is scanned from the first byte that could begin an occurrence (a 256-entry table: the
// value's first byte, '%', '\\', the base64 cores' first characters). A tail that could be the
// start of an occurrence is held back (at most the longest form's length − 1 bytes) until the
// next chunk says otherwise; every other byte is released at once, and a chunk with nothing to
// replace or hold is returned as it came (no copy).
// Replacement: the placeholder in the occurrence's form (raw, %XX, \u00XX, the placeholder's
// base64 core at the same alignment). In `sameLength` mode (framing that counts bytes, HTTP/2 DATA)
// the replacement is that form cut, or padded with '*', to exactly the occurrence's length.
// At the end of a stream a held tail that matched at least MIN_TAIL bytes of a value (a server
// cutting a reflected value at the end of a response) is replaced too; a shorter one is released.
import type { Secret } from "./secrets.js";

export interface ValueFound { secret: Secret; form: string }

const PCT = 0x25, BSL = 0x5c, PLUS = 0x2b, SPACE = 0x20, U = 0x75, STAR = 0x2a;
/** A held tail matching at least this many bytes of a value is replaced at the end of the stream. */
export const MIN_TAIL = 6;
// JSON short escapes: the byte after '\' → the byte it stands for.
const SHORT = new Map<number, number>([[0x22, 0x22], [0x5c, 0x5c], [0x2f, 0x2f], [0x74, 0x09], [0x62, 0x08], [0x66, 0x0c]]);
const F_PCT = 1, F_UESC = 2, F_SHORT = 4, F_PLUS = 8;

const hexNib = (c: number): number => (c >= 0x30 && c <= 0x39 ? c - 0x30 : c >= 0x41 && c <= 0x46 ? c - 55 : c >= 0x61 && c <= 0x66 ? c - 87 : -1);

interface Exact { bytes: Buffer; secret: Secret; form: string; replacement: Buffer }
interface Decoded { bytes: Buffer; secret: Secret; raw: Buffer; pct: Buffer; json: Buffer; memo: boolean }

const PARTIAL = -1, NONE = -2;

const compiled = new WeakMap<readonly Secret[], SecretValues>();

/** The compiled forms of a set of secrets' values: shared by every scanner (read only once built). */
export class SecretValues {
  readonly exact: Exact[] = [];
  readonly decoded: Decoded[] = [];
  /** first[b]: 1 if an occurrence may begin with byte b. */
  readonly first = new Uint8Array(256);
  /** pair[b0 << 8 | b1]: 1 if an occurrence may begin with bytes b0 b1 (the fast filter). */
  readonly pair = new Uint8Array(65536);
  /** The longest an occurrence can be (every byte as \u00XX). */
  readonly maxLength: number;
  private readonly byFirst: (Exact[] | undefined)[] = new Array(256);

  /** The compiled values of `secrets`, compiled once per set (a connection's scrubber takes them from here). */
  static of(secrets: readonly Secret[]): SecretValues {
    let v = compiled.get(secrets);
    if (!v) compiled.set(secrets, (v = new SecretValues(secrets)));
    return v;
  }

  constructor(readonly secrets: readonly Secret[]) {
    let max = 0;
    for (const secret of secrets) {
      const variants = [Buffer.from(secret.value, "utf8")];
      const latin1 = Buffer.from(secret.value, "latin1");
      if (/^[\0-\xff]*$/.test(secret.value) && !latin1.equals(variants[0]!)) variants.push(latin1);
      const ph = Buffer.from(secret.placeholder, "latin1");
      const hex = [...ph].map((x) => x.toString(16).padStart(2, "0"));
      const pct = Buffer.from(hex.map((h) => `%${h.toUpperCase()}`).join(""), "latin1");
      const json = Buffer.from(hex.map((h) => `\\u00${h}`).join(""), "latin1");
      for (const v of variants) {
        if (v.length === 0) continue;
        const memo = v.includes(PCT) || v.includes(BSL);
        this.decoded.push({ bytes: v, secret, raw: ph, pct, json, memo });
        this.first[v[0]!] = 1;
        if (v[0] === SPACE) this.first[PLUS] = 1;
        this.addPairs(v);
        max = Math.max(max, v.length * 6);
        for (let k = 0; k < 3; k++) {
          const core = base64Core(v, k);
          const phCore = base64Core(ph, k);
          if (core.length === 0) continue;
          for (const url of [false, true]) {
            const c = url ? toUrl(core) : core;
            if (this.exact.some((e) => e.secret === secret && e.bytes.toString("latin1") === c)) continue;
            const e: Exact = { bytes: Buffer.from(c, "latin1"), secret, form: url && c !== core ? "base64url" : "base64", replacement: Buffer.from(url ? toUrl(phCore) : phCore, "latin1") };
            this.exact.push(e);
            (this.byFirst[e.bytes[0]!] ??= []).push(e);
            this.first[e.bytes[0]!] = 1;
            if (e.bytes.length > 1) this.pair[(e.bytes[0]! << 8) | e.bytes[1]!] = 1;
            else this.pair.fill(1, e.bytes[0]! << 8, (e.bytes[0]! + 1) << 8);
            max = Math.max(max, e.bytes.length);
          }
        }
      }
    }
    if (this.decoded.length) this.first[PCT] = this.first[BSL] = 1;
    this.maxLength = max;
  }

  get active(): boolean {
    return this.decoded.length > 0;
  }

  /** The two bytes any reading of value bytes v can begin with. */
  private addPairs(v: Buffer): void {
    const hexChars = (x: number) => [...new Set([x.toString(16), x.toString(16).toUpperCase()])].map((c) => c.charCodeAt(0));
    const firstOf = (b: number) => [b, PCT, BSL, ...(b === SPACE ? [PLUS] : [])];
    const mark = (b0: number, seconds: number[] | undefined) => {
      if (!seconds) this.pair.fill(1, b0 << 8, (b0 + 1) << 8);
      else for (const b1 of seconds) this.pair[(b0 << 8) | b1] = 1;
    };
    const v0 = v[0]!;
    const rest = v.length > 1 ? firstOf(v[1]!) : undefined;
    mark(v0, rest);
    if (v0 === SPACE) mark(PLUS, rest);
    mark(PCT, hexChars(v0 >> 4));
    mark(BSL, [U, ...[...SHORT].filter(([, to]) => to === v0).map(([e]) => e)]);
  }

  /**
   * The occurrence beginning at h[i], if any: its end and replacement, or PARTIAL when h ends
   * inside what could still be one (`final`: the stream ends there), or NONE.
   */
  matchAt(h: Buffer, i: number, final: boolean, sameLength: boolean): { end: number; replacement: Buffer; found: ValueFound } | typeof PARTIAL | typeof NONE {
    let best: { end: number; replacement: Buffer; found: ValueFound } | undefined;
    let partial = false;
    const c = h[i]!;
    const ex = this.byFirst[c];
    if (ex) {
      for (const e of ex) {
        const n = e.bytes.length;
        const avail = Math.min(n, h.length - i);
        if (h.compare(e.bytes, 0, avail, i, i + avail) !== 0) continue;
        let end = i + n;
        if (avail < n) {
          if (!final) { partial = true; continue; }
          // The stream ends inside an encoded value: replaced if it holds MIN_TAIL bytes' worth.
          if (avail < Math.ceil((MIN_TAIL * 8) / 6)) continue;
          end = h.length;
        }
        if (!best || end > best.end) best = { end, replacement: e.replacement, found: { secret: e.secret, form: e.form } };
      }
    }
    for (const d of this.decoded) {
      const r = matchDecoded(h, i, d);
      if (r.end === PARTIAL) {
        if (!final) { partial = true; continue; }
        if (r.matched < Math.min(MIN_TAIL, d.bytes.length)) continue;
        // The stream ends inside an occurrence: the tail is replaced too.
        r.end = h.length;
      }
      if (r.end < 0) continue;
      if (!best || r.end > best.end) {
        const f = r.flags;
        const form = f & F_UESC ? "JSON-escaped" : f & F_PCT ? "percent-encoded" : f & F_SHORT ? "JSON-escaped" : f & F_PLUS ? "form-encoded" : "raw";
        best = { end: r.end, replacement: f & F_UESC ? d.json : f & F_PCT ? d.pct : d.raw, found: { secret: d.secret, form } };
      }
    }
    if (partial && !final) return PARTIAL;
    if (!best) return NONE;
    if (sameLength) best.replacement = fit(best.replacement, best.end - i);
    return best;
  }
}

/** The replacement cut, or padded with '*', to `n` bytes. */
function fit(b: Buffer, n: number): Buffer {
  if (b.length === n) return b;
  if (b.length > n) return b.subarray(0, n);
  const out = Buffer.alloc(n, STAR);
  b.copy(out);
  return out;
}

/** Match value bytes d.bytes at h[i], each byte literal or escaped (%XX, \u00XX, JSON short escapes, '+' for a space). */
function matchDecoded(h: Buffer, i: number, d: Decoded): Match {
  const v = d.bytes;
  const c0 = h[i]!;
  // The common "no occurrence" case fails at the first or second byte.
  if (c0 !== v[0] && c0 !== PCT && c0 !== BSL && !(c0 === PLUS && v[0] === SPACE)) return NO_MATCH;
  if (!d.memo) return matchLinear(h, i, v);
  return matchSearch(h, i, v);
}

interface Match { end: number; flags: number; matched: number }
const NO_MATCH: Match = Object.freeze({ end: NONE, flags: 0, matched: 0 });

/**
 * One step: the byte v[j] at h[p]. Returns the bytes it takes (> 0), 0 when it does not match,
 * or -1 when h ends inside what could still match. `alt` picks the escaped reading when the value
 * byte is itself '%' or '\' (both readings possible). this.flags gets the escape kind.
 */
let stepFlags = 0;
function step(h: Buffer, p: number, b: number, alt: boolean): number {
  const len = h.length;
  if (p >= len) return -1;
  const c = h[p]!;
  stepFlags = 0;
  if (c === b && !alt) return 1;
  if (c === PLUS && b === SPACE) { stepFlags = F_PLUS; return 1; }
  if (c === PCT) {
    if (p + 1 >= len) return -1;
    if (hexNib(h[p + 1]!) !== b >> 4) return 0;
    if (p + 2 >= len) return -1;
    if (hexNib(h[p + 2]!) !== (b & 15)) return 0;
    stepFlags = F_PCT;
    return 3;
  }
  if (c === BSL) {
    if (p + 1 >= len) return -1;
    const e = h[p + 1]!;
    if (e === U) {
      const want0 = b >> 4, want1 = b & 15;
      for (let k = 0; k < 4; k++) {
        const q = p + 2 + k;
        if (q >= len) return -1;
        const x = h[q]!;
        if (k < 2 ? x !== 0x30 : hexNib(x) !== (k === 2 ? want0 : want1)) return 0;
      }
      stepFlags = F_UESC;
      return 6;
    }
    if (SHORT.get(e) === b) { stepFlags = F_SHORT; return 2; }
  }
  return 0;
}

/** A value without '%' or '\': each byte has one reading at a point, so no search. */
function matchLinear(h: Buffer, i: number, v: Buffer): Match {
  const n = v.length;
  let p = i;
  let flags = 0;
  for (let j = 0; j < n; j++) {
    const t = step(h, p, v[j]!, false);
    if (t === 0) return NO_MATCH;
    if (t < 0) return { end: PARTIAL, flags, matched: j };
    flags |= stepFlags;
    p += t;
  }
  return { end: p, flags, matched: n };
}

/**
 * A value holding '%' or '\': a byte of it may be read literally or as an escape at one point, so
 * a depth-first search, remembering the (value index, position) pairs tried.
 */
function matchSearch(h: Buffer, i: number, v: Buffer): Match {
  const n = v.length;
  const stack: number[] = [0, i, 0]; // triples: value index, position, flags
  const seen = new Set<number>();
  let partial = false;
  let matched = 0;
  while (stack.length) {
    const flags = stack.pop()!;
    const p = stack.pop()!;
    const j = stack.pop()!;
    if (j === n) return { end: p, flags, matched: n };
    const key = j * 8 * n + (p - i);
    if (seen.has(key)) continue;
    seen.add(key);
    if (j > matched) matched = j;
    const b = v[j]!;
    for (const alt of b === PCT || b === BSL ? [false, true] : [false]) {
      const t = step(h, p, b, alt);
      if (t < 0) partial = true;
      else if (t > 0) stack.push(j + 1, p + t, flags | stepFlags);
    }
  }
  return partial ? { end: PARTIAL, flags: 0, matched } : NO_MATCH;
}

function base64Core(b: Buffer, k: number): string {
  const enc = Buffer.concat([Buffer.alloc(k), b]).toString("base64");
  const start = Math.ceil((k * 8) / 6);
  const end = Math.floor(((k + b.length) * 8) / 6);
  return enc.slice(start, end);
}
const toUrl = (s: string) => s.replace(/\+/g, "-").replace(/\//g, "_");

/**
 * A stream's scanner: push() returns the bytes that may go on (occurrences replaced), holding
 * back a tail that could begin one; flush() at the stream's end releases (or replaces) it.
 * Each replacement is added to `found`.
 */
export class ValueScanner {
  private carry: Buffer = Buffer.alloc(0);
  /** How many leading bytes of `carry` were already released (by releaseHeld): kept only as context. */
  private carrySent = 0;
  readonly values: SecretValues;

  constructor(secrets: readonly Secret[] | SecretValues, private readonly sameLength = false) {
    this.values = secrets instanceof SecretValues ? secrets : new SecretValues(secrets);
  }

  get active(): boolean {
    return this.values.active;
  }

  /** Bytes held back now, not yet released (fewer than maxLength). */
  get held(): number {
    return this.carry.length - this.carrySent;
  }

  push(chunk: Buffer, found: ValueFound[]): Buffer[] {
    if (!this.values.active) return chunk.length ? [chunk] : [];
    const h = this.carry.length ? Buffer.concat([this.carry, chunk]) : chunk;
    return this.scan(h, false, found, this.carrySent);
  }

  /** The stream ended: what is held goes (a tail holding MIN_TAIL bytes of a value replaced). */
  flush(found: ValueFound[]): Buffer[] {
    if (!this.carry.length) return [];
    return this.scan(this.carry, true, found, this.carrySent);
  }

  /**
   * Nothing more has come for a while (a streaming response paused on a byte that could begin a
   * value): release what is held as flush() would, but keep it as context, so that when the
   * stream goes on with the rest of a value, the rest is still replaced. At most MIN_TAIL − 1
   * bytes of a value's beginning can go out this way (and only if the server paused inside it).
   */
  releaseHeld(found: ValueFound[]): Buffer[] {
    if (this.held === 0) return [];
    const ctx = this.carry;
    const out = this.scan(ctx, true, found, this.carrySent);
    this.carry = ctx;
    this.carrySent = ctx.length;
    return out;
  }

  /** A whole text (a header value, a head), no history: occurrences replaced. */
  scrub(text: Buffer, found: ValueFound[]): Buffer {
    if (!this.values.active) return text;
    const saved = this.carry;
    const savedSent = this.carrySent;
    const out = this.scan(text, true, found, 0);
    this.carry = saved;
    this.carrySent = savedSent;
    return out.length === 1 ? out[0]! : Buffer.concat(out);
  }

  /** Scan h, whose first `sent` bytes went out already (context only). */
  private scan(h: Buffer, final: boolean, found: ValueFound[], sent: number): Buffer[] {
    const out: Buffer[] = [];
    const first = this.values.first;
    const pair = this.values.pair;
    const len = h.length;
    const emit = (from: number, to: number) => {
      const f = Math.max(from, sent);
      if (to > f) out.push(f === 0 && to === len ? h : h.subarray(f, to));
    };
    let last = 0;
    let i = 0;
    for (;;) {
      // The fast filter: the first two bytes of anything that could be an occurrence.
      if (i + 1 < len) {
        let prev = h[i]!;
        let j = i + 1;
        for (; j < len; j++) {
          const cur = h[j]!;
          if (pair[(prev << 8) | cur] !== 0) break;
          prev = cur;
        }
        i = j - 1;
      }
      if (i >= len || (i === len - 1 && first[h[i]!] === 0)) break;
      const r = this.values.matchAt(h, i, final, this.sameLength);
      if (r === PARTIAL) {
        emit(last, i);
        this.carry = Buffer.from(h.subarray(i)); // a copy: never pins the caller's chunk
        this.carrySent = Math.max(0, sent - i);
        return out;
      }
      if (r === NONE) { i++; continue; }
      emit(last, i);
      // An occurrence that began in what already went out: the rest of its replacement.
      if (r.end > sent) out.push(i >= sent ? r.replacement : r.replacement.subarray(Math.min(sent - i, r.replacement.length)));
      found.push(r.found);
      i = last = r.end;
    }
    emit(last, len);
    this.carry = Buffer.alloc(0);
    this.carrySent = 0;
    return out;
  }
}
