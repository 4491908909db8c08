// secrets-attacks.test.ts — the secret proxy and domain rules, tried as an attacker would
// (issue 18): a shared front (one address, tenants chosen by Host or by an absolute URI, bare LF
// accepted: test/testbed/front.py) and an API that reflects what it is sent. The real value must
// reach no tenant it is not for and nothing the guest receives; a domain rule must hold every
// request on a connection, not only its SNI; a hostile client must not grow moat without bound.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, readFileSync, rmSync, existsSync } from "node:fs";
import { World, WORLD_IP4, HOSTS, TESTBED_JS, TESTBED_SRC, systemTestSkipReason, hasTool, sandboxReadableDir } from "../testbed/world.js";
import { makeCa, makeServerCert } from "../testbed/test-pki.js";

const skip = systemTestSkipReason() ?? (hasTool("curl", "--version") && hasTool("openssl", "version") && hasTool("python3", "--version") ? undefined : "curl, openssl or python3 is not installed");
const VALUE = "sk-live-THE-REAL-VALUE-0123456789";
process.env.REAL_KEY = VALUE; // inherited by moat, never by the sandbox
// A second value as long as a placeholder: HTTP/2 DATA keeps its length (flow control), so a
// value is replaced by its placeholder cut or padded to the value's length.
const VALUE2 = "sk-live-SECOND-0123456789abcdefg";
process.env.REAL_KEY2 = VALUE2;
let world: World;
let dir = "";
let frontLog = "";
let h2Log = "";

before(async () => {
  if (skip) return;
  dir = sandboxReadableDir("moat-attacks-"); // the sandbox reads its scripts here (its /tmp is its own)
  frontLog = `${dir}/front.jsonl`;
  h2Log = `${dir}/h2.cjsonl`;
  makeCa(dir, "ca", "world test CA");
  makeServerCert(dir, "ca", ["DNS:*.front.test", "DNS:allowed.test", "DNS:other.test"]);
  world = World.create();
  world.startDnsServer();
  await world.startProcess(["python3", `${TESTBED_SRC}front.py`, HOSTS.public2, "443", `${dir}/srv.pem`, `${dir}/srv.key`, frontLog]);
  await world.startProcess([process.execPath, `${TESTBED_JS}servers.js`, "https", "8443", `${dir}/srv.pem`, `${dir}/srv.key`, h2Log]);
});
after(() => {
  world?.teardown();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function run(script: string, extra: string[] = [], timeoutMs = 60000) {
  process.env.REAL_KEY = VALUE;
  return world.moat(["run", "--dns-nameserver", WORLD_IP4, "--tls-upstream-ca", `${dir}/ca.pem`, "--tls-intercept", "--tls-port", "443", "--tls-port", "8443",
    "--secret", "API_KEY=REAL_KEY@cdn.front.test", ...extra, "--", "sh", "-c", script], timeoutMs);
}

/** moat run (intercepting, with the secret) to its end, and the highest RSS it reached. */
async function moatWithPeakRss(args: string[]): Promise<{ code: number | null; out: string; err: string; peak: number }> {
  const p = world.spawnMoat(["run", "--dns-nameserver", WORLD_IP4, "--tls-upstream-ca", `${dir}/ca.pem`, "--tls-intercept", "--secret", "API_KEY=REAL_KEY@cdn.front.test", ...args]);
  let out = "";
  let err = "";
  let peak = 0;
  p.stdout!.on("data", (d) => (out += d));
  p.stderr!.on("data", (d) => (err += d));
  const sample = setInterval(() => {
    try {
      const rss = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${p.pid}/status`, "utf8"))?.[1] ?? 0) * 1024;
      peak = Math.max(peak, rss);
    } catch { /* gone */ }
  }, 100);
  const code = await new Promise<number | null>((resolve) => p.on("exit", (c) => resolve(c)));
  clearInterval(sample);
  return { code, out, err, peak };
}

const lines = (f: string) => (existsSync(f) ? readFileSync(f, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>) : []);

/** A Python client in the sandbox: raw requests over one TLS connection to HOST:PORT with SNI. */
function rawTls(name: string, sni: string, port: number, chunks: string[]): string {
  writeFileSync(`${dir}/${name}.py`, `import os, ssl, socket, sys, time
k = os.environ.get('API_KEY', '')
ctx = ssl.create_default_context()
ctx.set_alpn_protocols(['http/1.1'])
s = ctx.wrap_socket(socket.create_connection((${JSON.stringify(sni)}, ${port})), server_hostname=${JSON.stringify(sni)})
for c in ${JSON.stringify(chunks)}:
    s.sendall(c.replace('@KEY@', k).encode('latin1')); time.sleep(0.05)
data = b''
s.settimeout(5)
try:
    while True:
        d = s.recv(65536)
        if not d: break
        data += d
except Exception as e:
    data += ('[%s]' % type(e).__name__).encode()
sys.stdout.write(data.decode('latin1'))
`);
  return `python3 ${dir}/${name}.py`;
}

test("an absolute-form target naming another tenant gets no value: refused before a byte leaves", { skip }, async () => {
  const from = lines(frontLog).length;
  const r = await run(rawTls("absolute", "cdn.front.test", 443, ["GET https://tenant.front.test/steal HTTP/1.1\r\nHost: cdn.front.test\r\nAuthorization: Bearer @KEY@\r\n\r\n"]));
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^HTTP\/1\.1 403 Forbidden\r\n[\s\S]*the request target names tenant\.front\.test/);
  const seen = JSON.stringify(lines(frontLog).slice(from));
  assert.doesNotMatch(seen, new RegExp(VALUE), "no tenant received the value");
  assert.doesNotMatch(seen, /\/steal/, "the request never reached the front");
});

test("a head ended by bare LFs cannot smuggle a substituted request into another tenant's body", { skip }, async () => {
  const from = lines(frontLog).length;
  const inner = "GET /inner HTTP/1.1\r\nHost: cdn.front.test\r\nAuthorization: Bearer @KEY@\r\n\r\n";
  const innerLen = inner.replace("@KEY@", "moat-ph-abcdefghijklmnopqrstuvwx").length;
  const r = await run(rawTls("smuggle", "cdn.front.test", 443, [`POST /collect HTTP/1.1\nHost: tenant.front.test\nContent-Length: ${innerLen}\n\n${inner}`]));
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^HTTP\/1\.1 400 Bad Request\r\n[\s\S]*bare LF/);
  const seen = lines(frontLog).slice(from);
  assert.doesNotMatch(JSON.stringify(seen), new RegExp(VALUE));
  assert.equal(seen.length, 0, `nothing reached the front: ${JSON.stringify(seen)}`);
});

test("the real value never comes back: reflected headers and bodies are scrubbed to the placeholder; TRACE gets no value", { skip }, async () => {
  const from = lines(frontLog).length;
  const r = await run(`curl -sS -i -H "Origin: https://$API_KEY.example" -H "Authorization: Bearer $API_KEY" https://cdn.front.test/echo; echo; echo "PH=$API_KEY"; curl -sS -i -X TRACE -H "Authorization: Bearer $API_KEY" https://cdn.front.test/trace; echo; curl -sS --http2 -w ' %{http_version}' -H "X-K: $H2_KEY" https://allowed.test:8443/echo-h2; echo; echo "PH2=$H2_KEY"`,
    ["--secret", "H2_KEY=REAL_KEY2@allowed.test"]);
  assert.equal(r.code, 0, r.stderr);
  const ph = /PH=(moat-ph-[a-z0-9]{24})/.exec(r.stdout)?.[1];
  assert.ok(ph, r.stdout);
  assert.doesNotMatch(r.stdout, new RegExp(`${VALUE}|${VALUE2}`), `the guest received a value:\n${r.stdout}`);
  assert.match(r.stdout, new RegExp(`access-control-allow-origin: https://${ph}\\.example`, "i"), "the reflected header carries the placeholder");
  assert.match(r.stdout, new RegExp(`"Authorization": "Bearer ${ph}"`), "the reflected body carries the placeholder");
  assert.match(r.stdout, /HTTP\/1\.1 403[\s\S]*TRACE/, "TRACE carrying a placeholder is a violation");
  const ph2 = /PH2=(moat-ph-[a-z0-9]{24})/.exec(r.stdout)?.[1];
  assert.match(r.stdout, new RegExp(`"x-k":"${ph2}"[^\\n]*\\} 2\\n`), "over HTTP/2 too, the echoed value comes back as the placeholder");
  const seen = lines(frontLog).slice(from);
  assert.equal(seen.filter((x) => x.method === "GET").length, 1);
  assert.match(JSON.stringify(seen), new RegExp(VALUE), "the allowed tenant did get the value");
  assert.equal(seen.filter((x) => x.method === "TRACE").length, 0, "the TRACE never left");
});

test("a domain rule binds every request on the connection: Host, absolute URI, a second HTTP/2 stream's :authority", { skip }, async () => {
  const from = lines(frontLog).length;
  const h2From = lines(h2Log).length;
  writeFileSync(`${dir}/h2.cjs`, `const http2 = require('http2');
const c = http2.connect('https://allowed.test:8443');
const get = (authority, path) => new Promise((res) => {
  const q = c.request({ ':path': path, ':authority': authority });
  let body = '';
  q.on('response', (h) => { q.on('data', (d) => (body += d)); q.on('end', () => res(h[':status'] + ' ' + body.trim().slice(0, 120))); });
  q.on('error', (e) => res('error ' + e.code));
  q.end();
});
(async () => { console.log('h2-1', await get('allowed.test:8443', '/hello')); console.log('h2-2', await get('other.test:8443', '/cross-tenant')); c.close(); })();
`);
  const policy = ["--net-default-egress", "deny", "--net-rule", "allow@cdn.front.test:tcp:443", "--net-rule", "allow@allowed.test:tcp:8443"];
  const r = await run(`${rawTls("host", "cdn.front.test", 443, ["GET /ok HTTP/1.1\r\nHost: cdn.front.test\r\n\r\nGET /by-host HTTP/1.1\r\nHost: tenant.front.test\r\n\r\n"])}; echo; ${rawTls("abs", "cdn.front.test", 443, ["GET https://tenant.front.test/by-uri HTTP/1.1\r\nHost: tenant.front.test\r\n\r\n"])}; echo; node ${dir}/h2.cjs`, policy);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /HTTP\/1\.1 200 OK[\s\S]*HTTP\/1\.1 403 Forbidden[\s\S]*tenant\.front\.test is not covered by the rule/, r.stdout);
  assert.match(r.stdout, /h2-1 200 hello over tls \(h2\)/);
  assert.match(r.stdout, /h2-2 403 moat: refused: the request's authority other\.test is not covered/, r.stdout);
  const seen = JSON.stringify(lines(frontLog).slice(from));
  assert.match(seen, /"target":"\/ok"/);
  assert.doesNotMatch(seen, /by-host|by-uri/, "the other tenant received nothing");
  assert.doesNotMatch(JSON.stringify(lines(h2Log).slice(h2From)), /cross-tenant/, "the second stream never reached the server");
});

test("HTTP/2 frames are streamed, not held: 24 connections each holding all but a byte of a 16 MiB DATA frame leave moat bounded and responsive", { skip }, async () => {
  // Hand-made HTTP/2: a preface, an empty SETTINGS, HEADERS (literal fields), then a DATA frame
  // header for 16 MiB - 1 and all but its last byte, held open.
  writeFileSync(`${dir}/flood.py`, `import ssl, socket, struct, time, threading, sys
ctx = ssl.create_default_context(); ctx.set_alpn_protocols(['h2'])
def lit(n, v): return bytes([0x00, len(n)]) + n + bytes([len(v)]) + v
block = lit(b':method', b'POST') + lit(b':scheme', b'https') + lit(b':authority', b'allowed.test') + lit(b':path', b'/sink')
def frame(t, f, s, p, length=None): return struct.pack('>I', length if length is not None else len(p))[1:] + bytes([t, f]) + struct.pack('>I', s) + p
socks, ended = [], []
def one():
    # Each connection sends what it can; a server that refuses the frame may close it early.
    try:
        s = ctx.wrap_socket(socket.create_connection(('allowed.test', 8443)), server_hostname='allowed.test')
        s.settimeout(8)
        s.sendall(b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n' + frame(4, 0, 0, b'') + frame(1, 4, 1, block) + frame(0, 0, 1, b'', 16*1024*1024 - 1))
        piece = b'a' * 65536
        left = 16*1024*1024 - 2
        while left > 0:
            n = min(left, len(piece)); s.sendall(piece[:n]); left -= n
        socks.append(s)
    except Exception as e:
        ended.append(type(e).__name__)
ts = [threading.Thread(target=one) for _ in range(24)]
[t.start() for t in ts]; [t.join() for t in ts]
print('held', len(socks), 'ended', len(ended), flush=True)
time.sleep(1)
t0 = time.time()
import urllib.request
print('other', urllib.request.urlopen('https://allowed.test:8443/hello', context=ssl.create_default_context()).read().decode().strip(), '%.3f' % (time.time() - t0), flush=True)
time.sleep(0.5)
`);
  const { code, out, err, peak } = await moatWithPeakRss(["--tls-port", "8443", "--", "sh", "-c", `python3 ${dir}/flood.py`]);
  assert.equal(code, 0, err);
  assert.match(out, /held (\d+) ended (\d+)/);
  const [, held, ended] = /held (\d+) ended (\d+)/.exec(out)!;
  assert.equal(Number(held) + Number(ended), 24, "every connection sent its frame, or was closed by the other side");
  const m = /other hello over tls \(http\/1\.1\) ([\d.]+)/.exec(out);
  assert.ok(m, out);
  console.log(`# peak RSS ${(peak / 2 ** 20).toFixed(0)} MiB; an unrelated request took ${m[1]} s`);
  assert.ok(peak < 200 * 2 ** 20, `moat grew to ${(peak / 2 ** 20).toFixed(0)} MiB`);
  assert.ok(Number(m[1]) < 0.5, `an unrelated request took ${m[1]} s`);
});

test("a guest that sends a ClientHello and nothing more is cut off, with its upstream connection", { skip }, async () => {
  writeFileSync(`${dir}/hello-only.py`, `import ssl, socket, time
ctx = ssl.create_default_context()
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
obj = ctx.wrap_bio(inc, out, server_hostname='allowed.test')
try: obj.do_handshake()
except ssl.SSLWantReadError: pass
s = socket.create_connection(('allowed.test', 8443)); s.sendall(out.read())
t0 = time.time(); s.settimeout(30)
try:
    while s.recv(65536): pass
except Exception: pass
print('closed after %.1f' % (time.time() - t0))
`);
  const r = await run(`python3 ${dir}/hello-only.py`);
  assert.equal(r.code, 0, r.stderr);
  const t = Number(/closed after ([\d.]+)/.exec(r.stdout)?.[1]);
  assert.ok(t >= 9 && t < 15, `closed after ${t} s (the deadline is 10 s)`);
});

test("an upgrade the front does not take opens no way to another tenant: a request after it, or a 'frame' Python reads as one, is refused", { skip }, async () => {
  const from = lines(frontLog).length;
  const policy = ["--net-default-egress", "deny", "--net-rule", "allow@cdn.front.test:tcp:443"];
  const ws = "GET /ws HTTP/1.1\r\nHost: cdn.front.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
  // http.server ignores Upgrade: it answers 200 and reads the next request on the connection.
  // The second "frame" is masked (A0 = FIN+RSV2, A0 = masked, 32 bytes): str.split() takes 0xA0
  // for a space, so to Python it is the line "GET / HTTP/1.1".
  const r = await run(`${rawTls("up1", "cdn.front.test", 443, [ws, "GET /after-upgrade HTTP/1.1\r\nHost: tenant.front.test\r\n\r\n"])}; echo; ${rawTls("up2", "cdn.front.test", 443, [ws, "\xa0\xa0GET /nbsp HTTP/1.1\r\nHost: tenant.front.test\r\n\r\n"])}`, policy);
  assert.equal(r.code, 0, r.stderr);
  const seen = lines(frontLog).slice(from);
  assert.equal(seen.filter((x) => x.target === "/ws").length, 2, `the upgrade requests went: ${JSON.stringify(seen)}`);
  assert.deepEqual(seen.filter((x) => x.tenant !== "cdn.front.test"), [], "the other tenant received nothing");
  assert.match(r.stdout, /HTTP\/1\.1 400 Bad Request[\s\S]*unmasked WebSocket frame[\s\S]*HTTP\/1\.1 400 Bad Request[\s\S]*reserved bits or opcode/, r.stdout);
});

test("answers drained after a refused request are back-pressured: a guest that stops reading does not grow moat", { skip }, async () => {
  // Each connection: a 32 MB POST the front echoes back whole, then a request moat refuses (a bare
  // LF); the guest then reads nothing. The front's answer drains through moat to the guest only as
  // fast as the guest reads.
  writeFileSync(`${dir}/drain.py`, `import ssl, socket, time, threading
ctx = ssl.create_default_context(); ctx.set_alpn_protocols(['http/1.1'])
socks = []
def one():
    s = ctx.wrap_socket(socket.create_connection(('cdn.front.test', 443)), server_hostname='cdn.front.test')
    n = 32 * 1024 * 1024
    s.sendall(b'POST /echo HTTP/1.1\\r\\nHost: cdn.front.test\\r\\nContent-Length: %d\\r\\n\\r\\n' % n)
    piece = b'a' * 65536
    for _ in range(n // len(piece)): s.sendall(piece)
    s.sendall(b'GET /bad HTTP/1.1\\nHost: cdn.front.test\\n\\n')
    socks.append(s)
ts = [threading.Thread(target=one) for _ in range(3)]
[t.start() for t in ts]; [t.join() for t in ts]
print('sent', len(socks), flush=True)
time.sleep(6)
`);
  const { code, out, err, peak } = await moatWithPeakRss(["--tls-port", "443", "--", "sh", "-c", `python3 ${dir}/drain.py`]);
  assert.equal(code, 0, err);
  assert.match(out, /sent 3/);
  console.log(`# peak RSS ${(peak / 2 ** 20).toFixed(0)} MiB with 3 × 32 MB answers unread`);
  assert.ok(peak < 200 * 2 ** 20, `moat grew to ${(peak / 2 ** 20).toFixed(0)} MiB`);
});
