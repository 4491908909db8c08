// tls.test.ts — the pieces of TLS interception that need no sandbox: the CA and its leaves
// (checked with node:crypto's X.509 and with a real TLS handshake), the ClientHello parser
// against real and hostile hellos, bypass patterns, pinned names, and the config file's tls.
import { test } from "node:test";
import assert from "node:assert/strict";
import tls from "node:tls";
import net from "node:net";
import { X509Certificate, generateKeyPairSync } from "node:crypto";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CertificateAuthority } from "../../orchestrator/src/tls/ca.js";
import { parseClientHello } from "../../orchestrator/src/tls/client-hello.js";
import { matchesPattern, ruleCovers } from "../../orchestrator/src/model/names.js";
import { PinnedNames, validateTls } from "../../orchestrator/src/tls/setup.js";
import { parseConfig } from "../../orchestrator/src/cli/config-file.js";
import { ConfigError } from "../../orchestrator/src/errors.js";

test("leaves chain to the CA, name the host (DNS or IP SAN), are backdated and short-lived", () => {
  const ca = new CertificateAuthority();
  const caCert = new X509Certificate(ca.certPem);
  assert.equal(caCert.ca, true);
  ca.contextFor("api.example.test");
  ca.contextFor("192.0.2.7");
  const leaf = new X509Certificate(ca.leafPem("api.example.test")!);
  assert.ok(leaf.verify(caCert.publicKey), "signed by the CA");
  assert.ok(leaf.checkIssued(caCert));
  assert.equal(leaf.checkHost("api.example.test"), "api.example.test");
  assert.equal(leaf.checkHost("other.example.test"), undefined);
  assert.equal(leaf.ca, false);
  const from = Date.parse(leaf.validFrom);
  const to = Date.parse(leaf.validTo);
  assert.ok(from < Date.now() - 30 * 60_000, "backdated against clock skew");
  assert.ok(to - Date.now() <= 24 * 3600_000 + 1000, "at most a day");
  const ipLeaf = new X509Certificate(ca.leafPem("192.0.2.7")!);
  assert.equal(ipLeaf.checkIP("192.0.2.7"), "192.0.2.7");
});

test("the leaf cache is an LRU: a hit mints nothing, the bound holds", () => {
  const ca = new CertificateAuthority({ cacheSize: 3 });
  for (const n of ["a.test", "b.test", "c.test", "a.test", "d.test"]) ca.contextFor(n);
  assert.equal(ca.minted, 4, "a.test came from the cache");
  assert.equal(ca.cached, 3);
  assert.equal(ca.leafPem("b.test"), undefined, "the least recently used went");
  assert.ok(ca.leafPem("a.test"));
});

test("the shared leaf cache is fair: a sandbox minting name after name evicts its own leaves, not a quiet neighbour's", () => {
  const ca = new CertificateAuthority({ cacheSize: 10 });
  const quiet = {}, busy = {};
  for (let i = 0; i < 4; i++) ca.contextFor(`q${i}.test`, quiet);
  for (let i = 0; i < 30; i++) ca.contextFor(`b${i}.test`, busy);
  assert.equal(ca.cached, 10, "the bound holds");
  for (let i = 0; i < 4; i++) assert.ok(ca.leafPem(`q${i}.test`), `the quiet sandbox's q${i}.test is still cached`);
  assert.equal(ca.leafPem("b23.test"), undefined, "the busy one's older leaves went");
  for (let i = 24; i < 30; i++) assert.ok(ca.leafPem(`b${i}.test`), `its newest, b${i}.test, stayed`);
  // A leaf the quiet one uses becomes its own: the busy one's next names do not take it.
  ca.contextFor("b29.test", quiet);
  for (let i = 30; i < 40; i++) ca.contextFor(`b${i}.test`, busy);
  assert.ok(ca.leafPem("b29.test"), "b29.test, used last by the quiet sandbox, is counted as its");
  const minted = ca.minted;
  for (let i = 0; i < 4; i++) ca.contextFor(`q${i}.test`, quiet);
  assert.equal(ca.minted, minted, "the quiet sandbox's names are all hits");
  // Alone, a user is an LRU of its own, as before.
  const solo = new CertificateAuthority({ cacheSize: 3 });
  for (const n of ["a.test", "b.test", "c.test", "a.test", "d.test"]) solo.contextFor(n, busy);
  assert.equal(solo.leafPem("b.test"), undefined);
  assert.ok(solo.leafPem("a.test") && solo.leafPem("d.test"));
});

test("a burst of new names is minted on the pool's threads: leaves as good, one mint per name, a lone name minted at once", async () => {
  const ca = new CertificateAuthority();
  const caCert = new X509Certificate(ca.certPem);
  // A burst: 24 names at once, one of them asked for three times while it is being minted.
  const names = Array.from({ length: 24 }, (_, i) => `n${i}.burst.test`);
  const asked = [...names, "n3.burst.test", "n3.burst.test"];
  const contexts = await Promise.all(asked.map((n) => ca.contextForAsync(n)));
  assert.equal(ca.minted, 24, "one mint per name, however often it was asked for meanwhile");
  assert.ok(ca.mintedOnPool >= 20, `the burst went to the pool's threads (${ca.mintedOnPool} of 24)`);
  assert.equal(contexts[3], contexts[24], "the same context for the same name");
  for (const n of names) {
    const leaf = new X509Certificate(ca.leafPem(n)!);
    assert.ok(leaf.verify(caCert.publicKey), `${n}: signed by the CA`);
    assert.equal(leaf.subjectAltName, `DNS:${n}`);
  }
  // Cached now: no mint. A lone new name after a pause: minted here (no thread to wait for).
  await ca.contextForAsync("n0.burst.test");
  assert.equal(ca.minted, 24);
  await new Promise((r) => setTimeout(r, 50));
  const t0 = performance.now();
  await ca.contextForAsync("alone.test");
  assert.equal(ca.minted, 25);
  assert.ok(new X509Certificate(ca.leafPem("alone.test")!).verify(caCert.publicKey));
  assert.ok(performance.now() - t0 < 200, "a lone mint waits for no pool");
});

test("a user's CA: an RSA one mints leaves it verifies; a key of another certificate, or half a pair, is refused", () => {
  const dir = mkdtempSync(join(tmpdir(), "moat-ca-"));
  try {
    execFileSync("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", `${dir}/k.pem`, "-out", `${dir}/c.pem`, "-days", "1", "-subj", "/CN=user RSA CA",
      "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"], { stdio: "ignore" });
    const rsa = new CertificateAuthority({ certPem: readFileSync(`${dir}/c.pem`, "utf8"), keyPem: readFileSync(`${dir}/k.pem`, "utf8") });
    rsa.contextFor("r.test");
    const leaf = new X509Certificate(rsa.leafPem("r.test")!);
    assert.ok(leaf.verify(new X509Certificate(rsa.certPem).publicKey));
    assert.match(leaf.issuer, /CN=user RSA CA/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const ephemeral = new CertificateAuthority();
  const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  assert.throws(() => new CertificateAuthority({ certPem: ephemeral.certPem, keyPem: privateKey.export({ type: "pkcs8", format: "pem" }) as string }), /does not belong/);
  assert.throws(() => new CertificateAuthority({ certPem: ephemeral.certPem }), ConfigError);
  assert.throws(() => new CertificateAuthority({ certPem: "garbage", keyPem: "garbage" }), /cannot be read/);
});

test("a real TLS handshake with a leaf: the client verifies it against the CA and sees the ALPN offered", async () => {
  const ca = new CertificateAuthority();
  const server = tls.createServer({ SNICallback: (name, cb) => cb(null, ca.contextFor(name)), ALPNProtocols: ["h2", "http/1.1"] }, (s) => s.end("hi"));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  try {
    const port = (server.address() as net.AddressInfo).port;
    const got = await new Promise<{ data: string; alpn: string | false | null; authorized: boolean }>((resolve, reject) => {
      const c = tls.connect({ port, host: "127.0.0.1", servername: "h.example.test", ca: ca.certPem, ALPNProtocols: ["h2"] }, () => {
        let data = "";
        c.on("data", (d) => (data += d));
        c.on("end", () => resolve({ data, alpn: c.alpnProtocol, authorized: c.authorized }));
      });
      c.on("error", reject);
    });
    assert.deepEqual(got, { data: "hi", alpn: "h2", authorized: true });
  } finally {
    server.close();
  }
});

/** A real ClientHello, as Node's TLS client sends it. */
async function realHello(servername: string | undefined, alpn?: string[]): Promise<Buffer> {
  return new Promise((resolve) => {
    const server = net.createServer((s) => {
      s.once("data", (d) => { resolve(d); s.destroy(); server.close(); });
    });
    server.listen(0, "127.0.0.1", () => {
      const c = tls.connect({ port: (server.address() as net.AddressInfo).port, host: "127.0.0.1", servername, ALPNProtocols: alpn, rejectUnauthorized: false });
      c.on("error", () => {});
    });
  });
}

test("ClientHello: SNI and ALPN read from a real hello, also when it arrives in pieces", async () => {
  const h = await realHello("api.example.test", ["h2", "http/1.1"]);
  assert.deepEqual(parseClientHello(h), { kind: "hello", sni: "api.example.test", alpn: ["h2", "http/1.1"], bytes: h.length });
  for (const cut of [1, 5, 6, 40, h.length - 1]) assert.deepEqual(parseClientHello(h.subarray(0, cut)), { kind: "more" }, `cut at ${cut}`);
  const noSni = await realHello(undefined);
  const r = parseClientHello(noSni);
  assert.equal(r.kind, "hello");
  assert.equal(r.kind === "hello" ? r.sni : "x", undefined);
});

test("ClientHello: hostile input is refused, never thrown, never buffered without bound", async () => {
  const h = await realHello("x.test");
  const bad: Buffer[] = [
    Buffer.from("GET / HTTP/1.1\r\n\r\n"),
    Buffer.from([22, 3, 1, 0xff, 0xff, 1]), // a record longer than TLS allows
    Buffer.from([22, 3, 1, 0, 4, 2, 0, 0, 0]), // a ServerHello
    Buffer.from([22, 3, 1, 0, 8, 1, 0, 0, 4, 3, 3, 0, 0]), // a hello too short for its fields
    Buffer.from([22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff]), // claims 16 MiB
    Buffer.concat([h.subarray(0, 5 + 4), Buffer.from([21, 3, 3, 0, 2, 2, 40])]), // interrupted by an alert
  ];
  for (const b of bad) {
    const r = parseClientHello(b);
    assert.ok(r.kind === "bad" || r.kind === "more", `${b.toString("hex")}: ${JSON.stringify(r)}`);
  }
  assert.equal(parseClientHello(bad[0]!).kind, "bad");
  assert.equal(parseClientHello(bad[4]!).kind, "bad");
  // Random bytes after a valid record header: never an exception.
  for (let i = 0; i < 2000; i++) {
    const b = Buffer.from(h);
    for (let k = 0; k < 4; k++) b[9 + Math.floor(Math.random() * (b.length - 9))] = Math.floor(Math.random() * 256);
    const r = parseClientHello(b);
    assert.ok(["hello", "bad", "more"].includes(r.kind));
  }
});

test("bypass patterns, rule coverage, pinned names", () => {
  assert.ok(matchesPattern("a.pinned.example", ["*.pinned.example"]));
  assert.ok(matchesPattern("pinned.example", ["*.pinned.example"]), "*.suffix matches the bare suffix");
  assert.ok(!matchesPattern("xpinned.example", ["*.pinned.example"]));
  assert.ok(matchesPattern("exact.example", ["exact.example"]));
  assert.ok(!matchesPattern("a.exact.example", ["exact.example"]));
  assert.ok(ruleCovers(".example.com", "api.example.com") && ruleCovers(".example.com", "example.com") && !ruleCovers(".example.com", "evilexample.com"));
  assert.ok(ruleCovers("api.example.com", "api.example.com") && !ruleCovers("api.example.com", "x.api.example.com"));
  const p = new PinnedNames(2, 0);
  p.add("192.0.2.1", "a.test", 1000, 0);
  assert.ok(p.has("192.0.2.1", "a.test", 500));
  assert.ok(!p.has("192.0.2.1", "a.test", 1500), "expired");
  assert.ok(!p.has("192.0.2.1", "b.test", 500));
  p.add("::ffff:192.0.2.2", "b.test", 1000, 0);
  assert.ok(p.has("::ffff:192.0.2.2", "b.test", 10));
  p.add("192.0.2.3", "c.test", 1000, 0);
  assert.ok(!p.has("192.0.2.1", "a.test", 10), "bounded: the oldest address went");
});

test("TLS settings are checked: ports, bypass patterns, CA pairs; config file network.tls", () => {
  assert.throws(() => validateTls({ ports: [0] }), /not a port/);
  assert.throws(() => validateTls({ ports: [853] }), /DNS's/);
  assert.throws(() => validateTls({ bypass: ["*.*.x"] }), /not a name/);
  assert.throws(() => validateTls({ caKey: "/nonexistent" }), /--tls-ca-key without --tls-ca-cert/);
  assert.throws(() => validateTls({ upstreamCa: ["/nonexistent/ca.pem"] }), /--tls-upstream-ca \/nonexistent\/ca\.pem: cannot read/);
  const v = validateTls({ bypass: ["*.Pinned.Example."], ports: [443, 8443, 443] });
  assert.deepEqual(v.bypass, ["*.pinned.example"]);
  assert.deepEqual(v.ports, [443, 8443]);
  assert.equal(v.verifyUpstream, true);
  assert.equal(v.blockQuic, true);
  const c = parseConfig({ network: { tls: { intercept: true, ports: [443, 8443], bypass: ["*.pinned.example"], verifyUpstream: false } } }, "m.json");
  assert.deepEqual(c.network!.tls, { intercept: true, ports: [443, 8443], bypass: ["*.pinned.example"], verifyUpstream: false });
  assert.throws(() => parseConfig({ network: { tls: { ports: ["443"] } } }, "m.json"), /m\.json: network\.tls\.ports/);
  assert.throws(() => parseConfig({ network: { tls: { sni: true } } }, "m.json"), /sni/);
});
