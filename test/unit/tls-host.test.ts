// tls-host.test.ts — a sandbox's TLS proxy on a TLS worker (tls/tls-host.ts, tls/tls-worker.ts):
// real loopback sockets, a guest speaking through the redirect preamble, an upstream TLS server of
// a CA of its own. The worker intercepts and substitutes; the main thread sees its stats without
// asking, hears its events, and has the last word on a name the worker's replica refuses.
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import tls from "node:tls";
import { randomBytes } from "node:crypto";
import { RemoteTlsProxy, tlsWorkers } from "../../orchestrator/src/tls/tls-host.js";
import { CertificateAuthority } from "../../orchestrator/src/tls/ca.js";
import type { TlsEvent } from "../../orchestrator/src/tls/proxy.js";
import type { RedirectOrigin } from "../../orchestrator/src/engine/redirect.js";
import { redirectPreamble } from "../helpers/preamble.js";
import { validateSecrets } from "../../orchestrator/src/secrets/secrets.js";
import { setEngineThreads } from "../../orchestrator/src/engine/engine-host.js";

setEngineThreads(1); // every proxy of this file on one TLS worker

const P = "moat-ph-abcdefghijklmnopqrstuvwx";

/** One request over a new intercepted connection naming `sni`; what the guest got back (or the error). */
async function request(proxy: RemoteTlsProxy, token: Buffer, ca: string, port: number, sni: string, admitNameId: number, header = ""): Promise<string> {
  const raw = net.connect(proxy.address().port, "127.0.0.1");
  await new Promise<void>((r) => raw.once("connect", () => r()));
  raw.write(redirectPreamble(token, 4, [127, 0, 0, 1], port, admitNameId));
  const guest = tls.connect({ socket: raw, servername: sni, ca, ALPNProtocols: ["http/1.1"] });
  return new Promise<string>((resolve) => {
    let answer = "";
    guest.on("data", (d: Buffer) => (answer += d.toString("latin1")));
    guest.once("error", (e) => resolve(`error: ${e.message}`));
    guest.once("close", () => resolve(answer));
    guest.once("secureConnect", () => guest.write(`GET / HTTP/1.1\r\nHost: ${sni}\r\n${header}Connection: close\r\n\r\n`));
  });
}

/** An upstream TLS server (a CA of its own) answering every request 200 "ok"; what it received goes to `received`. */
async function okServer(received: string[] = []): Promise<{ upstreamCa: CertificateAuthority; server: tls.Server; port: number }> {
  const upstreamCa = new CertificateAuthority();
  const server = tls.createServer({ SNICallback: (name, cb) => cb(null, upstreamCa.contextFor(name)), ALPNProtocols: ["http/1.1"] }, (s) => {
    s.on("data", (d: Buffer) => {
      received.push(d.toString("latin1"));
      s.end("HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n");
    });
    s.on("error", () => {});
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { upstreamCa, server, port: (server.address() as net.AddressInfo).port };
}

type ProxyOptions = Parameters<typeof RemoteTlsProxy.open>[0];

/**
 * A proxy on a TLS worker, intercepting for `ca` toward servers of `upstreamCa`: what a test does
 * not set is the same everywhere (no secrets, no DoT, no names; every name allowed and pinned).
 */
function openProxy(token: Buffer, ca: CertificateAuthority, upstreamCa: CertificateAuthority, o: Partial<Omit<ProxyOptions, "calls">> & { calls?: Partial<ProxyOptions["calls"]> } = {}): Promise<RemoteTlsProxy> {
  return RemoteTlsProxy.open({
    token, ca, bypass: [], verifyUpstream: true, upstreamCa: [upstreamCa.certPem], gatewayIp4: "10.255.255.1", gatewayOthers: [],
    secrets: [], dot: false, names: [], rules: [], ...o,
    calls: { check: () => null, pinnedUntil: () => Date.now() + 60_000, dnsQuery: async () => ({ answer: null, pins: [] }), event: () => {}, violation: () => {}, ...o.calls },
  });
}

test("a TLS proxy on a worker thread: substitution there, stats and events here, a name the replica refuses decided here", async () => {
  const received: string[] = [];
  const { upstreamCa, server, port } = await okServer(received);
  const token = randomBytes(16);
  const ca = new CertificateAuthority();
  const secrets = validateSecrets([{ env: "KEY", allowedHosts: ["api.example.test"], placeholder: P }], { KEY: "VALUE-123" });
  const asked: string[] = [];
  const events: TlsEvent[] = [];
  const proxy = await openProxy(token, ca, upstreamCa, {
    gatewayOthers: ["fd00::1", "fe80::1"], secrets,
    names: ["api.example.test", ".example.test"], rules: ["allow api.example.test", "allow *.example.test"],
    calls: {
      // This thread's word: api.example.test is pinned to 127.0.0.1, nothing else is.
      check: (origin: RedirectOrigin, name: string | undefined, what: string) => {
        asked.push(`${what} ${name}`);
        return name === "api.example.test" ? null : `not ${name}`;
      },
      pinnedUntil: (_ip: string, name: string) => (name === "api.example.test" ? Date.now() + 60_000 : 0),
      event: (e: TlsEvent) => { events.push(e); },
    },
  });
  try {
    const workers = tlsWorkers();
    assert.equal(workers.length, 1);
    assert.ok(workers[0]!.threadId > 0 && workers[0]!.proxies === 1, JSON.stringify(workers));

    // The pin not yet at the worker: the SNI is asked of this thread, which allows it (and the
    // worker learns the pin: the request's authority, the same name, is judged there).
    const first = await request(proxy, token, ca.certPem, port, "api.example.test", 1, `X-K: ${P}\r\n`);
    assert.match(first, /^HTTP\/1\.1 200 OK/);
    assert.deepEqual(asked, ["SNI api.example.test"]);
    assert.match(received.join(""), /X-K: VALUE-123\r\n/, "substituted on the worker");
    asked.length = 0;
    assert.match(await request(proxy, token, ca.certPem, port, "api.example.test", 1, `X-K: ${P}\r\n`), /^HTTP\/1\.1 200 OK/);
    assert.deepEqual(asked, [], "learnt");

    // A pin sent to the worker as the DNS answered: nothing asked here (this thread would refuse it).
    proxy.pins([{ ip: "127.0.0.1", name: "www.example.test", ttlMs: 60_000 }]);
    await new Promise((r) => setTimeout(r, 50));
    assert.match(await request(proxy, token, ca.certPem, port, "www.example.test", 2), /^HTTP\/1\.1 200 OK/);
    assert.deepEqual(asked, []);

    // A name the rule does not cover: refused at the handshake, on this thread's word, an event here.
    const refused = await request(proxy, token, ca.certPem, port, "other.example.test", 1);
    assert.doesNotMatch(refused, /^HTTP/);
    assert.deepEqual(asked, ["SNI other.example.test"]);
    for (let i = 0; i < 50 && events.length < 1; i++) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(events.map((e) => [e.kind, e.detail]), [["tls-sni-denied", "not other.example.test"]]);

    // The worker's counters, read on this thread as they are.
    assert.equal(proxy.stats.intercepted, 3);
    assert.equal(proxy.stats.sniDenied, 1);
    assert.equal(proxy.stats.substituted, 2);
    assert.ok(proxy.stats.leavesMinted >= 1);
  } finally {
    await proxy.close();
    server.close();
  }
  assert.equal(tlsWorkers()[0]?.proxies ?? 0, 0, "the worker serves nothing once the proxy closed");
});

test("a burst of new names on one sandbox's proxy is minted after another sandbox on the same worker closed", async () => {
  const { upstreamCa, server, port } = await okServer();
  const token = randomBytes(16);
  const ca = new CertificateAuthority(); // one CA for both: the worker serves them from one object
  const open = () => openProxy(token, ca, upstreamCa);
  const first = await open();
  const second = await open();
  try {
    assert.equal(tlsWorkers().length, 1);
    // The first proxy opens a leaf, so the CA on the worker is made (and was once tied to it).
    assert.match(await request(first, token, ca.certPem, port, "first.example.test", 0), /^HTTP\/1\.1 200/);
    await first.close();
    // A burst: names minted together go to the minting pool, through the worker's own channel.
    const names = Array.from({ length: 6 }, (_, i) => `burst${i}.example.test`);
    const answers = await Promise.race([
      Promise.all(names.map((n) => request(second, token, ca.certPem, port, n, 0))),
      new Promise<string[]>((r) => setTimeout(() => r(["timed out"]), 8000)),
    ]);
    assert.deepEqual(answers.map((a) => a.slice(0, 15)), names.map(() => "HTTP/1.1 200 OK"));
    assert.ok(second.stats.leavesMinted >= 6, `minted ${second.stats.leavesMinted}`);
  } finally {
    await first.close();
    await second.close();
    server.close();
  }
});

test("a pin the worker learnt from the main thread ends when the main thread's does, not later", async () => {
  const { upstreamCa, server, port } = await okServer();
  const token = randomBytes(16);
  const ca = new CertificateAuthority();
  const expires = Date.now() + 2000; // this thread's pin of api.example.test to 127.0.0.1 (time for two handshakes on a busy machine)
  const asked: string[] = [];
  const proxy = await openProxy(token, ca, upstreamCa, {
    names: ["api.example.test"], rules: ["allow api.example.test"],
    calls: {
      check: (_o: RedirectOrigin, name: string | undefined) => {
        asked.push(String(name));
        return Date.now() < expires ? null : "this sandbox's DNS answer has expired";
      },
      pinnedUntil: () => (Date.now() < expires ? expires : 0),
    },
  });
  try {
    assert.match(await request(proxy, token, ca.certPem, port, "api.example.test", 1), /^HTTP\/1\.1 200/);
    assert.match(await request(proxy, token, ca.certPem, port, "api.example.test", 1), /^HTTP\/1\.1 200/);
    assert.equal(asked.length, 1, "learnt");
    await new Promise((r) => setTimeout(r, expires - Date.now() + 100));
    assert.doesNotMatch(await request(proxy, token, ca.certPem, port, "api.example.test", 1), /^HTTP/, "refused once this thread's pin ended");
    assert.equal(asked.length, 2, "the worker asked again");
  } finally {
    await proxy.close();
    server.close();
  }
});

test("a DoT answer's pins are at the worker before the guest reads the answer: the next request may name it", async () => {
  const { upstreamCa, server, port } = await okServer();
  const token = randomBytes(16);
  const ca = new CertificateAuthority();
  const proxy = await openProxy(token, ca, upstreamCa, {
    dot: true, names: [".example.test"], rules: ["allow *.example.test"],
    calls: {
      check: (_o: RedirectOrigin, name: string | undefined) => (name === "api.example.test" ? null : `not ${name}`),
      pinnedUntil: (_ip: string, name: string) => (name === "api.example.test" ? Date.now() + 60_000 : 0),
      // Answered with a pin of www.example.test to 127.0.0.1 (this thread sends no other).
      dnsQuery: async (query: Uint8Array) => ({ answer: new Uint8Array(query), pins: [{ ip: "127.0.0.1", name: "www.example.test", until: Date.now() + 60_000 }] }),
    },
  });
  const connect = async (sni: string, originPort: number, admitNameId: number) => {
    const raw = net.connect(proxy.address().port, "127.0.0.1");
    await new Promise<void>((r) => raw.once("connect", () => r()));
    raw.write(redirectPreamble(token, 4, [127, 0, 0, 1], originPort, admitNameId));
    const s = tls.connect({ socket: raw, servername: sni, ca: ca.certPem, ALPNProtocols: ["http/1.1"] });
    await new Promise<void>((r, j) => { s.once("secureConnect", () => r()); s.once("error", j); });
    return s;
  };
  const reply = (s: tls.TLSSocket, until: RegExp) => new Promise<string>((resolve) => {
    let got = "";
    const on = (d: Buffer) => { got += d.toString("latin1"); if (until.test(got)) { s.off("data", on); resolve(got); } };
    s.on("data", on);
    s.once("close", () => resolve(got));
  });
  try {
    const dot = await connect("dns.example.test", 853, 0); // (DoT to the gateway: no domain rule)
    const q = Buffer.alloc(14, 1);
    const answered = reply(dot, /^[\s\S]{16}/);
    dot.write(Buffer.concat([Buffer.from([0, q.length]), q]));
    assert.equal((await answered).length, 16, "the DoT answer came");
    dot.destroy();
    // Right after: a connection whose SNI is api.example.test and whose request names www.
    const s = await connect("api.example.test", port, 1);
    const r = reply(s, /\r\n\r\nok\n/);
    s.write("GET / HTTP/1.1\r\nHost: www.example.test\r\nConnection: close\r\n\r\n");
    assert.match(await r, /^HTTP\/1\.1 200 OK/, "the authority the DoT answer pinned is allowed");
  } finally {
    await proxy.close();
    server.close();
  }
});
