// dns-wire.test.ts — the interceptor's own reader of answers (wire.ts scanAnswer): what it reads
// must be what dns-packet (a full decoder) reads, and what does not parse must throw, never be
// passed on half-read.
import { test } from "node:test";
import assert from "node:assert/strict";
import dnsPacket from "dns-packet";
import ipaddr from "ipaddr.js";
import { scanAnswer, readName, TYPE } from "../../orchestrator/src/dns/wire.js";

test("A, AAAA and CNAME records read as dns-packet reads them (IPv6 in RFC 5952 text)", () => {
  const v6 = ["2001:db8::1", "::ffff:192.0.2.1", "::", "::1", "2001:db8:0:1:0:0:0:1", "2001:0:0:1:0:0:0:1", "fe80::1:0:0:1", "1:2:3:4:5:6:7:8", "2001:db8::", "0:0:1::"];
  const msg = dnsPacket.encode({
    type: "response", id: 7, flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ type: "A", name: "WWW.Example.TEST" }],
    answers: [
      { type: "CNAME", name: "www.example.test", data: "Edge.CDN.test", ttl: 30 },
      { type: "A", name: "edge.cdn.test", data: "198.51.100.7", ttl: 60 },
      ...v6.map((a) => ({ type: "AAAA" as const, name: "edge.cdn.test", data: a, ttl: 5 })),
    ],
    authorities: [{ type: "NS", name: "cdn.test", data: "ns.cdn.test", ttl: 9 }],
    additionals: [{ type: "A", name: "ns.cdn.test", data: "203.0.113.53", ttl: 9 }],
  });
  const { rcode, records } = scanAnswer(msg);
  assert.equal(rcode, 0);
  assert.deepEqual(records.map((r) => [r.section, r.name, r.type, r.ttl]), [
    [1, "www.example.test", TYPE.CNAME, 30], [1, "edge.cdn.test", TYPE.A, 60], ...v6.map(() => [1, "edge.cdn.test", TYPE.AAAA, 5]),
    [2, "cdn.test", 2, 9], [3, "ns.cdn.test", TYPE.A, 9],
  ]);
  assert.equal(records[0]!.data, "edge.cdn.test", "CNAME targets are canonical (lower case)");
  assert.equal(records[1]!.data, "198.51.100.7");
  v6.forEach((a, i) => assert.equal(records[2 + i]!.data, ipaddr.parse(a).toString(), a));
  assert.equal(records[2 + v6.length]!.data, null, "other types carry no data");
});

test("labels that are not plain text are escaped, so one label never reads as two", () => {
  // One label "a.b" (with a dot inside) and a label with a space: \046 and \032.
  const name = Buffer.from([3, 0x61, 0x2e, 0x62, 4, 0x54, 0x20, 0x65, 0x73, 0]);
  const msg = Buffer.concat([Buffer.from([0, 1, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0]), name, Buffer.from([0, 1, 0, 1])]);
  assert.equal(readName(msg, 12).name, "a\\046b.t\\032es");
});

test("malformed answers throw: forward or looping pointers, records past the end, odd address sizes", () => {
  const header = (an: number) => Buffer.from([0, 1, 0x81, 0x80, 0, 1, 0, an, 0, 0, 0, 0]);
  const q = Buffer.from([1, 0x78, 0, 0, 1, 0, 1]); // x. A IN
  const rr = (name: number[], type: number, rdata: number[], rdlen = rdata.length) =>
    Buffer.from([...name, (type >> 8) & 255, type & 255, 0, 1, 0, 0, 0, 5, (rdlen >> 8) & 255, rdlen & 255, ...rdata]);
  const cases: [string, Buffer][] = [
    ["a pointer forward", Buffer.concat([header(1), q, rr([0xc0, 40], 1, [1, 2, 3, 4])])],
    ["a pointer to itself", Buffer.concat([header(1), q, rr([0xc0, 19], 1, [1, 2, 3, 4])])],
    ["record data past the end", Buffer.concat([header(1), q, rr([0xc0, 12], 1, [1, 2, 3, 4], 40)])],
    ["an A record of 5 bytes", Buffer.concat([header(1), q, rr([0xc0, 12], 1, [1, 2, 3, 4, 5])])],
    ["an AAAA record of 4 bytes", Buffer.concat([header(1), q, rr([0xc0, 12], 28, [1, 2, 3, 4])])],
    ["more records than there are", Buffer.concat([header(2), q, rr([0xc0, 12], 1, [1, 2, 3, 4])])],
    ["a truncated header", Buffer.from([0, 1, 0x81])],
  ];
  for (const [what, msg] of cases) assert.throws(() => scanAnswer(msg), Error, what);
  // And the good form of the same message reads.
  assert.equal(scanAnswer(Buffer.concat([header(1), q, rr([0xc0, 12], 1, [1, 2, 3, 4])])).records[0]!.data, "1.2.3.4");
});
