// secrets.test.ts — placeholders and their forms, the streaming scanner, and the HTTP/1.1 request
// filter that substitutes values or stops a request.
import { test } from "node:test";
import assert from "node:assert/strict";
import { validateSecrets, PlaceholderScanner, parseSecretFlag, type Secret } from "../../orchestrator/src/secrets/secrets.js";
import { placeholderForms } from "../../orchestrator/src/model/placeholders.js";
import { RequestFilter, MAX_HEAD } from "../../orchestrator/src/secrets/http-filter.js";
import { Http2RequestFilter } from "../../orchestrator/src/secrets/http2-filter.js";
import hpack from "hpack.js";

const P = "moat-ph-abcdefghijklmnopqrstuvwx";
const secret = (hosts = ["api.example.test"], extra = {}): Secret =>
  validateSecrets([{ env: "KEY", allowedHosts: hosts, placeholder: P, ...extra }], { KEY: "VALUE-123" })[0]!;

test("secrets are read from moat's environment or a file, never a flag; bad ones are refused", () => {
  const s = validateSecrets([{ env: "A", allowedHosts: ["*.Example.Test"] }], { A: "v" })[0]!;
  assert.match(s.placeholder, /^moat-ph-[a-z0-9]{24}$/);
  assert.deepEqual(s.hosts, ["*.example.test"]);
  assert.deepEqual(parseSecretFlag("API=REAL@a.test,b.test"), { env: "API", valueFrom: { env: "REAL" }, allowedHosts: ["a.test", "b.test"] });
  assert.deepEqual(parseSecretFlag("API@a.test").valueFrom, { env: "API" });
  assert.throws(() => parseSecretFlag("API=value-on-the-command-line"), /is not NAME@HOST/);
  assert.throws(() => validateSecrets([{ env: "A", allowedHosts: ["a.test"] }], {}), /moat's environment has no A/);
  assert.throws(() => validateSecrets([{ env: "A", allowedHosts: ["192.0.2.1"] }], { A: "v" }), /not a name/);
  assert.throws(() => validateSecrets([{ env: "A", allowedHosts: [] }], { A: "v" }), /no allowed hosts/);
  assert.throws(() => validateSecrets([{ env: "A", allowedHosts: ["a.test"] }, { env: "A", allowedHosts: ["b.test"] }], { A: "v" }), /given twice/);
  assert.throws(() => validateSecrets([{ env: "A", allowedHosts: ["a.test"] }], { A: "line\nbreak" }), /line break/);
});

test("placeholder forms: raw, base64 at every alignment, %XX, JSON \\u escapes", () => {
  const forms = placeholderForms(P);
  const text = (s: string) => forms.some((f) => s.includes(f));
  assert.ok(text(`x${P}y`));
  for (const pre of ["", "a", "ab"]) assert.ok(text(Buffer.from(pre + P).toString("base64")), `base64 after ${pre.length} bytes`);
  assert.ok(text(Buffer.from("ab" + P).toString("base64url")));
  assert.ok(text([...P].map((c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`).join("")));
  assert.ok(text(JSON.stringify(P).replace(/[a-z-]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`)));
  assert.ok(!text("moat-ph-abcdefghijklmnopqrstuvwX"), "another token is not this one");
});

test("the scanner finds a placeholder split across writes, and holds back only what could start one", () => {
  const sc = new PlaceholderScanner([secret()]);
  const a = sc.push(Buffer.from(`hello ${P.slice(0, 10)}`));
  assert.equal(a.found, undefined);
  assert.equal(a.release.toString(), "hello ", "the possible start is held back");
  const b = sc.push(Buffer.from(P.slice(10)));
  assert.equal(b.found?.form, "raw");
  const clean = new PlaceholderScanner([secret()]);
  assert.equal(clean.push(Buffer.from("GET / HTTP/1.1\r\n\r\n")).release.toString(), "GET / HTTP/1.1\r\n\r\n", "ordinary traffic is not delayed");
  const tail = new PlaceholderScanner([secret()]);
  assert.equal(tail.push(Buffer.from("end with moat")).release.toString(), "end with ");
  assert.equal(tail.flush().toString(), "moat", "released when the stream ends");
});

function filter(hosts = ["api.example.test"], sni = "api.example.test", pinned = true, extra = {}) {
  return new RequestFilter([secret(hosts, extra)], { sni, pinned });
}
const feed = (f: RequestFilter, ...parts: string[]) => {
  const out: string[] = [];
  for (const p of parts) {
    const r = f.push(Buffer.from(p, "latin1"));
    out.push(...r.out.map((b) => b.toString("latin1")));
    if (r.violation) return { out: out.join(""), violation: r.violation };
  }
  return { out: out.join("") };
};

test("substitution in headers and Basic auth, only where Host equals the SNI and the address was pinned", () => {
  const basic = Buffer.from(`u:${P}`).toString("base64");
  const r = feed(filter(), `GET /x HTTP/1.1\r\nHost: API.example.test:443\r\nAuthorization: Basic ${basic}\r\nX-Key: k=${P};\r\n\r\n`);
  assert.equal(r.violation, undefined);
  assert.match(r.out, new RegExp(`Authorization: Basic ${Buffer.from("u:VALUE-123").toString("base64")}\r\n`));
  assert.match(r.out, /X-Key: k=VALUE-123;\r\nAccept-Encoding: identity\r\n\r\n$/, "a substituted request asks for an uncompressed answer (it is scanned)");
  const mismatch = feed(filter(), `GET / HTTP/1.1\r\nHost: other.test\r\nX-Key: ${P}\r\n\r\n`);
  assert.match(mismatch.violation?.where ?? "", /Host other\.test is not the SNI/);
  assert.equal(mismatch.out, "", "nothing of the request left");
  const unpinned = feed(filter(["api.example.test"], "api.example.test", false), `GET / HTTP/1.1\r\nHost: api.example.test\r\nX-Key: ${P}\r\n\r\n`);
  assert.ok(unpinned.violation, "an address DNS did not pin to the name gets no value");
  const query = feed(filter(), `GET /?k=${P} HTTP/1.1\r\nHost: api.example.test\r\n\r\n`);
  assert.equal(query.violation?.where, "the request line to api.example.test");
});

test("the query string, when the secret allows it: substituted percent-encoded, in the query only", () => {
  const f = new RequestFilter([validateSecrets([{ env: "K", allowedHosts: ["api.example.test"], placeholder: P, inject: { query: true } }], { K: "a b&c" })[0]!], { sni: "api.example.test", pinned: true });
  const r = feed(f, `GET /v1?key=${P}&x=1 HTTP/1.1\r\nHost: api.example.test\r\n\r\n`);
  assert.equal(r.violation, undefined);
  assert.match(r.out, /^GET \/v1\?key=a%20b%26c&x=1 HTTP\/1\.1\r\n/);
  const inPath = feed(new RequestFilter([validateSecrets([{ env: "K", allowedHosts: ["api.example.test"], placeholder: P, inject: { query: true } }], { K: "v" })[0]!], { sni: "api.example.test", pinned: true }),
    `GET /${P}/x HTTP/1.1\r\nHost: api.example.test\r\n\r\n`);
  assert.match(inPath.violation?.where ?? "", /the request line/, "in the path it stays a violation");
});

test("bodies, when the secret allows it: held whole, substituted, framed by Content-Length; compressed ones are not touched", () => {
  const body = () => new RequestFilter([validateSecrets([{ env: "K", allowedHosts: ["api.example.test"], placeholder: P, inject: { body: true } }], { K: "REAL-VALUE" })[0]!], { sni: "api.example.test", pinned: true });
  const payload = `{"key":"${P}"}`;
  const cl = feed(body(), `POST /a HTTP/1.1\r\nHost: api.example.test\r\nContent-Length: ${payload.length}\r\n\r\n${payload.slice(0, 10)}`, payload.slice(10), `GET /next HTTP/1.1\r\nHost: api.example.test\r\n\r\n`);
  assert.equal(cl.violation, undefined);
  assert.equal(cl.out, `POST /a HTTP/1.1\r\nContent-Length: 20\r\nHost: api.example.test\r\nAccept-Encoding: identity\r\n\r\n{"key":"REAL-VALUE"}GET /next HTTP/1.1\r\nHost: api.example.test\r\nAccept-Encoding: identity\r\n\r\n`);
  const chunked = feed(body(), `POST /c HTTP/1.1\r\nHost: api.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"k":\r\n`, `${(payload.length - 5).toString(16)}\r\n${payload.slice(5)}\r\n0\r\n\r\n`);
  assert.equal(chunked.violation, undefined);
  // (the chunks are `{"k":` and the rest of the payload from its sixth byte)
  assert.equal(chunked.out, `POST /c HTTP/1.1\r\nContent-Length: 20\r\nHost: api.example.test\r\nAccept-Encoding: identity\r\n\r\n{"k":":"REAL-VALUE"}`);
  const gz = feed(body(), `POST /z HTTP/1.1\r\nHost: api.example.test\r\nContent-Encoding: gzip\r\nContent-Length: 40\r\n\r\n${P}xxxxxxxx`);
  assert.match(gz.violation?.where ?? "", /a request body/, "a compressed body is scanned, never rewritten");
});

test("bodies (Content-Length and chunked) are followed to the next request; a placeholder in one is a violation", () => {
  const f = filter();
  const two = feed(f, "POST /a HTTP/1.1\r\nHost: api.example.test\r\nContent-Length: 5\r\n\r\nhel", `lo`, `GET /b HTTP/1.1\r\nHost: api.example.test\r\nX: ${P}\r\n\r\n`);
  assert.equal(two.violation, undefined);
  assert.match(two.out, /hello GET \/b|hello/);
  assert.match(two.out, /X: VALUE-123\r\nAccept-Encoding: identity\r\n\r\n$/, "the pipelined second request was judged (and substituted) too");
  const chunked = feed(filter(), "POST / HTTP/1.1\r\nHost: api.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", `GET / HTTP/1.1\r\nHost: api.example.test\r\nX: ${P}\r\n\r\n`);
  assert.equal(chunked.violation, undefined);
  assert.match(chunked.out, /X: VALUE-123/);
  const inBody = feed(filter(), `POST / HTTP/1.1\r\nHost: api.example.test\r\nContent-Length: 100\r\n\r\nkey=${P.slice(0, 9)}`, P.slice(9));
  assert.match(inBody.violation?.where ?? "", /a request body/);
  assert.doesNotMatch(inBody.out, /moat-ph-a/, "the placeholder's start was held back");
});

test("other hosts are scanned; an oversized head with a placeholder is a violation, not a pass", () => {
  const other = feed(filter(["api.example.test"], "other.test"), `GET / HTTP/1.1\r\nHost: other.test\r\nX: ${P}\r\n\r\n`);
  assert.equal(other.violation?.http, true);
  const big = feed(filter(), `GET / HTTP/1.1\r\nHost: api.example.test\r\nX: ${"a".repeat(MAX_HEAD)}`, `${P}\r\n\r\n`);
  assert.ok(big.violation, "over the head limit with a placeholder inside");
});

// ---- HTTP/2 ------------------------------------------------------------------------------------

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");
function h2frame(type: number, flags: number, stream: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(stream, 5);
  return Buffer.concat([h, payload]);
}
/** The header blocks of the HEADERS/CONTINUATION frames in `b`, decoded with a fresh (server-side) decoder. */
function decodeRequests(b: Buffer): { name: string; value: string }[][] {
  const dec = hpack.decompressor.create({ table: { size: 4096 } });
  const out: { name: string; value: string }[][] = [];
  let o = PREFACE.length;
  let block: Buffer[] = [];
  while (o + 9 <= b.length) {
    const len = b.readUIntBE(o, 3), type = b[o + 3]!, flags = b[o + 4]!;
    if (type === 1 || type === 9) {
      block.push(b.subarray(o + 9, o + 9 + len));
      if (flags & 4) {
        dec.write(Buffer.concat(block));
        dec.execute();
        const hs: { name: string; value: string }[] = [];
        for (let h = dec.read(); h; h = dec.read()) hs.push({ name: h.name, value: h.value });
        out.push(hs);
        block = [];
      }
    }
    o += 9 + len;
  }
  return out;
}

test("HTTP/2: header blocks are substituted through HPACK (also across CONTINUATION and the guest's dynamic table), re-encoded never indexed", () => {
  const enc = hpack.compressor.create({ table: { size: 4096 } });
  const req = (extra: { name: string; value: string }[]) => {
    enc.write([{ name: ":method", value: "GET" }, { name: ":scheme", value: "https" }, { name: ":authority", value: "api.example.test" }, { name: ":path", value: "/" }, ...extra]);
    return enc.read();
  };
  const b1 = req([{ name: "authorization", value: `Bearer ${P}` }]);
  const b2 = req([{ name: "authorization", value: `Bearer ${P}` }]); // now from the guest's dynamic table
  const f = new Http2RequestFilter([secret()], { sni: "api.example.test", pinned: true });
  const input = Buffer.concat([PREFACE, h2frame(4, 0, 0, Buffer.alloc(0)),
    h2frame(1, 0x1 | 0x4, 1, b1),
    h2frame(1, 0x1, 3, b2.subarray(0, 5)), h2frame(9, 0x4, 3, b2.subarray(5))]);
  const r = f.push(input);
  assert.equal(r.violation, undefined);
  const out = Buffer.concat(r.out);
  const reqs = decodeRequests(out);
  assert.equal(reqs.length, 2);
  for (const hs of reqs) assert.equal(hs.find((h) => h.name === "authorization")?.value, "Bearer VALUE-123");
  assert.doesNotMatch(out.toString("latin1"), /moat-ph-/);
  // Another :authority on the same connection: a violation, with its stream.
  const bad = f.push(h2frame(1, 0x5, 5, (() => { enc.write([{ name: ":method", value: "GET" }, { name: ":scheme", value: "https" }, { name: ":authority", value: "other.test" }, { name: ":path", value: "/" }, { name: "x", value: P }]); return enc.read(); })()));
  assert.equal(bad.stream, 5);
  assert.match(bad.violation?.where ?? "", /:authority other\.test is not the SNI/);
});

test("HTTP/2: a placeholder in DATA or :path is a violation; garbage is refused (thrown, the proxy resets)", () => {
  const enc = hpack.compressor.create({ table: { size: 4096 } });
  enc.write([{ name: ":method", value: "POST" }, { name: ":scheme", value: "https" }, { name: ":authority", value: "api.example.test" }, { name: ":path", value: "/" }]);
  const f = new Http2RequestFilter([secret()], { sni: "api.example.test", pinned: true });
  assert.equal(f.push(Buffer.concat([PREFACE, h2frame(1, 0x4, 1, enc.read())])).violation, undefined);
  const data = f.push(h2frame(0, 0x1, 1, Buffer.from(`k=${P}`)));
  assert.match(data.violation?.where ?? "", /a request body/);
  const g = new Http2RequestFilter([secret()], { sni: "api.example.test", pinned: true });
  const enc2 = hpack.compressor.create({ table: { size: 4096 } }); // a new connection: a new table
  enc2.write([{ name: ":method", value: "GET" }, { name: ":scheme", value: "https" }, { name: ":authority", value: "api.example.test" }, { name: ":path", value: `/?k=${P}` }]);
  assert.match(g.push(Buffer.concat([PREFACE, h2frame(1, 0x5, 1, enc2.read())])).violation?.where ?? "", /the request's path/);
  assert.throws(() => new Http2RequestFilter([secret()], { sni: "a.test", pinned: true }).push(Buffer.from("GET / HTTP/1.1\r\n\r\nxxxxxxxx")));
  assert.throws(() => new Http2RequestFilter([secret()], { sni: "a.test", pinned: true }).push(Buffer.concat([PREFACE, h2frame(1, 0x4, 1, Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]))])));
});

test("HTTP/2: every stream's authority is held to the domain rule; malformed requests are refused on their stream", () => {
  const bind = (h: string) => (h === "api.example.test" ? null : `${h} is not covered`);
  const enc = hpack.compressor.create({ table: { size: 4096 } });
  const block = (hs: { name: string; value: string }[]) => { enc.write(hs); return enc.read() as Buffer; };
  const base = (authority: string) => [{ name: ":method", value: "GET" }, { name: ":scheme", value: "https" }, { name: ":authority", value: authority }, { name: ":path", value: "/" }];
  const f = new Http2RequestFilter([], { sni: "api.example.test", pinned: true, authority: bind });
  assert.equal(f.push(Buffer.concat([PREFACE, h2frame(1, 0x5, 1, block(base("api.example.test")))])).refusal, undefined);
  const second = f.push(h2frame(1, 0x5, 3, block(base("tenant.evil.test"))));
  assert.equal(second.refusal?.status, 403, "a second stream's :authority");
  assert.equal(second.stream, 3);
  const cases: [string, { name: string; value: string }[], number][] = [
    ["host differs from :authority", [...base("api.example.test"), { name: "host", value: "tenant.evil.test" }], 403],
    ["CONNECT", [{ name: ":method", value: "CONNECT" }, { name: ":authority", value: "tenant.evil.test:443" }], 405],
    ["a pseudo-header after a field", [{ name: ":method", value: "GET" }, { name: ":scheme", value: "https" }, { name: "x", value: "1" }, { name: ":authority", value: "api.example.test" }, { name: ":path", value: "/" }], 400],
    ["transfer-encoding", [...base("api.example.test"), { name: "transfer-encoding", value: "chunked" }], 400],
    ["CRLF in a value", [...base("api.example.test"), { name: "x", value: "a\r\nHost: tenant.evil.test" }], 400],
    ["an upper-case name", [...base("api.example.test"), { name: "X-Up", value: "1" }], 400],
    ["no :authority nor host", [{ name: ":method", value: "GET" }, { name: ":scheme", value: "https" }, { name: ":path", value: "/" }], 400],
    // RFC 9113 §8.3.1: origin-form only. A server that builds "GET <:path> HTTP/2.0" (Apache's
    // mod_http2) or resolves it against a base URL reads an absolute :path's host, not :authority's.
    ["an absolute-form :path", [{ name: ":method", value: "GET" }, { name: ":scheme", value: "https" }, { name: ":authority", value: "api.example.test" }, { name: ":path", value: "https://tenant.evil.test/" }], 400],
    ["a space in :path", [{ name: ":method", value: "GET" }, { name: ":scheme", value: "https" }, { name: ":authority", value: "api.example.test" }, { name: ":path", value: "/a HTTP/1.1" }], 400],
    ["* for GET", [{ name: ":method", value: "GET" }, { name: ":scheme", value: "https" }, { name: ":authority", value: "api.example.test" }, { name: ":path", value: "*" }], 400],
  ];
  for (const [name, hs, status] of cases) {
    const g = new Http2RequestFilter([], { sni: "api.example.test", pinned: true, authority: bind });
    const e = hpack.compressor.create({ table: { size: 4096 } });
    e.write(hs);
    assert.equal(g.push(Buffer.concat([PREFACE, h2frame(1, 0x5, 1, e.read())])).refusal?.status, status, name);
  }
});

test("HTTP/2: a 16 MiB DATA frame is streamed, never held; a placeholder split across DATA frames is still caught", () => {
  const enc = hpack.compressor.create({ table: { size: 4096 } });
  enc.write([{ name: ":method", value: "POST" }, { name: ":scheme", value: "https" }, { name: ":authority", value: "api.example.test" }, { name: ":path", value: "/" }]);
  const f = new Http2RequestFilter([secret()], { sni: "api.example.test", pinned: true });
  f.push(Buffer.concat([PREFACE, h2frame(1, 0x4, 1, enc.read())]));
  const len = 16 * 1024 * 1024 - 1;
  const head = h2frame(0, 0, 1, Buffer.alloc(0));
  head.writeUIntBE(len, 0, 3);
  let out = f.push(head).out.reduce((n, b) => n + b.length, 0);
  const piece = Buffer.alloc(65536, 0x61);
  for (let sent = 0; sent < len - 1; sent += piece.length) {
    const p = piece.subarray(0, Math.min(piece.length, len - 1 - sent));
    const r = f.push(p);
    const n = r.out.reduce((k, b) => k + b.length, 0);
    assert.equal(n, p.length, "each piece goes on as it comes");
    out += n;
  }
  assert.equal(out, 9 + len - 1, "everything but the frame's last byte has gone on");
  // A placeholder begun at the end of one DATA frame and ended in the next.
  const g = new Http2RequestFilter([secret()], { sni: "api.example.test", pinned: true });
  const e2 = hpack.compressor.create({ table: { size: 4096 } });
  e2.write([{ name: ":method", value: "POST" }, { name: ":scheme", value: "https" }, { name: ":authority", value: "other.test" }, { name: ":path", value: "/" }]);
  g.push(Buffer.concat([PREFACE, h2frame(1, 0x4, 1, e2.read())]));
  assert.equal(g.push(h2frame(0, 0, 1, Buffer.from(`x=${P.slice(0, 12)}`))).violation, undefined);
  assert.match(g.push(h2frame(0, 0x1, 1, Buffer.from(P.slice(12)))).violation?.where ?? "", /a request body/);
});

test("a placeholder percent-encoded in part is found, also split across writes; DNS queries carry none in split labels or EDNS options", async () => {
  const { placeholderInName } = await import("../../orchestrator/src/model/placeholders.js");
  const mixed = P.slice(0, 10) + [...P.slice(10, 14)].map((c) => `%${c.charCodeAt(0).toString(16)}`).join("") + P.slice(14);
  const sc = new PlaceholderScanner([secret()]);
  assert.equal(sc.find(`x=${mixed}`)?.form, "percent-encoded");
  const split = new PlaceholderScanner([secret()]);
  const cut = mixed.indexOf("%") + 2;
  const a = split.push(Buffer.from(`body x=${mixed.slice(0, cut)}`));
  assert.equal(a.found, undefined);
  assert.doesNotMatch(a.release.toString(), /moat-ph/, "held back while an escape could complete it");
  assert.equal(split.push(Buffer.from(mixed.slice(cut))).found?.form, "percent-encoded");
  const s = [{ env: "KEY", placeholder: P }];
  assert.equal(placeholderInName(s, `${P.slice(0, 12)}.${P.slice(12)}.evil.test`), "KEY", "split over two labels");
  assert.equal(placeholderInName(s, "innocent.test", Buffer.concat([Buffer.from("\0\0\0\0"), Buffer.from(P.toUpperCase())])), "KEY", "in the query's other bytes");
  assert.equal(placeholderInName(s, "innocent.test", Buffer.from(Buffer.from(`xx${P}`).toString("base64"))), "KEY", "base64 in an EDNS option");
  assert.equal(placeholderInName(s, "innocent.test", Buffer.from("nothing here")), undefined);
});

test("a violation says why the value could not go there: another host, or an address DNS never returned", () => {
  const unpinned = feed(filter(["api.example.test"], "api.example.test", false), `GET / HTTP/1.1\r\nHost: api.example.test\r\nX-Key: ${P}\r\n\r\n`);
  assert.match(unpinned.violation?.where ?? "", /an address this sandbox's DNS never returned for api\.example\.test/);
  const other = feed(filter(), `GET / HTTP/1.1\r\nHost: other.test\r\nX-Key: ${P}\r\n\r\n`);
  assert.match(other.violation?.where ?? "", /Host other\.test is not the SNI/);
});

test("HTTP/2: a header block that HPACK expands (one table entry indexed thousands of times) is refused, not decoded into hundreds of MB", () => {
  const int = (n: number, bits: number, first: number) => {
    const max = (1 << bits) - 1;
    if (n < max) return [first | n];
    const o = [first | max];
    for (n -= max; n >= 128; n = Math.floor(n / 128)) o.push((n & 127) | 128);
    o.push(n);
    return o;
  };
  const lit = (name: string, value: string, first = 0x00) => Buffer.concat([Buffer.from([first]), Buffer.from(int(name.length, 7, 0)), Buffer.from(name), Buffer.from(int(value.length, 7, 0)), Buffer.from(value)]);
  const pseudo = Buffer.concat([lit(":method", "GET"), lit(":scheme", "https"), lit(":authority", "api.example.test"), lit(":path", "/")]);
  const f = new Http2RequestFilter([secret()], { sni: "api.example.test", pinned: true });
  // A 4000-byte field into the guest's table (literal with incremental indexing)...
  assert.equal(f.push(Buffer.concat([PREFACE, h2frame(1, 0x5, 1, Buffer.concat([pseudo, lit("x", "a".repeat(4000), 0x40)]))])).refusal, undefined);
  // ... then a 64 KiB block of one-byte references to it (0xbe: dynamic entry 1): 256 MB decoded.
  const bomb = Buffer.concat([pseudo, Buffer.alloc(60000, 0xbe)]);
  const frames: Buffer[] = [];
  for (let o = 0; o < bomb.length; o += 16384) frames.push(h2frame(o === 0 ? 1 : 9, (o === 0 ? 0x1 : 0) | (o + 16384 >= bomb.length ? 0x4 : 0), 3, bomb.subarray(o, o + 16384)));
  const t0 = Date.now();
  const r = f.push(Buffer.concat(frames));
  assert.equal(r.refusal?.status, 431, "refused as too large");
  assert.equal(r.stream, 3);
  assert.ok(r.out.reduce((n, b) => n + b.length, 0) < 65536, "nothing of it goes on");
  assert.ok(Date.now() - t0 < 1000, `judged in ${Date.now() - t0} ms`);
});

test("a placeholder split across chunks of a chunked body, or across padded HTTP/2 DATA frames, is still caught", () => {
  // HTTP/1.1: the chunk boundary (CRLF, size line) is framing, not text: the body reads `x=${P}`.
  const h1 = filter(["api.example.test"], "other.test");
  const head = "POST / HTTP/1.1\r\nHost: other.test\r\nTransfer-Encoding: chunked\r\n\r\n";
  const a = `x=${P.slice(0, 12)}`, b = P.slice(12);
  let v = h1.push(Buffer.from(`${head}${a.length.toString(16)}\r\n${a}\r\n`)).violation;
  v ??= h1.push(Buffer.from(`${b.length.toString(16)}\r\n`)).violation;
  for (let i = 0; i < b.length && !v; i++) v = h1.push(Buffer.from(b[i]!)).violation;
  assert.match(v?.where ?? "", /a request body/, "split over two chunks");
  // HTTP/2: a padded frame's pad length and padding are not the body's text.
  const enc = hpack.compressor.create({ table: { size: 4096 } });
  enc.write([{ name: ":method", value: "POST" }, { name: ":scheme", value: "https" }, { name: ":authority", value: "other.test" }, { name: ":path", value: "/" }]);
  const g = new Http2RequestFilter([secret()], { sni: "other.test", pinned: true });
  g.push(Buffer.concat([PREFACE, h2frame(1, 0x4, 1, enc.read())]));
  const padded = (text: string, pad: number) => Buffer.concat([Buffer.from([pad]), Buffer.from(text), Buffer.alloc(pad)]);
  assert.equal(g.push(h2frame(0, 0x8, 1, padded(`x=${P.slice(0, 12)}`, 7))).violation, undefined);
  assert.match(g.push(h2frame(0, 0x8 | 0x1, 1, padded(P.slice(12), 3))).violation?.where ?? "", /a request body/, "split over two padded DATA frames");
});

test("a head or frame arriving a byte at a time costs linear time, not a copy of all of it per byte", () => {
  const h1 = filter();
  const head = Buffer.from(`GET / HTTP/1.1\r\nHost: api.example.test\r\nX: ${"a".repeat(MAX_HEAD - 100)}\r\n\r\n`);
  const cpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1000; };
  let t0 = cpu();
  let out = 0;
  for (let i = 0; i < head.length; i++) out += h1.push(head.subarray(i, i + 1)).out.reduce((n, b) => n + b.length, 0);
  const ms1 = cpu() - t0;
  assert.equal(out, head.length, "the head went on whole");
  const h2 = new Http2RequestFilter([secret()], { sni: "api.example.test", pinned: true });
  h2.push(PREFACE);
  const unknown = h2frame(0xf0, 0, 0, Buffer.alloc(65536, 0x61));
  t0 = cpu();
  out = 0;
  for (let i = 0; i < unknown.length; i++) out += h2.push(unknown.subarray(i, i + 1)).out.reduce((n, b) => n + b.length, 0);
  const ms2 = cpu() - t0;
  assert.equal(out, unknown.length, "the frame went on whole");
  // CPU time. Copying all so far per byte: 400 to 560 ms together here; appending: about 100 ms.
  console.log(`# 64 KiB a byte at a time: ${ms1.toFixed(0)} ms (HTTP/1.1 head), ${ms2.toFixed(0)} ms (HTTP/2 frame) of CPU`);
  assert.ok(ms1 + ms2 < 250, `64 KiB a byte at a time: ${ms1.toFixed(0)} + ${ms2.toFixed(0)} ms of CPU`);
});

test("HTTP/2: a flood of empty CONTINUATION frames is refused, not gathered without end", () => {
  const f = new Http2RequestFilter([secret()], { sni: "api.example.test", pinned: true });
  f.push(Buffer.concat([PREFACE, h2frame(1, 0, 1, Buffer.from([0x82]))])); // HEADERS, no END_HEADERS
  const empty = h2frame(9, 0, 1, Buffer.alloc(0));
  const chunk = Buffer.concat(Array.from({ length: 1820 }, () => empty)); // ~16 KiB of frames
  let threw: Error | undefined;
  let sent = 0;
  try {
    for (; sent < 64 << 20 && !threw; sent += chunk.length) f.push(chunk);
  } catch (e) {
    threw = e as Error;
  }
  assert.match(threw?.message ?? "", /header block over/, `refused (after ${sent} bytes of empty CONTINUATION frames)`);
  assert.ok(sent <= 128 * 1024, `refused within 128 KiB of them, not after ${sent}`);
});

test("a body held to substitute in (inject.body), sent a byte at a time in tiny chunks, costs linear time", () => {
  const f = new RequestFilter([validateSecrets([{ env: "K", allowedHosts: ["api.example.test"], placeholder: P, inject: { body: true } }], { K: "REAL-VALUE" })[0]!], { sni: "api.example.test", pinned: true });
  const chunks = Array.from({ length: 2000 }, (_, i) => `1\r\n${String.fromCharCode(97 + (i % 26))}\r\n`).join("");
  const req = Buffer.from(`POST / HTTP/1.1\r\nHost: api.example.test\r\nTransfer-Encoding: chunked\r\n\r\n${chunks}0\r\n\r\n`);
  const cpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1000; };
  const t0 = cpu();
  const out: Buffer[] = [];
  for (let i = 0; i < req.length; i++) {
    const r = f.push(req.subarray(i, i + 1));
    assert.equal(r.refusal ?? r.violation, undefined);
    out.push(...r.out);
  }
  const ms = cpu() - t0;
  const body = Array.from({ length: 2000 }, (_, i) => String.fromCharCode(97 + (i % 26))).join("");
  assert.equal(Buffer.concat(out).toString("latin1"), `POST / HTTP/1.1\r\nContent-Length: 2000\r\nHost: api.example.test\r\n\r\n${body}`);
  // (re-parsing the whole held body per byte: seconds; resuming where the last piece ended: tens of ms)
  assert.ok(ms < 1000, `${req.length} bytes a byte at a time: ${ms.toFixed(0)} ms of CPU`);
});

test("HTTP/2: a PUSH_PROMISE from the client (whose header block, Huffman-coded, a raw scan would not read) is refused", () => {
  const enc = hpack.compressor.create({ table: { size: 4096 } });
  enc.write([{ name: ":method", value: "GET" }, { name: ":scheme", value: "https" }, { name: ":authority", value: "tenant.evil.test" }, { name: ":path", value: "/" }, { name: "x", value: P }]);
  const block = enc.read() as Buffer;
  assert.ok(!block.toString("latin1").includes(P), "(the placeholder is Huffman-coded in the block)");
  const f = new Http2RequestFilter([secret()], { sni: "other.test", pinned: true });
  f.push(PREFACE);
  assert.throws(() => f.push(h2frame(5, 0x4, 1, Buffer.concat([Buffer.from([0, 0, 0, 2]), block]))), /PUSH_PROMISE/);
});

test("an unfinished head the guest ends its stream after is scanned, not released as it is", () => {
  // To a host no secret is for and no domain rule binds: Python's http.server still acts on a
  // head cut at the end of the stream (it reads header lines up to EOF).
  const f = filter(["api.example.test"], "other.test");
  assert.equal(f.push(Buffer.from(`GET /?k=${P} HTTP/1.1\r\nHost: other.test\r\n`)).out.length, 0);
  const r = f.end();
  assert.match(r.violation?.where ?? "", /a request to other\.test/);
  assert.doesNotMatch(Buffer.concat(r.out).toString("latin1"), /moat-ph-/);
  const clean = filter(["api.example.test"], "other.test");
  clean.push(Buffer.from("GET / HTTP/1.1\r\nHost: other.test\r\n"));
  assert.equal(Buffer.concat(clean.end().out).toString("latin1"), "GET / HTTP/1.1\r\nHost: other.test\r\n", "a clean one goes as before");
});
