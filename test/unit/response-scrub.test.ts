// response-scrub.test.ts — secret values a server reflects (CORS, /echo, TRACE) go back to the
// guest as placeholders: the value scanner, the HTTP/1.1 response scrubber, the HTTP/2 one.
import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import zlib from "node:zlib";
import { once } from "node:events";
import hpack from "hpack.js";
import { validateSecrets, type Secret } from "../../orchestrator/src/secrets/secrets.js";
import { ValueScanner, SecretValues, type ValueFound } from "../../orchestrator/src/secrets/value-scanner.js";
import { ResponseScrubber } from "../../orchestrator/src/secrets/response-filter.js";
import { Http2ResponseScrubber } from "../../orchestrator/src/secrets/http2-response-filter.js";

const P = "moat-ph-abcdefghijklmnopqrstuvwx";
const V = "sk-Live_9f8e7d6c5b4a3210ZYXWvu";
const secret = (value = V, placeholder = P): Secret =>
  validateSecrets([{ env: "KEY", allowedHosts: ["api.example.test"], placeholder }], { KEY: value })[0]!;
const S = secret();

/** Everything a scanner gives for `parts`, and what it found. */
function scanAll(sc: ValueScanner, parts: (string | Buffer)[]): { text: string; found: ValueFound[] } {
  const found: ValueFound[] = [];
  const out: Buffer[] = [];
  for (const p of parts) out.push(...sc.push(typeof p === "string" ? Buffer.from(p, "latin1") : p, found));
  out.push(...sc.flush(found));
  return { text: Buffer.concat(out).toString("latin1"), found };
}

const pct = (s: string, upper = true) => [...Buffer.from(s, "latin1")].map((b) => `%${b.toString(16).padStart(2, "0")[upper ? "toUpperCase" : "toLowerCase"]()}`).join("");
const uesc = (s: string, upper = false) => [...Buffer.from(s, "latin1")].map((b) => `\\u00${b.toString(16).padStart(2, "0")[upper ? "toUpperCase" : "toLowerCase"]()}`).join("");

test("value scanner: raw, base64 (3 alignments, both alphabets), %XX and \\u00XX in either case, partly encoded", () => {
  const cases: [string, string, RegExp][] = [
    [`a ${V} b`, "raw", new RegExp(`^a ${P} b$`)],
    [pct(V), "percent-encoded", new RegExp(`^${pct(P).replace(/%/g, "%")}$`)],
    [pct(V, false), "percent-encoded", /^(%[0-9A-F]{2})+$/],
    [`${V.slice(0, 5)}${pct(V.slice(5, 9), false)}${V.slice(9)}`, "percent-encoded", /^(%[0-9A-F]{2})+$/],
    [`"${uesc(V)}"`, "JSON-escaped", /^"(\\u00[0-9a-f]{2})+"$/],
    [`"${uesc(V, true)}"`, "JSON-escaped", /^"(\\u00[0-9a-f]{2})+"$/],
    [`"${uesc(V.slice(0, 3))}${V.slice(3)}"`, "JSON-escaped", /^"(\\u00[0-9a-f]{2})+"$/],
  ];
  for (const [input, form, want] of cases) {
    const r = scanAll(new ValueScanner([S]), [input]);
    assert.match(r.text, want, input);
    assert.equal(r.found[0]?.form, form, input);
    assert.ok(!r.text.includes(V) && !r.text.includes("Live_9f8"), input);
  }
  for (let k = 0; k < 3; k++) {
    for (const enc of ["base64", "base64url"] as const) {
      const text = Buffer.from("xyz".slice(0, k) + V + "tail").toString(enc);
      const r = scanAll(new ValueScanner([S]), [text]);
      assert.equal(r.found.length, 1, `${enc} at alignment ${k}`);
      assert.ok(!Buffer.from(r.text, enc).toString("latin1").includes("Live_9f8"), `${enc} at alignment ${k}: the value does not decode out`);
      assert.ok(Buffer.from(r.text, enc).toString("latin1").includes("ph-abcdefghijklmnopqrstu"), `${enc} ${k}: the placeholder's core took its place`);
    }
  }
  const none = scanAll(new ValueScanner([S]), ["nothing %41%zz \\u0041 \\x sk-Live_ here"]);
  assert.equal(none.found.length, 0);
  assert.equal(none.text, "nothing %41%zz \\u0041 \\x sk-Live_ here");
});

test("value scanner: JSON short escapes and '+' for a space; a value holding '%' and '\\' itself", () => {
  const odd = secret('a/b"c d%41\\e-0123456789');
  const inJson = JSON.stringify({ k: odd.value }).replace("/", "\\/");
  const r = scanAll(new ValueScanner([odd]), [inJson]);
  assert.equal(r.text, `{"k":"${P}"}`);
  const form = scanAll(new ValueScanner([odd]), [`k=${encodeURIComponent(odd.value).replace("%20", "+")}&x=1`]);
  assert.equal(form.text, `k=${pct(P)}&x=1`);
  const raw = scanAll(new ValueScanner([odd]), [`[${odd.value}]`]);
  assert.equal(raw.text, `[${P}]`);
});

test("value scanner: split at every boundary, the carry bounded, clean chunks passed as they came", () => {
  const sv = new SecretValues([S]);
  for (const input of [`<p>${V}</p>`, `<p>${pct(V)}</p>`, `<p>${uesc(V)}</p>`, `<${Buffer.from("q" + V).toString("base64")}>`]) {
    for (let i = 0; i <= input.length; i++) {
      for (const j of [i, Math.min(input.length, i + 3)]) {
        const sc = new ValueScanner(sv);
        const r = scanAll(sc, [input.slice(0, i), input.slice(i, j), input.slice(j)]);
        assert.equal(r.found.length, 1, `${input} split at ${i},${j}`);
        assert.ok(!r.text.includes("Live_9f8") && !r.text.includes(pct("Live")) && !r.text.includes(uesc("Live")), `${input} split at ${i},${j}: ${r.text}`);
      }
    }
  }
  const sc = new ValueScanner(sv);
  const found: ValueFound[] = [];
  const clean = Buffer.from("HTTP/1.1 200 OK, nothing secret in here at all");
  const out = sc.push(clean, found);
  assert.equal(out.length, 1);
  assert.equal(out[0], clean, "the same buffer, not a copy");
  // Held back: at most the longest form's length − 1, whatever is fed.
  const evil = new ValueScanner(sv);
  for (let k = 0; k < 200; k++) {
    evil.push(Buffer.from(`%73%6b%2d${"\\u004c"}`), found);
    assert.ok(evil.held < sv.maxLength, `held ${evil.held} < ${sv.maxLength}`);
  }
});

test("value scanner: sameLength mode never changes a length; a value cut at a stream's end is replaced", () => {
  const sv = new SecretValues([S, secret("short-secret-42", "moat-ph-0123456789abcdef")]);
  for (const input of [`x${V}y`, `x${pct(V)}y`, "a short-secret-42 b", `${uesc("short-secret-42")}`]) {
    const r = scanAll(new ValueScanner(sv, true), [input]);
    assert.equal(r.text.length, input.length, input);
    assert.equal(r.found.length, 1, input);
    assert.ok(!r.text.includes("Live_9f8") && !r.text.includes("short-secret"), r.text);
  }
  const cut = scanAll(new ValueScanner([S]), [`body ends with ${V.slice(0, 12)}`]);
  assert.equal(cut.text, `body ends with ${P}`);
  const cut64 = scanAll(new ValueScanner([S]), [`ends with ${Buffer.from(V).toString("base64").slice(0, 20)}`]);
  assert.equal(cut64.found[0]?.form, "base64", "a base64 value cut at the end too");
  assert.ok(!Buffer.from(cut64.text.slice(10), "base64").toString("latin1").includes("Live"));
  const shortTail = scanAll(new ValueScanner([S]), ["ends with sk-"]);
  assert.equal(shortTail.text, "ends with sk-", "a few bytes that begin the value are not the value");
});

test("value scanner: releaseHeld lets a paused stream go on, and the rest of a value is still replaced", () => {
  const found: ValueFound[] = [];
  const text = (bs: Buffer[]) => Buffer.concat(bs).toString("latin1");
  // A message ending in a byte that could begin the value: held, then released on idle.
  const sc = new ValueScanner([S]);
  assert.equal(text(sc.push(Buffer.from("event 1: s"), found)), "event 1: ");
  assert.equal(sc.held, 1);
  assert.equal(text(sc.releaseHeld(found)), "s");
  assert.equal(sc.held, 0);
  assert.equal(text(sc.push(Buffer.from("ome more"), found)), "ome more", "ordinary text after it goes on as it came");
  // The server paused inside the value: the rest of it is still replaced.
  const paused = new ValueScanner([S]);
  let all = text(paused.push(Buffer.from(`x ${V.slice(0, 3)}`), found)) + text(paused.releaseHeld(found));
  all += text(paused.push(Buffer.from(`${V.slice(3)} tail`), found)) + text(paused.flush(found));
  assert.equal(all, `x sk-${P.slice(3)} tail`, "three bytes of the value's start went, never the rest");
  // Paused after MIN_TAIL bytes of it: those are replaced at once, and the rest later.
  const long = new ValueScanner([S], true);
  const input = [`x ${V.slice(0, 9)}`, `${V.slice(9)} tail`];
  let out = text(long.push(Buffer.from(input[0]!), found)) + text(long.releaseHeld(found));
  out += text(long.push(Buffer.from(input[1]!), found)) + text(long.flush(found));
  assert.equal(out.length, input.join("").length, "sameLength: no byte more or less");
  assert.equal(out, `x ${P.slice(0, V.length)} tail`);
});

// ---------------------------------------------------------------- HTTP/1.1

interface H1Run { text: string; scrubbed: ValueFound[]; error?: string; close?: boolean }
function h1(parts: (string | Buffer)[], requests: [string, boolean][] = [["GET", false]], secrets: Secret[] = [S]): H1Run {
  const s = new ResponseScrubber(secrets);
  for (const [m, v10] of requests) s.request(m, v10);
  const out: Buffer[] = [];
  const scrubbed: ValueFound[] = [];
  for (const p of parts) {
    const r = s.push(typeof p === "string" ? Buffer.from(p, "latin1") : p);
    out.push(...r.out);
    scrubbed.push(...r.scrubbed);
    if (r.error) return { text: Buffer.concat(out).toString("latin1"), scrubbed, error: r.error };
    if (r.close) return { text: Buffer.concat(out).toString("latin1"), scrubbed, close: true };
  }
  out.push(...s.end());
  return { text: Buffer.concat(out).toString("latin1"), scrubbed };
}

/** The body of a chunked message (after its head), checking the framing. */
function dechunk(text: string): { body: string; rest: string; trailers: string } {
  let body = "";
  let t = text;
  for (;;) {
    const m = /^([0-9a-f]+)\r\n/.exec(t);
    assert.ok(m, `a chunk size at ${JSON.stringify(t.slice(0, 20))}`);
    const n = parseInt(m[1]!, 16);
    t = t.slice(m[0].length);
    if (n === 0) {
      const end = t.indexOf("\r\n\r\n") >= 0 && !t.startsWith("\r\n") ? t.indexOf("\r\n\r\n") + 4 : 2;
      return { body, trailers: t.slice(0, end - 2), rest: t.slice(end) };
    }
    body += t.slice(0, n);
    assert.equal(t.slice(n, n + 2), "\r\n");
    t = t.slice(n + 2);
  }
}
const splitHead = (text: string) => {
  const i = text.indexOf("\r\n\r\n");
  return { head: text.slice(0, i + 4), rest: text.slice(i + 4) };
};

test("HTTP/1.1: a CORS header reflecting the value goes back as the placeholder", () => {
  const r = h1([`HTTP/1.1 204 No ${V}\r\nAccess-Control-Allow-Origin: https://x.test/${V}\r\nVary: Origin\r\n\r\n`]);
  assert.equal(r.error, undefined);
  assert.equal(r.text, `HTTP/1.1 204 No ${P}\r\nAccess-Control-Allow-Origin: https://x.test/${P}\r\nVary: Origin\r\n\r\n`);
  assert.deepEqual(r.scrubbed.map((f) => [f.secret.env, f.form]), [["KEY", "raw"], ["KEY", "raw"]]);
  const basic = h1([`HTTP/1.1 200 OK\r\nX-Echo-Authorization: Basic ${Buffer.from(`user:${V}`).toString("base64")}\r\nContent-Length: 0\r\n\r\n`]);
  assert.ok(!Buffer.from(/Basic (\S+)/.exec(basic.text)![1]!, "base64").toString("latin1").includes("Live_9f8"), "a reflected Basic credential does not decode to the value");
  assert.equal(basic.scrubbed[0]?.form, "base64");
});

test("HTTP/1.1: a Content-Length body holding the value, split at every boundary, is re-framed chunked", () => {
  const body = `{"echo":"${V}","n":1}`;
  const resp = `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
  const want = `{"echo":"${P}","n":1}`;
  for (let i = 0; i <= resp.length; i++) {
    const r = h1([resp.slice(0, i), resp.slice(i)]);
    assert.equal(r.error, undefined, `split at ${i}`);
    const { head, rest } = splitHead(r.text);
    assert.equal(head, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
    const d = dechunk(rest);
    assert.equal(d.body, want, `split at ${i}`);
    assert.equal(d.rest, "");
    assert.equal(r.scrubbed.length, 1);
  }
});

test("HTTP/1.1: a chunked body with the value across chunks, and trailers scrubbed too", () => {
  const resp = `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab${V.slice(0, 3)}\r\n${(V.length - 3).toString(16)};ext=1\r\n${V.slice(3)}\r\n0\r\nX-Trailer: ${V}\r\n\r\n`;
  for (let i = 0; i <= resp.length; i += 3) {
    const r = h1([resp.slice(0, i), resp.slice(i)]);
    assert.equal(r.error, undefined);
    const d = dechunk(splitHead(r.text).rest);
    assert.equal(d.body, `ab${P}`, `split at ${i}`);
    assert.equal(d.trailers, `X-Trailer: ${P}\r\n`);
    assert.equal(d.rest, "");
  }
});

test("HTTP/1.1: HEAD, 204, 304 and 1xx have no body; pipelined responses each framed; 101 turns opaque", () => {
  const r = h1([
    `HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n`,
    `HTTP/1.1 304 Not Modified\r\nETag: "${V}"\r\n\r\n`,
    `HTTP/1.1 200 OK\r\nContent-Length: ${V.length}\r\n\r\n${V}`,
    `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x20${V.slice(0, 7)}`, `${V.slice(7)}`,
  ], [["HEAD", false], ["GET", false], ["POST", false], ["GET", false]]);
  assert.equal(r.error, undefined);
  assert.equal(r.text, [
    "HTTP/1.1 100 Continue\r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", // HEAD: its Content-Length describes the GET's body
    `HTTP/1.1 304 Not Modified\r\nETag: "${P}"\r\n\r\n`,
    `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n${P.length.toString(16)}\r\n${P}\r\n0\r\n\r\n`,
    `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x20${P.slice(0, V.length)}`, // a WebSocket frame: its length kept
  ].join(""));
  assert.equal(r.scrubbed.length, 3);
});

test("HTTP/1.1: a whole Content-Length response with no value passes as it came; one with a value, or in pieces, is re-framed", () => {
  const clean = `HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: sk-Live\r\n\r\nhello`;
  const two = h1([clean + clean], [["GET", false], ["GET", true]]);
  assert.equal(two.text, clean + clean, "both pipelined responses unchanged, Content-Length kept (to HTTP/1.0 too: the length is true)");
  assert.equal(two.scrubbed.length, 0);
  const valued = h1([`HTTP/1.1 200 OK\r\nContent-Length: ${V.length}\r\n\r\n${V}`]);
  assert.equal(valued.text, `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n${P.length.toString(16)}\r\n${P}\r\n0\r\n\r\n`);
  const pieces = h1([clean.slice(0, -2), clean.slice(-2)]);
  assert.match(pieces.text, /^HTTP\/1\.1 200 OK\r\nX-A: sk-Live\r\nTransfer-Encoding: chunked\r\n\r\n/);
  assert.equal(dechunk(splitHead(pieces.text).rest).body, "hello");
  const bad = h1([`HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: a\x00b\r\n\r\nhello`]);
  assert.match(bad.error ?? "", /holds a NUL or CR/, "the lines are judged on the fast path too");
});

test("HTTP/1.1: opaque() (the request side stopped following HTTP) scans what comes in sameLength mode, a partial head included", () => {
  const s = new ResponseScrubber([S]);
  s.request("GET", false);
  assert.deepEqual(s.push(Buffer.from(`HTTP/1.1 200 OK\r\nX: ${V.slice(0, 10)}`)).out, []);
  const found: ValueFound[] = [];
  const a = Buffer.concat(s.opaque(found)).toString("latin1");
  const b = Buffer.concat(s.push(Buffer.from(`${V.slice(10)}\r\n\r\nrest`)).out).toString("latin1") + Buffer.concat(s.end()).toString("latin1");
  assert.equal(a + b, `HTTP/1.1 200 OK\r\nX: ${P.slice(0, V.length)}\r\n\r\nrest`);
});

test("HTTP/1.1: to an HTTP/1.0 request the body is close-delimited and the connection ends after it", () => {
  const r = h1([`HTTP/1.1 200 OK\r\nContent-Length: ${V.length + 2}\r\nConnection: keep-alive\r\n\r\n<${V}>HTTP/1.1 200 OK\r\n`], [["GET", true], ["GET", true]]);
  assert.equal(r.error, undefined);
  assert.equal(r.close, true);
  assert.equal(r.text, `HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n<${P}>`);
  const eof = h1([`HTTP/1.0 200 OK\r\n\r\nuntil the end ${V.slice(0, 10)}`, V.slice(10)], [["GET", false]]);
  assert.equal(eof.text, `HTTP/1.0 200 OK\r\nConnection: close\r\n\r\nuntil the end ${P}`);
  const eof11 = h1([`HTTP/1.1 200 OK\r\n\r\nuntil the end ${V}`], [["GET", false]]);
  assert.equal(dechunk(splitHead(eof11.text).rest).body, `until the end ${P}`, "a close-delimited body to an HTTP/1.1 client: chunked, ended");
});

test("HTTP/1.1: gzip, deflate and br bodies are decoded, scrubbed and sent decoded; bombs and unknown codings refused", () => {
  const plain = Buffer.from(`${"lorem ipsum ".repeat(5000)}${V}${" dolor".repeat(3000)}`);
  for (const [coding, data] of [["gzip", zlib.gzipSync(plain)], ["x-gzip", zlib.gzipSync(plain)], ["deflate", zlib.deflateSync(plain)], ["deflate", zlib.deflateRawSync(plain)], ["br", zlib.brotliCompressSync(plain)]] as const) {
    const head = `HTTP/1.1 200 OK\r\nContent-Encoding: ${coding}\r\nContent-Length: ${data.length}\r\n\r\n`;
    const parts: Buffer[] = [Buffer.from(head), data.subarray(0, 1)]; // a first read of one byte (deflate is told apart by two)
    for (let o = 1; o < data.length; o += 777) parts.push(data.subarray(o, o + 777));
    const r = h1(parts);
    assert.equal(r.error, undefined, coding);
    const { head: h, rest } = splitHead(r.text);
    assert.doesNotMatch(h, /Content-Encoding/i);
    const body = dechunk(rest).body;
    assert.equal(body, plain.toString().replace(V, P), coding);
    assert.equal(r.scrubbed.length, 1);
  }
  // Compressed data over many reads (the decoder keeps its state between them), and the edges.
  const big = Buffer.from(Array.from({ length: 40000 }, (_, i) => `${(i * 2654435761) >>> 0}${i % 997 === 0 ? V : ""}`).join(","));
  for (const coding of ["gzip", "br"] as const) {
    const data = coding === "br" ? zlib.brotliCompressSync(big) : zlib.gzipSync(big);
    assert.ok(data.length > 100000);
    const parts: Buffer[] = [Buffer.from(`HTTP/1.1 200 OK\r\nContent-Encoding: ${coding}\r\nTransfer-Encoding: chunked\r\n\r\n`)];
    for (let o = 0; o < data.length; o += 5000) parts.push(Buffer.from(`${Math.min(5000, data.length - o).toString(16)}\r\n`), data.subarray(o, o + 5000), Buffer.from("\r\n"));
    parts.push(Buffer.from("0\r\n\r\n"));
    const r = h1(parts);
    assert.equal(r.error, undefined, coding);
    assert.equal(dechunk(splitHead(r.text).rest).body, big.toString().split(V).join(P), `${coding} over many reads`);
    assert.equal(r.scrubbed.length, 41);
  }
  const gz = zlib.gzipSync(`hello ${V}`);
  const cut = h1([`HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: ${gz.length - 4}\r\n\r\n`, gz.subarray(0, gz.length - 4)]);
  assert.match(cut.error ?? "", /does not decode: unexpected end of file/, "a coded stream cut short is not passed as whole");
  const junk = h1([`HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: ${gz.length + 5}\r\n\r\n`, gz, "junk!"]);
  assert.ok(junk.error, "bytes after the coded stream are refused");
  const empty = h1([`HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 0\r\n\r\n`]);
  assert.equal(empty.error, undefined);
  assert.equal(empty.text, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
  const bomb = zlib.gzipSync(Buffer.alloc(300 << 20), { level: 9 });
  const b = h1([`HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: ${bomb.length}\r\n\r\n`, bomb]);
  assert.match(b.error ?? "", /compression bomb/);
  const unknown = h1([`HTTP/1.1 200 OK\r\nContent-Encoding: zstd\r\nContent-Length: 4\r\n\r\nabcd`]);
  assert.match(unknown.error ?? "", /Content-Encoding "zstd", which cannot be scanned/);
  assert.equal(unknown.text, "", "nothing of it went");
  const corrupt = h1([`HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 10\r\n\r\nnot-a-gzip`]);
  assert.match(corrupt.error ?? "", /does not decode/);
});

test("HTTP/1.1: malformed or ambiguous responses are errors, and nothing unjudged passes", () => {
  const bad: [string, RegExp][] = [
    ["HTTP/1.1 200 OK\nContent-Length: 0\n\n", /bare LF/],
    ["HTTP/1.1 200 OK\r\nX: a\r\n folded\r\nContent-Length: 0\r\n\r\n", /obs-fold/],
    ["HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", /both Transfer-Encoding and Content-Length/],
    ["HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", /conflicting Content-Length/],
    ["HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", /not a number/],
    ["HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", /other than chunked/],
    ["HTTP/1.1 200 OK\r\nX : y\r\n\r\n", /not "name: value"/],
    ["HTTP/2 200 OK\r\n\r\n", /not HTTP\/1\.x/],
    [`HTTP/1.1 200 OK\r\nX: ${"a".repeat(70000)}\r\n\r\n`, /over 65536 bytes/],
  ];
  for (const [resp, want] of bad) {
    const r = h1([resp]);
    assert.match(r.error ?? "", want, JSON.stringify(resp.slice(0, 50)));
    assert.equal(r.text, "", "nothing of a bad head goes out");
  }
  // Bad chunked framing: the head (judged) went, nothing after it.
  for (const [body, want] of [["zz\r\n", /not hexadecimal/], ["3\r\nabcXY", /not followed by CRLF/], ["3\nabc", /bare LF/], [`${"1".repeat(5000)}`, /over 4096 bytes/]] as const) {
    const r = h1([`HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n${body}`]);
    assert.match(r.error ?? "", want, body);
    assert.ok(r.text.startsWith("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"));
    assert.doesNotMatch(r.text, /XY|zz|111/, "nothing after the bad framing");
  }
  const noRequest = h1(["HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]);
  assert.match(noRequest.error ?? "", /to no request/, "a response nobody asked for (smuggled) is refused");
  const s = new ResponseScrubber([S]);
  s.request("GET", false);
  assert.ok(s.push(Buffer.from("junk\r\n\r\n")).error);
  assert.ok(s.push(Buffer.from("HTTP/1.1 200 OK\r\n\r\n")).error, "after an error, everything is refused");
});

test("HTTP/1.1: a streamed body paused on a byte that could begin a value goes on at idle()", () => {
  const s = new ResponseScrubber([S]);
  s.request("GET", false);
  assert.ok(!s.holding, "nothing held before the response");
  const a = s.push(Buffer.from("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n8\r\ndata: as\r\n"));
  assert.equal(Buffer.concat(a.out).toString(), "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n7\r\ndata: a\r\n");
  assert.ok(s.holding, "a byte held: the proxy arms its idle timer");
  assert.equal(Buffer.concat(s.idle().out).toString(), "1\r\ns\r\n", "the held byte, as a chunk of its own");
  assert.ok(!s.holding, "nothing held after idle()");
  assert.equal(s.idle().out.length, 0, "nothing more to release");
  const b = s.push(Buffer.from(`${(V.length - 1).toString(16)}\r\n${V.slice(1)}\r\n0\r\n\r\n`));
  const rest = Buffer.concat(b.out).toString();
  assert.ok(!rest.includes(V.slice(1)), "the rest of a value that began before the pause is replaced");
  assert.match(rest, /0\r\n\r\n$/);
});

test("HTTP/1.1 end to end: node http server reflecting the value, through the scrubber, to node's http client", async (t) => {
  const server = http.createServer((req, res) => {
    const got = String(req.headers["x-key"] ?? "");
    const body = Buffer.from(JSON.stringify({ youSent: got, path: req.url }));
    if (req.url === "/gz") {
      res.writeHead(200, { "access-control-allow-origin": got, "content-encoding": "gzip" });
      res.end(zlib.gzipSync(body));
    } else {
      res.writeHead(200, { "access-control-allow-origin": got, "content-length": body.length });
      res.end(body);
    }
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const proxy = net.createServer((guest) => {
    const upstream = net.connect((server.address() as net.AddressInfo).port, "127.0.0.1");
    const scrub = new ResponseScrubber([S]);
    guest.on("data", (b: Buffer) => {
      // (the request side: substitution already done by the test client; each request head announced)
      for (const m of b.toString("latin1").matchAll(/^([A-Z]+) \S+ HTTP\/1\.([01])\r$/gm)) scrub.request(m[1]!, m[2] === "0");
      upstream.write(b);
    });
    upstream.on("data", (b: Buffer) => {
      const r = scrub.push(b);
      for (const o of r.out) guest.write(o);
      if (r.error || r.close) { guest.end(); upstream.destroy(); }
    });
    upstream.on("end", () => { for (const o of scrub.end()) guest.write(o); guest.end(); });
    guest.on("close", () => upstream.destroy());
    upstream.on("error", () => guest.destroy());
  });
  proxy.listen(0, "127.0.0.1");
  await once(proxy, "listening");
  t.after(() => { server.close(); proxy.close(); server.closeAllConnections(); });
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const get = (path: string) => new Promise<{ headers: http.IncomingHttpHeaders; body: string }>((resolve, reject) => {
    const req = http.get({ host: "127.0.0.1", port: (proxy.address() as net.AddressInfo).port, path, agent, headers: { "x-key": V } }, (res) => {
      const parts: Buffer[] = [];
      res.on("data", (d: Buffer) => parts.push(d));
      res.on("end", () => resolve({ headers: res.headers, body: Buffer.concat(parts).toString() }));
    });
    req.on("error", reject);
  });
  for (const path of ["/a", "/gz", "/b"]) {
    const r = await get(path);
    assert.equal(r.headers["access-control-allow-origin"], P, path);
    assert.deepEqual(JSON.parse(r.body), { youSent: P, path }, path);
    assert.ok(!JSON.stringify(r).includes(V));
  }
  agent.destroy();
});

test("HTTP/1.1 throughput without occurrences (printed, not asserted)", () => {
  const s = new ResponseScrubber([S, secret("another-secret-value-0001", "moat-ph-zyxwvutsrqponmlk")]);
  s.request("GET", false);
  const total = 64 << 20;
  const chunk = Buffer.alloc(65536);
  for (let i = 0; i < chunk.length; i++) chunk[i] = 0x20 + ((i * 7919) % 95); // printable, '%' and '\' among them
  let bytes = 0;
  const t0 = process.hrtime.bigint();
  bytes += s.push(Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${total}\r\n\r\n`)).out.reduce((n, b) => n + b.length, 0);
  for (let sent = 0; sent < total; sent += chunk.length) bytes += s.push(chunk).out.reduce((n, b) => n + b.length, 0);
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  assert.ok(bytes > total);
  console.log(`# ResponseScrubber: 64 MiB body, no occurrences: ${(total / 1048576 / secs).toFixed(0)} MiB/s`);
});

// ---------------------------------------------------------------- HTTP/2

interface Frame { type: number; flags: number; stream: number; payload: Buffer }
function frame(type: number, flags: number, stream: number, payload: Buffer | string): Buffer {
  const p = typeof payload === "string" ? Buffer.from(payload, "latin1") : payload;
  const h = Buffer.alloc(9);
  h.writeUIntBE(p.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(stream, 5);
  return Buffer.concat([h, p]);
}
function parseFrames(b: Buffer): Frame[] {
  const out: Frame[] = [];
  let o = 0;
  while (o < b.length) {
    assert.ok(b.length - o >= 9, "a whole frame header");
    const len = b.readUIntBE(o, 3);
    assert.ok(b.length - o - 9 >= len, "a whole frame");
    out.push({ type: b[o + 3]!, flags: b[o + 4]!, stream: b.readUInt32BE(o + 5) & 0x7fffffff, payload: b.subarray(o + 9, o + 9 + len) });
    o += 9 + len;
  }
  return out;
}
/** What a guest makes of the scrubbed frames: headers per stream (a fresh HPACK decoder), data per stream, flow-control bytes. */
function guestView(frames: Frame[]) {
  const dec = hpack.decompressor.create({ table: { maxSize: 4096 } } as never);
  const headers: { stream: number; list: [string, string][] }[] = [];
  const data = new Map<number, string>();
  let flow = 0;
  let block: Buffer[] = [];
  for (const f of frames) {
    assert.ok(f.payload.length <= 16384, "frames fit the smallest SETTINGS_MAX_FRAME_SIZE");
    if (f.type === 0) {
      flow += f.payload.length;
      let p = f.payload;
      if (f.flags & 0x8) p = p.subarray(1, p.length - p[0]!);
      data.set(f.stream, (data.get(f.stream) ?? "") + p.toString("latin1"));
    }
    if (f.type === 1 || f.type === 9 || f.type === 5) {
      let p = f.payload;
      if (f.type === 1 && f.flags & 0x20) p = p.subarray(5);
      if (f.type === 5) p = p.subarray(4);
      block.push(p);
      if (f.flags & 0x4) {
        dec.write(Buffer.concat(block));
        dec.execute();
        const list: [string, string][] = [];
        for (let h = dec.read(); h; h = dec.read()) { list.push([h.name, h.value]); assert.ok(h.neverIndex, "re-encoded as never indexed"); }
        headers.push({ stream: f.stream, list });
        block = [];
      }
    }
  }
  return { headers, data, flow };
}

test("HTTP/2: reflected header values and DATA across frames (padded too) are scrubbed; flow-control bytes unchanged", () => {
  const enc = hpack.compressor.create({ table: { maxSize: 4096 } } as never);
  const block = (hs: [string, string][]) => { enc.write(hs.map(([name, value]) => ({ name, value }))); return enc.read(); };
  const b1 = block([[":status", "200"], ["access-control-allow-origin", `https://o.test/${V}`], ["x-echo", V]]);
  const trailers = block([["x-trailer", `${pct(V)}`]]);
  const b2 = block([[":status", "200"], ["access-control-allow-origin", `https://o.test/${V}`], ["x-echo", V]]); // indexed the second time
  const pushBlock = block([[":method", "GET"], [":path", `/echo?k=${encodeURIComponent(V)}`], [":authority", "api.example.test"], [":scheme", "https"]]);
  const pad = (p: string, n: number) => Buffer.concat([Buffer.from([n]), Buffer.from(p, "latin1"), Buffer.alloc(n)]);
  const input = Buffer.concat([
    frame(4, 0, 0, ""), // SETTINGS
    frame(1, 0x4, 1, b1),
    frame(0, 0, 1, `{"k":"${V.slice(0, 10)}`),
    frame(0, 0x8, 1, pad(V.slice(10, 20), 7)),
    frame(0, 0, 1, `${V.slice(20)}"}`),
    frame(1, 0x4 | 0x1, 1, trailers),
    frame(1, 0x20, 3, Buffer.concat([Buffer.from([0, 0, 0, 0, 16]), b2.subarray(0, 5)])),
    frame(9, 0x4, 3, b2.subarray(5)),
    frame(0, 0x1 | 0x8, 3, pad(`[${V.slice(0, 25)}`, 3)),
    frame(5, 0x4 | 0x8, 1, Buffer.concat([Buffer.from([2, 0, 0, 0, 2]), pushBlock, Buffer.alloc(2)])),
    frame(7, 0, 0, Buffer.concat([Buffer.alloc(8), Buffer.from(`bye ${V}`)])),
  ]);
  const inputFlow = parseFrames(input).filter((f) => f.type === 0).reduce((n, f) => n + f.payload.length, 0);
  for (const step of [input.length, 1, 7, 64]) {
    const s = new Http2ResponseScrubber([S]);
    const out: Buffer[] = [];
    const scrubbed: ValueFound[] = [];
    for (let o = 0; o < input.length; o += step) {
      const r = s.push(input.subarray(o, o + step));
      assert.equal(r.error, undefined);
      out.push(...r.out);
      scrubbed.push(...r.scrubbed);
    }
    out.push(...s.end());
    const all = Buffer.concat(out);
    assert.ok(!all.toString("latin1").includes("Live_9f8"), `step ${step}: no value anywhere`);
    const frames = parseFrames(all);
    const g = guestView(frames);
    assert.equal(g.flow, inputFlow, `step ${step}: the guest receives as many flow-controlled bytes as the server sent`);
    assert.deepEqual(g.headers[0], { stream: 1, list: [[":status", "200"], ["access-control-allow-origin", `https://o.test/${P}`], ["x-echo", P]] });
    assert.deepEqual(g.headers[1], { stream: 1, list: [["x-trailer", pct(P)]] });
    assert.deepEqual(g.headers[2], { stream: 3, list: [[":status", "200"], ["access-control-allow-origin", `https://o.test/${P}`], ["x-echo", P]] });
    assert.equal(g.data.get(1), `{"k":"${P.slice(0, V.length)}"}`, "same length: the placeholder cut to the value's length");
    assert.equal(g.data.get(3), `[${P.slice(0, 25)}`, "a value cut by END_STREAM is replaced too");
    const prio = frames.find((f) => f.type === 1 && f.stream === 3)!;
    assert.ok(prio.flags & 0x20 && prio.payload.subarray(0, 5).equals(Buffer.from([0, 0, 0, 0, 16])), "priority fields kept");
    const es = frames.filter((f) => f.flags & 0x1 && (f.type === 0 || f.type === 1)).map((f) => `${f.type}:${f.stream}`);
    assert.deepEqual(es, ["1:1", "0:3"], "END_STREAM where the server put it");
    const trailersAt = frames.findIndex((f) => f.type === 1 && f.stream === 1 && f.flags & 0x1);
    assert.ok(frames.slice(trailersAt).every((f) => !(f.type === 0 && f.stream === 1)), "no DATA after the trailers");
    assert.deepEqual(g.headers[3], { stream: 1, list: [[":method", "GET"], [":path", `/echo?k=${P}`], [":authority", "api.example.test"], [":scheme", "https"]] });
    const push = frames.find((f) => f.type === 5)!;
    assert.ok(push.payload.subarray(0, 4).equals(Buffer.from([0, 0, 0, 2])) && !(push.flags & 0x8), "the promised stream kept, the padding dropped");
    const goaway = frames.find((f) => f.type === 7)!;
    assert.equal(goaway.payload.subarray(8).toString(), `bye ${P}`);
    assert.ok(scrubbed.length >= 7);
  }
});

test("HTTP/2: a stream paused on a byte that could begin a value goes on at idle(); the flow-control total still matches", () => {
  const s = new Http2ResponseScrubber([S]);
  const a = parseFrames(Buffer.concat(s.push(frame(0, 0, 5, "chunk 1 ends in s")).out));
  assert.deepEqual(a.map((f) => f.payload.toString()), ["chunk 1 ends in "]);
  assert.ok(s.holding, "a byte held: the proxy arms its idle timer");
  const b = parseFrames(Buffer.concat(s.idle().out));
  assert.deepEqual(b.map((f) => [f.type, f.stream, f.payload.toString()]), [[0, 5, "s"]]);
  assert.ok(!s.holding, "nothing held after idle()");
  const c = parseFrames(Buffer.concat(s.push(frame(0, 1, 5, `${V.slice(1)}!`)).out));
  const body = [...a, ...b, ...c].map((f) => f.payload.toString("latin1")).join("");
  assert.equal(body.length, "chunk 1 ends in s".length + V.length, "as many bytes as the server sent");
  assert.ok(!body.includes(V.slice(1)));
  assert.ok(c.at(-1)!.flags & 0x1, "END_STREAM kept");
});

test("HTTP/2: a coded (gzip, br) body passes unchanged when clean; a value inside one closes the connection before it leaves", () => {
  const clean = Buffer.from(`{"items":[${Array.from({ length: 3000 }, (_, i) => i * 7).join(",")}],"note":"sk-not-it"}`);
  for (const coding of ["gzip", "br", "deflate"] as const) {
    // (a fresh HPACK encoder for each connection: a new scrubber is a new connection)
    const head = (stream: number) => {
      const enc = hpack.compressor.create({ table: { maxSize: 4096 } } as never);
      enc.write([{ name: ":status", value: "200" }, { name: "content-encoding", value: coding }]);
      return frame(1, 0x4, stream, enc.read());
    };
    const code = (b: Buffer) => (coding === "br" ? zlib.brotliCompressSync(b) : coding === "gzip" ? zlib.gzipSync(b) : zlib.deflateSync(b));
    const okBody = code(clean);
    const frames = [head(1)];
    for (let o = 0; o < okBody.length; o += 1000) frames.push(frame(0, o + 1000 >= okBody.length ? 0x1 : 0, 1, okBody.subarray(o, o + 1000)));
    const s = new Http2ResponseScrubber([S]);
    const out: Buffer[] = [];
    for (const f of frames) {
      const r = s.push(f);
      assert.equal(r.error, undefined, coding);
      out.push(...r.out);
    }
    const data = Buffer.concat(parseFrames(Buffer.concat(out)).filter((f) => f.type === 0).map((f) => f.payload));
    assert.ok(data.equals(okBody), `${coding}: the coded bytes as they came`);
    // The value inside the coding, its bytes split across frames.
    const bad = code(Buffer.from(`${clean.toString().slice(0, 5000)}"echo":"${V}"${clean.toString().slice(5000)}`));
    const s2 = new Http2ResponseScrubber([S]);
    const sent: Buffer[] = [];
    let error: string | undefined;
    s2.push(head(3));
    for (let o = 0; o < bad.length && !error; o += 50) {
      const r = s2.push(frame(0, o + 50 >= bad.length ? 0x1 : 0, 3, bad.subarray(o, o + 50)));
      sent.push(...r.out);
      error = r.error;
    }
    assert.match(error ?? "", new RegExp(`value of secret KEY .* in a ${coding}-coded response body on stream 3`));
    const got = Buffer.concat(parseFrames(Buffer.concat(sent)).filter((f) => f.type === 0).map((f) => f.payload));
    assert.ok(got.length > 100, `${coding}: what came before the value went on (${got.length} bytes)`);
    const decoded = (coding === "br" ? zlib.brotliDecompressSync : coding === "gzip" ? zlib.gunzipSync : zlib.inflateSync)(got, { finishFlush: coding === "br" ? zlib.constants.BROTLI_OPERATION_FLUSH : zlib.constants.Z_SYNC_FLUSH } as never);
    assert.ok(!decoded.toString("latin1").includes(V.slice(0, 4)), `${coding}: what went out decodes to no part of the value (${decoded.length} bytes)`);
  }
  const enc = hpack.compressor.create({ table: { maxSize: 4096 } } as never);
  enc.write([{ name: ":status", value: "200" }, { name: "content-encoding", value: "zstd" }]);
  assert.match(new Http2ResponseScrubber([S]).push(frame(1, 0x4, 1, enc.read())).error ?? "", /Content-Encoding "zstd", which cannot be scanned/);
});

test("HTTP/2: malformed frames and oversized header blocks are errors", () => {
  const enc = hpack.compressor.create({ table: { maxSize: 4096 } } as never);
  enc.write([{ name: ":status", value: "200" }]);
  const ok = enc.read();
  const bad: [Buffer, RegExp][] = [
    [frame(9, 0x4, 1, ok), /CONTINUATION on stream 1 without HEADERS/],
    [Buffer.concat([frame(1, 0, 1, ok), frame(0, 0, 1, "x")]), /DATA frame inside the header block/],
    [Buffer.concat([frame(1, 0, 1, ok), frame(9, 0x4, 3, "")]), /inside the header block of stream 1/],
    [Buffer.concat([frame(1, 0, 1, ok), ...Array.from({ length: 5 }, () => frame(9, 0, 1, Buffer.alloc(16000, 0x41)))]), /header block over 65536/],
    [frame(0, 0x8, 1, Buffer.from([9, 1, 2])), /padding longer than the frame/],
    [frame(0, 0, 0, "x"), /DATA on stream 0/],
    [frame(1, 0x4, 1, Buffer.from([0xff, 0xff, 0xff, 0xff])), /does not decode/],
    [frame(4, 0, 0, Buffer.alloc(70000)), /at most 65536/],
  ];
  for (const [input, want] of bad) {
    const s = new Http2ResponseScrubber([S]);
    const r = s.push(input);
    assert.match(r.error ?? "", want);
    assert.ok(s.push(frame(4, 0, 0, "")).error, "and stays failed");
  }
  // The server's encoder resizing its table (as the client's SETTINGS allow): followed; beyond the limit, refused.
  const resized = hpack.compressor.create({ table: { maxSize: 1024 } } as never);
  resized.write([{ name: "x-echo", value: V }, { name: "x-pad", value: "p".repeat(900) }, { name: "x-echo2", value: V }]);
  const sizeUpdate = Buffer.from([0x3f, 0xe1, 0x07]); // dynamic table size update to 1024 (RFC 7541 §6.3)
  const s1 = new Http2ResponseScrubber([S]);
  const r1 = s1.push(Buffer.concat([frame(1, 0x4, 1, Buffer.concat([sizeUpdate, resized.read()]))]));
  assert.equal(r1.error, undefined);
  assert.deepEqual(guestView(parseFrames(Buffer.concat(r1.out))).headers[0]!.list.map(([n, v]) => [n, v.slice(0, 12)]), [["x-echo", P.slice(0, 12)], ["x-pad", "pppppppppppp"], ["x-echo2", P.slice(0, 12)]]);
  const tooBig = new Http2ResponseScrubber([S]);
  assert.match(tooBig.push(frame(1, 0x4, 1, Buffer.from([0x3f, 0xe1, 0xff, 0x7f]))).error ?? "", /does not decode/, "a table larger than any client allows");
  // Extension frames are dropped, their payload never forwarded.
  const s = new Http2ResponseScrubber([S]);
  const r = s.push(Buffer.concat([frame(0xa, 0, 0, `\x00\x05o.test h3=":443"; ${V}`), frame(6, 0, 0, Buffer.alloc(8))]));
  assert.equal(r.error, undefined);
  assert.deepEqual(parseFrames(Buffer.concat(r.out)).map((f) => f.type), [6]);
});

test("HTTP/2: a 16 MiB DATA frame streams through in bounded memory", () => {
  const s = new Http2ResponseScrubber([S]);
  const total = 16 * 1024 * 1024 - 1;
  const piece = Buffer.alloc(65536, 0x61);
  // The value straddles two reads in the middle.
  const mid = Buffer.from(piece);
  mid.write(V.slice(0, 9), mid.length - 9, "latin1");
  const mid2 = Buffer.from(piece);
  mid2.write(V.slice(9), 0, "latin1");
  globalThis.gc?.();
  const rss0 = process.memoryUsage().rss;
  let peak = rss0;
  let flow = 0;
  let seen = "";
  const count = (out: Buffer[]) => {
    for (const f of parseFrames(Buffer.concat(out))) {
      if (f.type !== 0) continue;
      flow += f.payload.length;
      const t = f.payload.toString("latin1");
      if (/[^a]/.test(t)) seen += t.replace(/a/g, "");
    }
  };
  const hdr = Buffer.alloc(9);
  hdr.writeUIntBE(total, 0, 3); // DATA, END_STREAM, stream 1: the largest frame there can be
  hdr[4] = 0x1;
  hdr.writeUInt32BE(1, 5);
  count(s.push(hdr).out);
  let sent = 0;
  for (let k = 0; sent < total; k++) {
    const b = (k === 100 ? mid : k === 101 ? mid2 : piece).subarray(0, Math.min(65536, total - sent));
    sent += b.length;
    const r = s.push(b);
    assert.equal(r.error, undefined);
    count(r.out);
    if (k % 16 === 0) peak = Math.max(peak, process.memoryUsage().rss);
    if (k === 16) assert.ok(flow >= sent - 200, `streamed, not held: ${flow} of ${sent} bytes out`);
  }
  assert.equal(flow, total, "every byte went on, no more");
  assert.equal(seen, `${P.slice(0, V.length)}`.replace(/a/g, ""), "the value replaced, across the two reads");
  const growth = (peak - rss0) / 1048576;
  console.log(`# 16 MiB DATA frame: RSS growth ${growth.toFixed(1)} MiB`);
  assert.ok(growth < 32, `RSS grew ${growth.toFixed(1)} MiB`);
});

test("HTTP/2 end to end: node http2 server reflecting the value, through the scrubber, to a node http2 client; 10 MiB after", async (t) => {
  const server = http2.createServer();
  server.on("stream", (stream, headers) => {
    const got = String(headers["x-key"] ?? "");
    const path = String(headers[":path"]);
    stream.respond({ ":status": 200, "access-control-allow-origin": got, "x-echo": `v=${got}` });
    if (path === "/big") {
      const chunk = Buffer.alloc(1 << 20, 0x62);
      let n = 0;
      const more = () => {
        while (n < 10) {
          n++;
          if (n === 10) { stream.end(chunk); return; }
          if (!stream.write(chunk)) { stream.once("drain", more); return; }
        }
      };
      more();
      return;
    }
    // The value across DATA frames: written in pieces, a pause between them.
    const pieces = [`{"echo":"${got.slice(0, 7)}`, got.slice(7, 15), `${got.slice(15)}","n":1}`];
    let i = 0;
    const next = () => {
      if (i === pieces.length - 1) { stream.end(pieces[i]); return; }
      stream.write(pieces[i++]);
      setTimeout(next, 15);
    };
    next();
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  let frames = 0;
  const raw: Buffer[] = [];
  const proxy = net.createServer((guest) => {
    const upstream = net.connect((server.address() as net.AddressInfo).port, "127.0.0.1");
    const scrub = new Http2ResponseScrubber([S]);
    guest.pipe(upstream);
    upstream.on("data", (b: Buffer) => {
      const r = scrub.push(b);
      frames++;
      if (raw.length < 64) raw.push(b);
      for (const o of r.out) guest.write(o);
      if (r.error) { guest.destroy(); upstream.destroy(); }
    });
    upstream.on("end", () => { for (const o of scrub.end()) guest.write(o); guest.end(); });
    guest.on("error", () => upstream.destroy());
    upstream.on("error", () => guest.destroy());
  });
  proxy.listen(0, "127.0.0.1");
  await once(proxy, "listening");
  const client = http2.connect(`http://127.0.0.1:${(proxy.address() as net.AddressInfo).port}`);
  t.after(() => { client.close(); server.close(); proxy.close(); });
  const get = (path: string) => new Promise<{ headers: http2.IncomingHttpHeaders; body: Buffer }>((resolve, reject) => {
    const req = client.request({ ":path": path, "x-key": V });
    let headers: http2.IncomingHttpHeaders = {};
    req.on("response", (h) => { headers = h; });
    const parts: Buffer[] = [];
    req.on("data", (d: Buffer) => parts.push(d));
    req.on("end", () => resolve({ headers, body: Buffer.concat(parts) }));
    req.on("error", reject);
  });
  for (const path of ["/a", "/b"]) {
    const r = await get(path);
    assert.equal(r.headers["access-control-allow-origin"], P, path);
    assert.equal(r.headers["x-echo"], `v=${P}`, path);
    assert.equal(r.body.toString(), `{"echo":"${P.slice(0, V.length)}","n":1}`, path);
  }
  // The server did split the value across DATA frames (what the scrubber had to join).
  const early = Buffer.concat(raw);
  const dataPayloads: string[] = [];
  for (let o = 0; o + 9 <= early.length;) {
    const len = early.readUIntBE(o, 3);
    if (o + 9 + len > early.length) break;
    if (early[o + 3] === 0) dataPayloads.push(early.toString("latin1", o + 9, o + 9 + len));
    o += 9 + len;
  }
  assert.ok(dataPayloads.includes(`{"echo":"${V.slice(0, 7)}`) && dataPayloads.includes(V.slice(7, 15)), `frames: ${JSON.stringify(dataPayloads)}`);
  const [big, again] = await Promise.all([get("/big"), get("/c")]);
  assert.equal(big.body.length, 10 << 20, "10 MiB through: flow control intact");
  assert.ok(big.body.every((x) => x === 0x62));
  assert.equal(again.headers["x-echo"], `v=${P}`);
  assert.ok(frames > 10);
});

test("HTTP/2: a response header block HPACK expands (one table entry referenced thousands of times) is an error, not hundreds of MB to scrub", () => {
  const entry = Buffer.concat([Buffer.from([0x40, 0x01]), Buffer.from("x"), Buffer.from([0x7f, 0xa1, 0x1e]), Buffer.alloc(4000, 0x61)]); // x: a×4000, indexed
  const status = Buffer.from([0x88]); // :status 200
  const s = new Http2ResponseScrubber([S]);
  assert.equal(s.push(frame(1, 0x5, 1, Buffer.concat([status, entry]))).error, undefined);
  const bomb = Buffer.concat([status, Buffer.alloc(60000, 0xbe)]);
  const frames: Buffer[] = [];
  for (let o = 0; o < bomb.length; o += 16384) frames.push(frame(o === 0 ? 1 : 9, (o === 0 ? 0x1 : 0) | (o + 16384 >= bomb.length ? 0x4 : 0), 3, bomb.subarray(o, o + 16384)));
  const t0 = Date.now();
  const r = s.push(Buffer.concat(frames));
  assert.match(r.error ?? "", /header list over/);
  assert.ok(r.out.reduce((n, b) => n + b.length, 0) < 65536, "nothing of it reaches the guest");
  assert.ok(Date.now() - t0 < 1000, `judged in ${Date.now() - t0} ms`);
});

test("HTTP/2: a flood of empty CONTINUATION frames from the server is an error, not gathered without end", () => {
  const s = new Http2ResponseScrubber([S]);
  assert.equal(s.push(frame(1, 0, 1, Buffer.from([0x88]))).error, undefined);
  const chunk = Buffer.concat(Array.from({ length: 1820 }, () => frame(9, 0, 1, Buffer.alloc(0))));
  let sent = 0;
  let error: string | undefined;
  for (; sent < 64 << 20 && !error; sent += chunk.length) error = s.push(chunk).error;
  assert.match(error ?? "", /header block over/);
  assert.ok(sent <= 128 * 1024, `within 128 KiB of them, not after ${sent}`);
});

test("why a response was refused never quotes a value (the reason goes to the audit log and the library)", () => {
  const cases = [
    `HTTP/1.1 200 OK\r\n${V}: x\r\nX-Bad ${V}\r\n\r\n`, // a malformed header line echoing the value
    `HTTP/1.1 OK ${V}\r\n\r\n`, // a malformed status line
    `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n${V}\r\n`, // a chunk size line
  ];
  for (const c of cases) {
    const r = h1([c]);
    assert.ok(r.error, c);
    assert.doesNotMatch(r.error!, new RegExp(V.slice(0, 12)), `the reason quotes the value: ${r.error}`);
  }
});
