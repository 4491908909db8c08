// dns-upstream.test.ts — orchestrator/src/dns/upstream.ts against a real dnsmasq on 127.0.0.1
// (and small fake servers on 127.0.0.1 for what dnsmasq will not do: stay silent, spoof, truncate
// without TCP). Nothing leaves the loopback interface.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import dgram from "node:dgram";
import net from "node:net";
import dnsPacket from "dns-packet";
import { UpstreamResolver, DnsUpstreamError, hostResolvers } from "../../orchestrator/src/dns/upstream.js";
import { ConfigError } from "../../orchestrator/src/errors.js";
import { query, deadPort, startDnsmasq, dnsmasqSkip } from "../helpers/dns.js";

const skip = dnsmasqSkip;

const BIG = Array.from({ length: 4 }, (_, i) => "y".repeat(200) + i);
let dm: { proc: ChildProcess; port: number; log: string } | undefined;
const dir = mkdtempSync(join(tmpdir(), "moat-dns-upstream-"));



/** A UDP server on 127.0.0.1 (or ::1) whose behaviour is `onQuery`. */
async function fakeServer(onQuery: (msg: Buffer, reply: (b: Buffer) => void) => void, host = "127.0.0.1"): Promise<{ port: number; received: Buffer[]; close(): Promise<void> }> {
  const s = dgram.createSocket(host.includes(":") ? "udp6" : "udp4");
  const received: Buffer[] = [];
  s.on("message", (m, rinfo) => {
    received.push(m);
    onQuery(m, (b) => s.send(b, rinfo.port, rinfo.address));
  });
  await new Promise<void>((r, j) => { s.once("error", j); s.bind(0, host, () => r()); });
  return { port: s.address().port, received, close: () => new Promise<void>((r) => s.close(() => r())) };
}


before(async () => {
  if (skip) return;
  dm = await startDnsmasq(dir, [
    "--host-record=allowed.test,203.0.113.10",
    ...BIG.map((t) => `--txt-record=big.test,"${t}"`),
  ]);
});

after(() => {
  dm?.proc.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

const live = (): { ip: string; port: number } => ({ ip: "127.0.0.1", port: dm!.port });

// --- resolveNameservers / hostResolvers --------------------------------------------------------

test("resolveNameservers reads IP, IP:PORT, [IPv6]:PORT and bare IPv6, port 53 by default", async () => {
  assert.deepEqual(await UpstreamResolver.resolveNameservers(["192.0.2.53", "192.0.2.54:5353", "[2001:db8::1]:5300", "[2001:db8::2]", "2001:db8::3", " 192.0.2.53 "]), [
    { ip: "192.0.2.53", port: 53 },
    { ip: "192.0.2.54", port: 5353 },
    { ip: "2001:db8::1", port: 5300 },
    { ip: "2001:db8::2", port: 53 },
    { ip: "2001:db8::3", port: 53 },
  ]);
});

test("resolveNameservers resolves HOSTNAME and HOSTNAME:PORT once, to every address", async () => {
  // localhost comes from /etc/hosts: no DNS traffic.
  const a = await UpstreamResolver.resolveNameservers(["localhost", "localhost:5300"]);
  assert.ok(a.some((s) => s.ip === "127.0.0.1" && s.port === 53), JSON.stringify(a));
  assert.ok(a.some((s) => s.ip === "127.0.0.1" && s.port === 5300), JSON.stringify(a));
  const calls: string[] = [];
  const fake = async (h: string): Promise<{ address: string; family: number }[]> => {
    calls.push(h);
    return [{ address: "192.0.2.1", family: 4 }, { address: "2001:db8::1", family: 6 }];
  };
  assert.deepEqual(await UpstreamResolver.resolveNameservers(["dns.example:853", "DNS.example."], fake), [
    { ip: "192.0.2.1", port: 853 }, { ip: "2001:db8::1", port: 853 }, { ip: "192.0.2.1", port: 53 }, { ip: "2001:db8::1", port: 53 },
  ]);
  assert.deepEqual(calls, ["dns.example", "DNS.example"]);
});

test("resolveNameservers: bad specs and unresolvable names are ConfigErrors naming the spec", async () => {
  for (const bad of ["", "1.2.3.4:0", "1.2.3.4:70000", "1.2.3.4:x", "[::1", "[192.0.2.1]:53", "a:b:c", "300.1.2.3", "bad host", "-x-.example"]) {
    await assert.rejects(UpstreamResolver.resolveNameservers([bad]), (e: unknown) => e instanceof ConfigError && e.message.includes(`"${bad}"`), bad);
  }
  const failing = async (): Promise<never> => {
    throw Object.assign(new Error("getaddrinfo ENOTFOUND nowhere.example"), { code: "ENOTFOUND" });
  };
  await assert.rejects(UpstreamResolver.resolveNameservers(["nowhere.example:53"], failing),
    (e: unknown) => e instanceof ConfigError && /"nowhere\.example:53"/.test(e.message) && /ENOTFOUND/.test(e.message));
});

test("hostResolvers reads the nameserver lines of a resolv.conf (port 53), [] without the file", () => {
  const p = join(dir, "resolv.conf");
  writeFileSync(p, "# comment\nsearch example\nnameserver 192.0.2.53 # trailing\n;nameserver 192.0.2.99\nnameserver   2001:db8::53\nnameserver fe80::1%eth0\nnameserver not-an-ip\nnameserver 192.0.2.53\noptions edns0\n");
  assert.deepEqual(hostResolvers(p), [{ ip: "192.0.2.53", port: 53 }, { ip: "2001:db8::53", port: 53 }, { ip: "fe80::1%eth0", port: 53 }]);
  assert.deepEqual(UpstreamResolver.hostResolvers(p), hostResolvers(p));
  assert.deepEqual(hostResolvers(join(dir, "missing")), []);
});

test("the constructor rejects a bad timeout or server", () => {
  assert.throws(() => new UpstreamResolver([{ ip: "127.0.0.1", port: 53 }], 0), ConfigError);
  assert.throws(() => new UpstreamResolver([{ ip: "nope", port: 53 }], 100), ConfigError);
  assert.throws(() => new UpstreamResolver([{ ip: "127.0.0.1", port: 0 }], 100), ConfigError);
});

// --- query --------------------------------------------------------------------------------------

test("a query is answered over UDP under the caller's ID", { skip }, async () => {
  const r = new UpstreamResolver([live()], 2000);
  const ans = dnsPacket.decode(await r.query(query("allowed.test", "A", 31337)));
  assert.equal(ans.id, 31337);
  assert.equal(ans.rcode, "NOERROR");
  assert.deepEqual(ans.answers!.map((a) => a.data), ["203.0.113.10"]);
});

test("the upstream sees a random ID, not the guest's", async () => {
  const seen: number[] = [];
  const fake = await fakeServer((m, reply) => {
    seen.push(m.readUInt16BE(0));
    const d = dnsPacket.decode(m);
    reply(dnsPacket.encode({ type: "response", id: d.id, flags: dnsPacket.RECURSION_AVAILABLE, questions: d.questions, answers: [] }));
  });
  try {
    const r = new UpstreamResolver([{ ip: "127.0.0.1", port: fake.port }], 1000);
    for (let i = 0; i < 4; i++) assert.equal(dnsPacket.decode(await r.query(query("x.test", "A", 7))).id, 7);
    assert.ok(seen.some((id) => id !== 7), `ids upstream: ${seen.join(",")}`);
  } finally {
    await fake.close();
  }
});

test("an IPv6 nameserver ([::1]) is asked over udp6", async (t) => {
  let fake;
  try {
    fake = await fakeServer((m, reply) => {
      const d = dnsPacket.decode(m);
      reply(dnsPacket.encode({ type: "response", id: d.id, questions: d.questions, answers: [{ type: "AAAA", name: "six.test", ttl: 5, data: "2001:db8::6" }] }));
    }, "::1");
  } catch {
    t.skip("no ::1 on this host");
    return;
  }
  try {
    const [ns] = await UpstreamResolver.resolveNameservers([`[::1]:${fake.port}`]);
    const ans = dnsPacket.decode(await new UpstreamResolver([ns!], 1000).query(query("six.test", "AAAA", 6)));
    assert.deepEqual(ans.answers!.map((a) => a.data), ["2001:db8::6"]);
  } finally {
    await fake.close();
  }
});

test("a query that is not a DNS query is a DnsUpstreamError", async () => {
  const r = new UpstreamResolver([{ ip: "127.0.0.1", port: 9 }], 100);
  await assert.rejects(r.query(Buffer.from("short")), DnsUpstreamError);
  await assert.rejects(r.query(query("x.test").subarray(0, 16)), DnsUpstreamError);
});

test("a dead first server (ECONNREFUSED) fails over to the next at once", { skip }, async () => {
  const r = new UpstreamResolver([{ ip: "127.0.0.1", port: await deadPort() }, live()], 3000);
  const t0 = Date.now();
  const ans = dnsPacket.decode(await r.query(query("allowed.test")));
  assert.deepEqual(ans.answers!.map((a) => a.data), ["203.0.113.10"]);
  assert.ok(Date.now() - t0 < 1500, `took ${Date.now() - t0} ms: the refusal should not wait for the timeout`);
});

test("a silent server is given up after the timeout, then the next answers", { skip }, async () => {
  const silent = await fakeServer(() => {});
  try {
    const r = new UpstreamResolver([{ ip: "127.0.0.1", port: silent.port }, live()], 300);
    const t0 = Date.now();
    const ans = dnsPacket.decode(await r.query(query("allowed.test")));
    const dt = Date.now() - t0;
    assert.deepEqual(ans.answers!.map((a) => a.data), ["203.0.113.10"]);
    assert.ok(dt >= 280 && dt < 1500, `took ${dt} ms`);
    assert.equal(silent.received.length, 1);
  } finally {
    await silent.close();
  }
});

test("all servers silent: DnsUpstreamError (ERR_DNS_UPSTREAM) after timeout × servers", async () => {
  const a = await fakeServer(() => {});
  const b = await fakeServer(() => {});
  try {
    const r = new UpstreamResolver([{ ip: "127.0.0.1", port: a.port }, { ip: "127.0.0.1", port: b.port }], 300);
    const t0 = Date.now();
    await assert.rejects(r.query(query("allowed.test")), (e: unknown) => {
      assert.ok(e instanceof DnsUpstreamError);
      assert.equal(e.code, "ERR_DNS_UPSTREAM");
      assert.equal(e.attempts.length, 2);
      assert.ok(e.message.includes(`127.0.0.1:${a.port}`) && e.message.includes(`127.0.0.1:${b.port}`), e.message);
      return true;
    });
    const dt = Date.now() - t0;
    assert.ok(dt >= 580 && dt < 2000, `took ${dt} ms`);
  } finally {
    await a.close();
    await b.close();
  }
});

test("no servers at all: DnsUpstreamError", async () => {
  await assert.rejects(new UpstreamResolver([], 100).query(query("x.test")), DnsUpstreamError);
});

test("datagrams with the wrong ID or question are ignored (spoofing), the real answer is taken", async () => {
  const fake = await fakeServer((m, reply) => {
    const d = dnsPacket.decode(m);
    const mk = (id: number, name: string, ip: string): Buffer => dnsPacket.encode({ type: "response", id, flags: 0, questions: [{ name, type: "A" }], answers: [{ type: "A", name, ttl: 60, data: ip }] });
    reply(mk((d.id! + 1) & 0xffff, "x.test", "198.51.100.66")); // wrong ID
    reply(mk(d.id!, "other.test", "198.51.100.67")); // wrong question
    reply(Buffer.from("junk"));
    setTimeout(() => reply(mk(d.id!, "X.TEST", "198.51.100.1")), 30); // right (names compare case-insensitively)
  });
  try {
    const r = new UpstreamResolver([{ ip: "127.0.0.1", port: fake.port }], 2000);
    const ans = dnsPacket.decode(await r.query(query("x.test")));
    assert.deepEqual(ans.answers!.map((a) => a.data), ["198.51.100.1"]);
  } finally {
    await fake.close();
  }
});

test("TC=1 over UDP: the same server is asked again over TCP and the full answer returned", { skip }, async () => {
  const r = new UpstreamResolver([live()], 2000);
  const raw = await r.query(query("big.test", "TXT", 99));
  const ans = dnsPacket.decode(raw);
  assert.equal(ans.id, 99);
  assert.equal(ans.flag_tc, false);
  assert.ok(raw.length > 512, `${raw.length} bytes`);
  assert.equal(ans.answers!.length, BIG.length);
  // dnsmasq logged the query twice: the UDP attempt and the TCP retry.
  const log = readFileSync(dm!.log, "utf8");
  assert.ok((log.match(/query\[TXT\] big\.test/g) ?? []).length >= 2, log);
});

test("TC=1 and the TCP retry fails everywhere: the truncated answer is returned", async () => {
  const fake = await fakeServer((m, reply) => {
    const d = dnsPacket.decode(m);
    reply(dnsPacket.encode({ type: "response", id: d.id, flags: dnsPacket.TRUNCATED_RESPONSE, questions: d.questions }));
  });
  // Nothing listens on TCP at the fake server's port (a UDP port number, TCP side unbound).
  const probe = net.connect({ host: "127.0.0.1", port: fake.port });
  const tcpFree = await new Promise<boolean>((r) => { probe.on("error", () => r(true)); probe.on("connect", () => { probe.destroy(); r(false); }); });
  try {
    if (!tcpFree) return; // improbable: something else holds that TCP port
    const r = new UpstreamResolver([{ ip: "127.0.0.1", port: fake.port }], 1000);
    const ans = dnsPacket.decode(await r.query(query("t.test", "A", 5)));
    assert.equal(ans.id, 5);
    assert.equal(ans.flag_tc, true);
  } finally {
    await fake.close();
  }
});

test("concurrent queries share a small pool of sockets, each answer goes to its own query, and the ports rotate", async () => {
  const ports = new Set<number>();
  const idsPerPort = new Map<number, Set<number>>();
  // Answers in random order after random delays, each carrying the queried name back.
  const s = dgram.createSocket("udp4");
  s.on("message", (m, rinfo) => {
    ports.add(rinfo.port);
    const q = dnsPacket.decode(m);
    const ids = idsPerPort.get(rinfo.port) ?? new Set<number>();
    assert.ok(!ids.has(q.id!), "an ID is never in flight twice on one socket");
    ids.add(q.id!);
    const a = dnsPacket.encode({ type: "response", id: q.id, flags: dnsPacket.RECURSION_DESIRED, questions: q.questions,
      answers: [{ type: "TXT", name: q.questions![0]!.name, data: [q.questions![0]!.name] }] });
    setTimeout(() => { ids.delete(q.id!); s.send(a, rinfo.port, rinfo.address); }, Math.random() * 20);
  });
  await new Promise<void>((r) => s.bind(0, "127.0.0.1", () => r()));
  try {
    const r = new UpstreamResolver([{ ip: "127.0.0.1", port: s.address().port }], 2000);
    const names = Array.from({ length: 2000 }, (_, i) => `n${i}.pool.test`);
    for (let round = 0; round < 10; round++) {
      const answers = await Promise.all(names.slice(round * 200, round * 200 + 200).map((n, i) => r.query(query(n, "TXT", i))));
      answers.forEach((a, i) => {
        const d = dnsPacket.decode(a);
        assert.equal(d.id, i, "the caller's ID comes back");
        assert.equal(d.questions![0]!.name, names[round * 200 + i], "each query gets its own answer");
      });
    }
    // 2000 queries on a pool of 8 sockets, each retired after 128 uses: the port set turns over
    // (more than 8 ports) without a socket per query.
    assert.ok(ports.size > 8 && ports.size <= 2000 / 64, `source ports used: ${ports.size}`);
  } finally {
    await new Promise<void>((r) => s.close(() => r()));
  }
});

test("a nameserver the socket cannot even connect to fails the query (DnsUpstreamError), never the process", async () => {
  // fe80::1 without a zone: connect() fails with EINVAL at once; nothing is sent anywhere.
  for (const pooled of [true, false]) {
    const r = new UpstreamResolver([{ ip: "fe80::1", port: 53 }], 500, { pooled });
    const e = await r.query(query("a.test", "A", 9)).then(() => null, (err: unknown) => err);
    assert.ok(e instanceof DnsUpstreamError, `pooled=${pooled}: ${String(e)}`);
    assert.match((e as DnsUpstreamError).attempts[0] ?? "", /EINVAL|EADDRNOTAVAIL|ENETUNREACH/);
  }
});
