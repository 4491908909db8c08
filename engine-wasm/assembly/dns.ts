// dns.ts — the engine's half of DNS interception (DESIGN §7): guest queries out to the
// orchestrator's interceptor, its answers back in as frames. (Which packets are DNS, and the
// refusal of the other DNS transports so stubs fall back to port 53: flow/outbound.ts.)
//
// Every UDP datagram to port 53, whatever its destination, is copied into the DNS ring (the
// worker hands it to the interceptor and returns the answer through dnsAnswer()); nothing is
// forwarded by the engine itself. The ring has DNS_SLOTS entries: queries beyond that are
// dropped and counted, which bounds what a guest can keep in flight. TCP/53 is terminated like
// any TCP flow and dialled to the orchestrator's DNS-over-TCP listener (flow/outbound.ts).
import {
  DNS_CTRL, DNS_BASE, DNS_SLOTS, DNS_SLOT_BYTES, DNS_MAX_QUERY, DQ_LEN, DQ_FAMILY, DQ_GUEST_PORT,
  DQ_DEST_PORT, DQ_GUEST_ADDR, DQ_DEST_ADDR, DQ_TO_GATEWAY, DQ_PAYLOAD, DNS_ANSWER_BASE, DNS_ANSWER_BYTES,
  KEY_SCRATCH, CFG_GUEST_MAC, CFG_MTU,
} from "./layout";
import { DNS_QUERIES, DNS_ANSWERS, DROP_DNS_OVERLOAD, DROP_DNS_OVERSIZE, DROP_OVERSIZE } from "./counters";
import { ringHead, ringTail, ringPublishTail } from "./ring";
import { wr16, copy16 } from "./wire/bytes";
import { ETH_IP4, ETH_IP6, PROTO_UDP } from "./wire/numbers";
import { outboundAdmit } from "./flow/outbound";
import { count, txReserve, txCommit, txPublish, emitEth, emitIp4, emitIp6, fillL4Checksum } from "./emit";

/**
 * A guest query (UDP payload of `len` bytes at `data`; the flow key is at KEY_SCRATCH, and
 * flow/outbound.ts decided it is one, SVC_DNS). A query to a resolver other than the gateway is
 * a flow to that resolver: policy decides first.
 */
export function dnsQuery(data: usize, len: u32, family: u32, toGateway: bool): void {
  if (!outboundAdmit()) return;
  if (len > <u32>DNS_MAX_QUERY) { count(DROP_DNS_OVERSIZE); return; }
  const tail = ringTail(DNS_CTRL);
  if (tail - ringHead(DNS_CTRL) >= <u32>DNS_SLOTS) { count(DROP_DNS_OVERLOAD); return; }
  const q = DNS_BASE + <usize>(tail & (<u32>DNS_SLOTS - 1)) * DNS_SLOT_BYTES;
  store<u32>(q, len, DQ_LEN);
  store<u32>(q, family, DQ_FAMILY);
  store<u32>(q, <u32>load<u16>(KEY_SCRATCH, 4), DQ_GUEST_PORT);
  store<u32>(q, <u32>load<u16>(KEY_SCRATCH, 6), DQ_DEST_PORT);
  copy16(q + DQ_GUEST_ADDR, KEY_SCRATCH + 8);
  copy16(q + DQ_DEST_ADDR, KEY_SCRATCH + 24);
  store<u32>(q, toGateway ? 1 : 0, DQ_TO_GATEWAY);
  memory.copy(q + DQ_PAYLOAD, data, len);
  ringPublishTail(DNS_CTRL, tail + 1);
  count(DNS_QUERIES);
}

/**
 * Send the answer the worker left at DNS_ANSWER_BASE (a DQ_* header copied from its query, then
 * the payload) to the guest, from the resolver the guest asked. Returns false when the TX ring
 * is full (the worker retries after a flush).
 */
export function dnsAnswer(): bool {
  const a = DNS_ANSWER_BASE;
  const len = load<u32>(a, DQ_LEN);
  const family = load<u32>(a, DQ_FAMILY);
  if (len + DQ_PAYLOAD > <u32>DNS_ANSWER_BYTES || len + (family == 4 ? 28 : 48) > load<u32>(CFG_MTU)) { count(DROP_OVERSIZE); return true; }
  const out = txReserve();
  if (!out) return false;
  const ip = emitEth(out, CFG_GUEST_MAC, family == 4 ? ETH_IP4 : ETH_IP6);
  const udp = family == 4
    ? emitIp4(ip, PROTO_UDP, a + DQ_DEST_ADDR + 12, a + DQ_GUEST_ADDR + 12, 8 + len)
    : emitIp6(ip, PROTO_UDP, a + DQ_DEST_ADDR, a + DQ_GUEST_ADDR, 8 + len, 64);
  wr16(udp, load<u32>(a, DQ_DEST_PORT));
  wr16(udp + 2, load<u32>(a, DQ_GUEST_PORT));
  wr16(udp + 4, 8 + len);
  memory.copy(udp + 8, a + DQ_PAYLOAD, len);
  if (family == 4) fillL4Checksum(udp, 8 + len, 6, ip + 12, ip + 16, 4, PROTO_UDP);
  else fillL4Checksum(udp, 8 + len, 6, ip + 8, ip + 24, 16, PROTO_UDP);
  txCommit(<u32>(udp - out) + 8 + len);
  txPublish(); // called between runs: publish now, or the frame waits for the next run
  count(DNS_ANSWERS);
  return true;
}
