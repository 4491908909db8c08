// secrets.test.ts — the engine's placeholder scan (engine-wasm/assembly/policy/placeholder-scan.ts): guest
// TCP segments and UDP datagrams carrying a secret's placeholder, in any of its forms and split
// across segments, are stopped; everything else passes; without secrets nothing is scanned.
import { test } from "node:test";
import assert from "node:assert/strict";
import { EngineHarness, testConfig, counterDelta } from "../helpers/engine-harness.js";
import { eth, ipv4, udp } from "../helpers/frames.js";
import { SYN, RST, PSH, ACK, u16, segment, parse, REMOTE } from "../helpers/tcp-frames.js";
import { layout as L } from "../../orchestrator/src/engine/layout.js";
import { EngineTables } from "../../orchestrator/src/engine/tables.js";

const P = "moat-ph-0123456789abcdefghijklmn";

function harness(withSecret = true): EngineHarness {
  const h = new EngineHarness({ maxTcpFlows: 64 });
  if (withSecret) new EngineTables(h.mem).setSecretForms([P]);
  return h;
}

/** An established guest connection to REMOTE:80; returns a sender of data segments. */
function open(h: EngineHarness) {
  h.send(segment(REMOTE, { sport: 40000, dport: 80, seq: 1000, flags: SYN, options: [2, 4, ...u16(1460)] }));
  const flow = h.takeOps().find((o) => o.kind === L.OPK_TCP_CONNECT)!.flow;
  const [sa] = h.deliverEvent(flow, L.INK_TCP_CONNECTED).map(parse);
  let seq = 1001;
  const ack = (sa!.seq + 1) >>> 0;
  h.send(segment(REMOTE, { sport: 40000, dport: 80, seq, ack, flags: ACK }));
  h.takeOps();
  return {
    flow,
    write(text: string) {
      const frames = h.send(segment(REMOTE, { sport: 40000, dport: 80, seq, ack, flags: ACK | PSH, data: Buffer.from(text, "latin1") })).map(parse);
      seq += text.length;
      return { frames, ops: h.takeOps() };
    },
  };
}

test("a placeholder in a TCP segment: not sent, both sides reset, counted and audited", () => {
  const h = harness();
  const c = open(h);
  const before = h.counters();
  const clean = c.write("GET / HTTP/1.1\r\n");
  assert.ok(clean.ops.some((o) => o.kind === L.OPK_TCP_SEND), "clean data is sent");
  const bad = c.write(`X-Key: ${P}\r\n`);
  assert.ok(!bad.ops.some((o) => o.kind === L.OPK_TCP_SEND), "not sent");
  assert.ok(bad.ops.some((o) => o.kind === L.OPK_TCP_ABORT && o.flow === c.flow), "the host side is reset");
  assert.ok(bad.frames.some((f) => f.flags & RST), "the guest is reset");
  assert.equal(counterDelta(before, h.counters()).SECRET_VIOLATIONS, 1);
  const [e] = new EngineTables(h.mem).drainDenials(() => "?", 0);
  assert.equal(e?.secret, 0, "audited with the secret's index");
  assert.equal(e?.port, 80);
  assert.equal(h.flows().tcp, 0);
});

test("split across segments, and in base64 and %XX forms, it is still found", () => {
  for (const form of [P, Buffer.from(P).toString("base64"), [...P].map((ch) => `%${ch.charCodeAt(0).toString(16).toUpperCase()}`).join("")]) {
    const h = harness();
    const c = open(h);
    const cut = Math.floor(form.length / 2);
    const first = c.write(`data ${form.slice(0, cut)}`);
    assert.ok(first.ops.some((o) => o.kind === L.OPK_TCP_SEND), "the first half alone is not a placeholder");
    const second = c.write(`${form.slice(cut)} more`);
    assert.ok(second.ops.some((o) => o.kind === L.OPK_TCP_ABORT), `found when completed: ${form.slice(0, 12)}...`);
  }
});

test("a UDP datagram with a placeholder is dropped; without secrets nothing is scanned", () => {
  const h = harness();
  const dgram = (text: string) => eth(testConfig.gatewayMac, testConfig.guestMac, 0x0800, ipv4(testConfig.guestIp4, REMOTE, 17, udp(testConfig.guestIp4, REMOTE, 5000, 9, [...Buffer.from(text)])));
  h.send(dgram("clean"));
  assert.equal(h.takeOps().filter((o) => o.kind === L.OPK_UDP_SEND).length, 1);
  const before = h.counters();
  h.send(dgram(`k=${P}`));
  assert.equal(h.takeOps().filter((o) => o.kind === L.OPK_UDP_SEND).length, 0);
  assert.equal(counterDelta(before, h.counters()).SECRET_VIOLATIONS, 1);
  const none = harness(false);
  const c = open(none);
  assert.ok(c.write(`X-Key: ${P}\r\n`).ops.some((o) => o.kind === L.OPK_TCP_SEND), "no secrets: passes");
});

test("a placeholder split over consecutive UDP datagrams, or in an ICMP echo payload, is stopped", () => {
  const h = harness();
  const dgram = (text: string) => eth(testConfig.gatewayMac, testConfig.guestMac, 0x0800, ipv4(testConfig.guestIp4, REMOTE, 17, udp(testConfig.guestIp4, REMOTE, 5000, 9, [...Buffer.from(text)])));
  h.send(dgram(`part one ${P.slice(0, 15)}`));
  assert.equal(h.takeOps().filter((o) => o.kind === L.OPK_UDP_SEND).length, 1, "half a placeholder is not one");
  const before = h.counters();
  h.send(dgram(`${P.slice(15)} part two`));
  assert.equal(h.takeOps().filter((o) => o.kind === L.OPK_UDP_SEND).length, 0, "the datagram completing it is not sent");
  assert.equal(counterDelta(before, h.counters()).SECRET_VIOLATIONS, 1);
  // ICMP echo: type 8, code 0, checksum, id, seq, payload.
  const payload = [...Buffer.from(`ping ${P}`)];
  const icmp = [8, 0, 0, 0, 0x12, 0x34, 0, 1, ...payload];
  let sum = 0;
  for (let i = 0; i < icmp.length; i += 2) sum += (icmp[i]! << 8) + (icmp[i + 1] ?? 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  icmp[2] = (~sum >> 8) & 0xff;
  icmp[3] = ~sum & 0xff;
  const b2 = h.counters();
  h.send(eth(testConfig.gatewayMac, testConfig.guestMac, 0x0800, ipv4(testConfig.guestIp4, REMOTE, 1, icmp)));
  assert.equal(h.takeOps().filter((o) => o.kind === L.OPK_UDP_SEND).length, 0, "the echo request is not sent");
  assert.equal(counterDelta(b2, h.counters()).SECRET_VIOLATIONS, 1);
});
