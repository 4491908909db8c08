// reject.ts — answers that refuse: TCP RST for a segment that has no connection (or that policy
// or a limit refuses), ICMP "administratively prohibited" for what policy rejects (denyResponse
// "reject") and ICMP port unreachable for DNS over the transports moat refuses. Each builds one
// frame toward the guest from the offending one.

import { CFG_GATEWAY_IP4, CFG_GATEWAY_IP6, PKT_FRAME, PKT_IP, PKT_L4, PKT_L4LEN, PKT_FAMILY } from "./layout";
import { TCP_RESETS_SENT, ICMP_REJECTS_SENT } from "./counters";
import { rd16, rd32, wr16, wr32 } from "./wire/bytes";
import { checksum } from "./wire/checksum";
import { count, txReserve, txCommit, emitEth, emitIp4, emitIp6, fillL4Checksum } from "./emit";
import { ETH_IP4, ETH_IP6, PROTO_ICMP, PROTO_TCP, PROTO_ICMP6, TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK } from "./wire/numbers";


// What refusePacket answers a packet other than TCP with.
export const ICMP_NONE: u32 = 0; // nothing: the packet is dropped
export const ICMP_PROHIBITED: u32 = 1;
export const ICMP_PORT_UNREACHABLE: u32 = 2;

/**
 * Refuse the packet in hand (PKT_*, noted by engine.ts before a flow is judged): TCP with a
 * reset, anything else with ICMP `icmp` (ICMP_NONE: silence).
 */
export function refusePacket(proto: u32, icmp: u32): void {
  const frame = <usize>load<u32>(PKT_FRAME);
  if (!frame) return;
  const ip = <usize>load<u32>(PKT_IP);
  const l4 = <usize>load<u32>(PKT_L4);
  const family = load<u32>(PKT_FAMILY);
  if (proto == PROTO_TCP) tcpReset(frame, ip, family, l4, load<u32>(PKT_L4LEN));
  else if (icmp != ICMP_NONE) icmpUnreachable(frame, ip, family, l4, load<u32>(PKT_L4LEN), icmp == ICMP_PORT_UNREACHABLE);
}

// ---- TCP resets for segments that belong to no connection -------------------------------------

/**
 * Answer a checked TCP segment that belongs to no connection with RST (RFC 9293 §3.10.7.1, the
 * CLOSED state): the guest learns at once instead of waiting out retransmissions.
 */
export function tcpReset(frame: usize, ip: usize, family: u32, l4: usize, l4len: u32): void {
  const doff = (<u32>load<u8>(l4 + 12) >> 4) << 2;
  const src = family == 4 ? ip + 12 : ip + 8;
  const dst = family == 4 ? ip + 16 : ip + 24;
  const flags = <u32>load<u8>(l4 + 13);
  if (flags & TCP_RST) return; // never answer a RST
  const out = txReserve();
  if (!out) return;
  const rip = emitEth(out, frame + 6, family == 4 ? ETH_IP4 : ETH_IP6);
  const t = family == 4 ? emitIp4(rip, PROTO_TCP, dst, src, 20) : emitIp6(rip, PROTO_TCP, dst, src, 20, 64);
  wr16(t, rd16(l4 + 2));
  wr16(t + 2, rd16(l4));
  let segLen = l4len - doff;
  if (flags & TCP_SYN) segLen++;
  if (flags & TCP_FIN) segLen++;
  if (flags & TCP_ACK) {
    wr32(t + 4, rd32(l4 + 8));
    wr32(t + 8, 0);
    store<u8>(t + 13, TCP_RST);
  } else {
    wr32(t + 4, 0);
    wr32(t + 8, rd32(l4 + 4) + segLen);
    store<u8>(t + 13, TCP_RST | TCP_ACK);
  }
  store<u8>(t + 12, 5 << 4);
  wr16(t + 14, 0);
  wr16(t + 18, 0);
  if (family == 4) fillL4Checksum(t, 20, 16, rip + 12, rip + 16, 4, PROTO_TCP);
  else fillL4Checksum(t, 20, 16, rip + 8, rip + 24, 16, PROTO_TCP);
  txCommit(<u32>(t - out) + 20);
  count(TCP_RESETS_SENT);
}


/**
 * ICMP destination unreachable, quoting the offending packet (its IPv4 header and 8 bytes, or for
 * IPv6 as much as fits in the minimum MTU): "administratively prohibited" (v4 type 3 code 13,
 * RFC 1812 §5.2.7.1; v6 type 1 code 1, RFC 4443 §3.1), or with `port` port unreachable (v4
 * type 3 code 3, v6 type 1 code 4: "nobody listens here").
 */
function icmpUnreachable(frame: usize, ip: usize, family: u32, l4: usize, l4len: u32, port: bool): void {
  const out = txReserve();
  if (!out) return;
  if (family == 4) {
    const hlen = <u32>(l4 - ip);
    const quote = hlen + (l4len < 8 ? l4len : 8);
    const rip = emitEth(out, frame + 6, ETH_IP4);
    const m = emitIp4(rip, PROTO_ICMP, CFG_GATEWAY_IP4, ip + 12, 8 + quote);
    wr32(m, port ? 0x03030000 : 0x030d0000); // type 3, code 3 or 13, checksum 0
    wr32(m + 4, 0);
    memory.copy(m + 8, ip, quote);
    wr16(m + 2, checksum(m, 8 + quote));
    txCommit(14 + 20 + 8 + quote);
  } else {
    const total = <u32>(l4 - ip) + l4len;
    const quote = total > 1184 ? 1184 : total; // 40 + 8 + 1184 = 1232 bytes: fits the IPv6 minimum MTU
    const rip = emitEth(out, frame + 6, ETH_IP6);
    const m = emitIp6(rip, PROTO_ICMP6, CFG_GATEWAY_IP6, ip + 8, 8 + quote, 64);
    wr32(m, port ? 0x01040000 : 0x01010000); // type 1, code 4 or 1
    wr32(m + 4, 0);
    memory.copy(m + 8, ip, quote);
    fillL4Checksum(m, 8 + quote, 2, rip + 8, rip + 24, 16, PROTO_ICMP6);
    txCommit(14 + 40 + 8 + quote);
  }
  if (!port) count(ICMP_REJECTS_SENT);
}
