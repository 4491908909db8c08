// dns-tcp-proxy.test.ts — orchestrator/src/dns/tcp-proxy.ts with stand-in handlers: framing,
// pipelining with answers in query order, half-close, idle and connection limits.
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import dnsPacket from "dns-packet";
import { DnsTcpServer, type DnsTcpHandler } from "../../orchestrator/src/dns/tcp-proxy.js";
import { parseRedirectPreamble } from "../../orchestrator/src/engine/redirect.js";
import { layout as L } from "../../orchestrator/src/engine/layout.js";
import { redirectPreamble as preamble } from "../helpers/preamble.js";

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function query(name: string, id: number): Buffer {
  return dnsPacket.encode({ type: "query", id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name, type: "A" }] });
}

function frame(...msgs: Buffer[]): Buffer {
  return Buffer.concat(msgs.map((m) => Buffer.concat([Buffer.from([m.length >> 8, m.length & 255]), m])));
}

/** A reply to `q` with one A record, after `delayMs`. */
const echo = (delayMs: (name: string) => number): DnsTcpHandler => async (q) => {
  const d = dnsPacket.decode(q);
  const name = d.questions![0]!.name;
  await sleep(delayMs(name));
  return dnsPacket.encode({ type: "response", id: d.id, questions: d.questions, answers: [{ type: "A", name, ttl: 1, data: "192.0.2.1" }] });
};

interface Client {
  sock: net.Socket;
  answers: Buffer[];
  closed: Promise<void>;
  wait(n: number, ms?: number): Promise<void>;
}

async function connect(port: number): Promise<Client> {
  const sock = net.connect({ host: "127.0.0.1", port, allowHalfOpen: true });
  await new Promise<void>((r, j) => { sock.once("connect", () => r()); sock.once("error", j); });
  const answers: Buffer[] = [];
  let buf = Buffer.alloc(0);
  const waiters: (() => void)[] = [];
  sock.on("data", (c: Buffer) => {
    buf = Buffer.concat([buf, c]);
    while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
      answers.push(buf.subarray(2, 2 + buf.readUInt16BE(0)));
      buf = buf.subarray(2 + buf.readUInt16BE(0));
    }
    waiters.splice(0).forEach((w) => w());
  });
  sock.on("error", () => {});
  sock.on("end", () => sock.end()); // the server finished: finish too (as stub resolvers do)
  const closed = new Promise<void>((r) => sock.once("close", () => r()));
  return {
    sock, answers, closed,
    async wait(n, ms = 3000) {
      const t0 = Date.now();
      while (answers.length < n) {
        if (Date.now() - t0 > ms) throw new Error(`${answers.length} of ${n} answers`);
        await Promise.race([new Promise<void>((r) => waiters.push(r)), sleep(50)]);
      }
    },
  };
}

async function withServer(handler: DnsTcpHandler, opts: ConstructorParameters<typeof DnsTcpServer>[1], body: (port: number, s: DnsTcpServer) => Promise<void>): Promise<void> {
  const s = new DnsTcpServer(handler, opts);
  await s.listen();
  try {
    await body(s.address().port, s);
  } finally {
    await s.close();
  }
}

test("listens on 127.0.0.1, an ephemeral port", async () => {
  await withServer(echo(() => 0), {}, async (port, s) => {
    assert.equal(s.address().address, "127.0.0.1");
    assert.ok(port > 0);
  });
});

test("pipelined queries are handled together and answered in query order", async () => {
  const started: string[] = [];
  const handler: DnsTcpHandler = async (q, peer) => {
    started.push(dnsPacket.decode(q).questions![0]!.name);
    assert.equal(peer.address, "127.0.0.1");
    return echo((n) => (n === "slow.test" ? 200 : 0))(q, peer);
  };
  await withServer(handler, {}, async (port) => {
    const c = await connect(port);
    const t0 = Date.now();
    c.sock.write(frame(query("slow.test", 1), query("fast.test", 2), query("third.test", 3)));
    await c.wait(3);
    assert.deepEqual(c.answers.map((a) => dnsPacket.decode(a).id), [1, 2, 3]);
    assert.deepEqual(started, ["slow.test", "fast.test", "third.test"]);
    assert.ok(Date.now() - t0 < 600, "the queries overlapped");
    // A message split across writes, then more on the same connection.
    const q = frame(query("later.test", 4));
    c.sock.write(q.subarray(0, 5));
    await sleep(20);
    c.sock.write(q.subarray(5));
    await c.wait(4);
    assert.equal(dnsPacket.decode(c.answers[3]!).id, 4);
    c.sock.destroy();
  });
});

test("a client that half-closes still gets its answers, then the server closes", async () => {
  await withServer(echo(() => 50), {}, async (port) => {
    const c = await connect(port);
    c.sock.end(frame(query("a.test", 1), query("b.test", 2)));
    await c.closed;
    assert.deepEqual(c.answers.map((a) => dnsPacket.decode(a).id), [1, 2]);
  });
});

test("a null answer (or a failing handler) closes the connection after the answers before it", async () => {
  const handler: DnsTcpHandler = async (q, p) => {
    const name = dnsPacket.decode(q).questions![0]!.name;
    if (name === "drop.test") return null;
    if (name === "throw.test") throw new Error("boom");
    return echo(() => 0)(q, p);
  };
  await withServer(handler, {}, async (port) => {
    for (const bad of ["drop.test", "throw.test"]) {
      const c = await connect(port);
      c.sock.write(frame(query("ok.test", 1), query(bad, 2), query("after.test", 3)));
      await c.closed;
      assert.deepEqual(c.answers.map((a) => dnsPacket.decode(a).id), [1], bad);
    }
  });
});

test("a length below a DNS header closes the connection", async () => {
  let calls = 0;
  await withServer(async () => { calls++; return null; }, {}, async (port) => {
    const c = await connect(port);
    c.sock.write(Buffer.from([0, 3, 1, 2, 3]));
    await c.closed;
    assert.equal(calls, 0);
  });
});

test("idle connections are closed, but not while a query is outstanding", async () => {
  await withServer(echo((n) => (n === "slow.test" ? 400 : 0)), { idleTimeoutMs: 150 }, async (port, s) => {
    const idle = await connect(port);
    const t0 = Date.now();
    await idle.closed;
    assert.ok(Date.now() - t0 >= 120, "closed after the idle time");

    const busy = await connect(port);
    busy.sock.write(frame(query("slow.test", 9)));
    await busy.wait(1);
    assert.equal(dnsPacket.decode(busy.answers[0]!).id, 9, "answered although the query took longer than the idle time");
    await busy.closed;
    for (let i = 0; i < 50 && s.connections > 0; i++) await sleep(10);
    assert.equal(s.connections, 0);
  });
});

test("connections beyond maxConnections are closed at once", async () => {
  await withServer(echo(() => 0), { maxConnections: 2 }, async (port) => {
    const a = await connect(port);
    const b = await connect(port);
    const c = await connect(port);
    await c.closed;
    a.sock.write(frame(query("a.test", 1)));
    await a.wait(1);
    a.sock.destroy();
    b.sock.destroy();
  });
});

test("close() ends open connections", async () => {
  const s = new DnsTcpServer(echo(() => 0));
  await s.listen();
  const c = await connect(s.address().port);
  await s.close();
  await c.closed;
  assert.throws(() => s.address());
});

// --- the engine's redirect preamble ---------------------------------------------------------------

test("the preamble carries the admitting domain rule's name id; version 1 and other tokens are refused", () => {
  const token = Buffer.alloc(16, 7);
  assert.deepEqual(parseRedirectPreamble(preamble(token, 4, [192, 0, 2, 1], 443, 7), token), { ip: "192.0.2.1", port: 443, admitNameId: 7 });
  const v1 = preamble(token, 4, [192, 0, 2, 1], 443);
  v1[L.PRE_VERSION] = 1;
  assert.equal(parseRedirectPreamble(v1, token), null);
  assert.equal(parseRedirectPreamble(preamble(Buffer.alloc(16, 1), 4, [192, 0, 2, 1], 443), token), null);
});

test("with a redirect token: the preamble names the resolver the guest addressed; anything else is closed unanswered", async () => {
  const token = Buffer.alloc(16, 7);
  const seen: (string | undefined)[] = [];
  const server = new DnsTcpServer(async (q, peer) => {
    seen.push(peer.dest ? `${peer.dest.ip}:${peer.dest.port}` : undefined);
    return echo(() => 0)(q, peer);
  }, { redirectToken: token });
  await server.listen();
  try {
    const good = await connect(server.address().port);
    good.sock.write(Buffer.concat([preamble(token, 4, [198, 51, 100, 10], 53), frame(query("a.test", 1))]));
    await good.wait(1);
    const good6 = await connect(server.address().port);
    // Split across writes: the preamble may arrive in pieces.
    const p6 = preamble(token, 6, [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x35], 5353);
    good6.sock.write(p6.subarray(0, 7));
    await sleep(20);
    good6.sock.write(Buffer.concat([p6.subarray(7), frame(query("b.test", 2))]));
    await good6.wait(1);
    assert.deepEqual(seen, ["198.51.100.10:53", "2001:db8::35:5353"]);

    for (const bad of [frame(query("c.test", 3)), preamble(Buffer.alloc(16, 8), 4, [10, 0, 0, 1], 53), Buffer.alloc(L.REDIRECT_PREAMBLE_BYTES)]) {
      const c = await connect(server.address().port);
      c.sock.write(Buffer.concat([bad, frame(query("d.test", 4)), Buffer.alloc(L.REDIRECT_PREAMBLE_BYTES)]));
      await c.closed;
      assert.equal(c.answers.length, 0, "closed without an answer");
    }
    assert.equal(seen.length, 2, "the handler never saw a query without a valid preamble");
    good.sock.destroy();
    good6.sock.destroy();
  } finally {
    await server.close();
  }
});
