// datagram.ts — datagram flows: guest UDP datagrams and ICMP echo requests re-originated from host
// sockets (UDP sockets; for echo, the kernel's unprivileged "ping" sockets, so the kernel keeps
// the echo identifiers apart), replies turned back into frames.
//
// A flow is one (guest address, guest port, remote address, remote port). Its host socket is a
// UDP socket *connected* to the remote (opened by native-vmm on OPK_UDP_OPEN, filed under the
// flow's index), so the kernel hands it only that remote's replies and the flow needs no
// demultiplexing on the way back. Where a new flow's socket connects is flow/outbound.ts's
// decision (DNS to the gateway without interception: the configured forwarder, while the guest
// keeps seeing the gateway as its peer). A flow lives while it carries traffic either way;
// engineTick expires it after CFG_UDP_IDLE_MS without any.
// Rate limits (limits.ts): a datagram over the egress or ingress budget is dropped and counted,
// and so is the first datagram of a flow over the connection rate.

import {
  KEY_SCRATCH, CFG_MAX_UDP_FLOWS, ST_UDP_LIVE, ST_NOW_MS, CFG_GUEST_MAC, CFG_MTU,
  OPK_UDP_OPEN, OPK_UDP_SEND, OPK_CLOSE, OPK_ICMP_OPEN, OPK_ACCEPT, LIM_EGRESS, LIM_INGRESS, LIM_CONN,
} from "../layout";
import {
  UDP_FLOWS_OPENED, UDP_TO_HOST, UDP_FROM_HOST, DROP_FLOW_LIMIT, DROP_FLOW_TABLE_FULL,
  DROP_UDP_NO_FLOW, DROP_OVERSIZE, UDP_FLOWS_EXPIRED, ICMP_ECHO_FROM_HOST,
  DROP_RATE_EGRESS, DROP_RATE_INGRESS, DROP_RATE_CONN,
} from "../counters";
import { limited, lacks, charge, connQueueEmpty } from "../limits";
import {
  flowInsert, flowTableFull, flowRemove, flowRecord, F_STATE, F_LAST_MS, F_PKTS_OUT, F_PKTS_IN, F_BYTES_OUT,
  F_BYTES_IN, F_DIAL_ADDR, F_DIAL_PORT, flowFromPeer,
} from "./table";
import { wr16 } from "../wire/bytes";
import { ETH_IP4, ETH_IP6, PROTO_ICMP, PROTO_UDP, PROTO_ICMP6 } from "../wire/numbers";
import { auditSecret } from "../policy/admit";
import { outboundAdmit, outboundRecord } from "./outbound";
import { secretsActive, secretInStream, secretOfForm } from "../policy/placeholder-scan";
import { checksum } from "../wire/checksum";
import { count, opPush, txReserve, txCommit, emitEth, emitIp4, emitIp6, fillL4Checksum, txL4Checksum } from "../emit";

export const UDP_OPEN: u32 = 1;

/**
 * A datagram from the guest for no existing flow — a UDP payload, or an ICMP/ICMPv6 echo
 * request (the ICMP message), `len` bytes at `data` — key at KEY_SCRATCH (hash `hash`): a flow
 * whose host socket (of `family`) connects where flow/outbound.ts decided, and the datagram sent
 * on it.
 */
export function datagramFromGuest(hash: u32, data: usize, len: u32, family: u32): void {
  const idx = datagramFlowOpen(hash, family);
  if (idx >= 0) udpOnFlow(<u32>idx, data, len, family);
}

/** Judge and create a datagram flow (key at KEY_SCRATCH) and open its host socket; -1 if not. */
function datagramFlowOpen(hash: u32, family: u32): i32 {
  const proto = <u32>load<u8>(KEY_SCRATCH);
  const live = load<u32>(ST_UDP_LIVE);
  if (live >= load<u32>(CFG_MAX_UDP_FLOWS)) { count(DROP_FLOW_LIMIT); return -1; }
  if (flowTableFull()) { count(DROP_FLOW_TABLE_FULL); return -1; }
  // Over the connection rate (or behind held TCP SYNs, which go first): the datagram is dropped.
  if (lacks(LIM_CONN, 1) || (limited(LIM_CONN) && !connQueueEmpty())) { count(DROP_RATE_CONN); return -1; }
  if (!outboundAdmit()) return -1;
  charge(LIM_CONN, 1);
  const idx = flowInsert(hash);
  if (idx < 0) { count(DROP_FLOW_TABLE_FULL); return -1; }
  const rec = flowRecord(<u32>idx);
  store<u32>(rec, UDP_OPEN, F_STATE);
  outboundRecord(rec);
  store<u32>(ST_UDP_LIVE, live + 1);
  if (!opPush(proto == PROTO_UDP ? OPK_UDP_OPEN : OPK_ICMP_OPEN, <u32>idx, 0, 0, family, load<u32>(rec, F_DIAL_PORT), rec + F_DIAL_ADDR)) {
    udpClose(<u32>idx, false);
    return -1;
  }
  if (proto == PROTO_UDP) count(UDP_FLOWS_OPENED);
  return idx;
}

/** A guest datagram (or echo request) for flow `idx`: sent on its host socket. */
export function udpOnFlow(idx: u32, data: usize, len: u32, family: u32): void {
  const rec = flowRecord(idx);
  if (secretsActive()) {
    // UDP and ICMP echo alike, with the flow's carry: a placeholder split over consecutive
    // datagrams is found in the one that completes it, which is not sent.
    const f = secretInStream(idx, data, len);
    if (f) { auditSecret(<u32>load<u8>(rec), family, <u32>load<u16>(rec, 6), secretOfForm(f)); return; } // dropped
  }
  if (lacks(LIM_EGRESS, <f64>len)) { count(DROP_RATE_EGRESS); return; }
  if (!opPush(OPK_UDP_SEND, idx, data, len, family, 0, 0)) return;
  charge(LIM_EGRESS, <f64>len);
  store<f64>(rec, load<f64>(ST_NOW_MS), F_LAST_MS);
  store<u64>(rec, load<u64>(rec, F_PKTS_OUT) + 1, F_PKTS_OUT);
  store<u64>(rec, load<u64>(rec, F_BYTES_OUT) + len, F_BYTES_OUT);
  if (load<u8>(rec) == PROTO_UDP) count(UDP_TO_HOST);
}

/**
 * A datagram (`len` bytes at `data`) from a new peer on published UDP port `listener`
 * (flow/inbound.ts judged it): a flow toward the guest, key at KEY_SCRATCH, replies sent back to
 * that peer through the listener's socket (OPK_ACCEPT). The caller checked there is room for the
 * host operation and the frame. False when no flow can be made (counted).
 */
export function udpInboundOpen(hash: u32, listener: u32, peer: usize, peerPort: u32, data: usize, len: u32): bool {
  const live = load<u32>(ST_UDP_LIVE);
  if (live >= load<u32>(CFG_MAX_UDP_FLOWS)) { count(DROP_FLOW_LIMIT); return false; }
  const idx = flowInsert(hash);
  if (idx < 0) { count(DROP_FLOW_TABLE_FULL); return false; }
  const rec = flowRecord(<u32>idx);
  store<u32>(rec, UDP_OPEN, F_STATE);
  flowFromPeer(rec, listener, peer, peerPort);
  store<u32>(ST_UDP_LIVE, live + 1);
  opPush(OPK_ACCEPT, <u32>idx, 0, 0, 0, listener, 0);
  count(UDP_FLOWS_OPENED);
  udpToGuest(<u32>idx, data, len);
  return true;
}

/**
 * A datagram of `len` bytes at `data` from flow `idx`'s remote. Returns false when the TX ring
 * is full (the caller keeps the datagram queued and retries).
 */
export function udpToGuest(idx: u32, data: usize, len: u32): bool {
  const rec = flowRecord(idx);
  if (load<u32>(rec, F_STATE) != UDP_OPEN) { count(DROP_UDP_NO_FLOW); return true; }
  if (lacks(LIM_INGRESS, <f64>len)) { count(DROP_RATE_INGRESS); return true; }
  const proto = <u32>load<u8>(rec);
  if (proto != PROTO_UDP) return echoToGuest(rec, proto, data, len);
  const family = <u32>load<u8>(rec, 1);
  const ipHdr: u32 = family == 4 ? 20 : 40;
  if (ipHdr + 8 + len > load<u32>(CFG_MTU)) { count(DROP_OVERSIZE); return true; }
  const out = txReserve();
  if (!out) return false;
  const ip = emitEth(out, CFG_GUEST_MAC, family == 4 ? ETH_IP4 : ETH_IP6);
  let udp: usize;
  if (family == 4) udp = emitIp4(ip, PROTO_UDP, rec + 24 + 12, rec + 8 + 12, 8 + len);
  else udp = emitIp6(ip, PROTO_UDP, rec + 24, rec + 8, 8 + len, 64);
  wr16(udp, <u32>load<u16>(rec, 6));
  wr16(udp + 2, <u32>load<u16>(rec, 4));
  wr16(udp + 4, 8 + len);
  memory.copy(udp + 8, data, len);
  const left = family == 4 ? txL4Checksum(udp, 8 + len, 6, ip + 12, ip + 16, 4, PROTO_UDP) : txL4Checksum(udp, 8 + len, 6, ip + 8, ip + 24, 16, PROTO_UDP);
  txCommit(<u32>(udp - out) + 8 + len, left ? <u32>(udp - out) : 0, 6);
  charge(LIM_INGRESS, <f64>len);
  store<f64>(rec, load<f64>(ST_NOW_MS), F_LAST_MS);
  store<u64>(rec, load<u64>(rec, F_PKTS_IN) + 1, F_PKTS_IN);
  store<u64>(rec, load<u64>(rec, F_BYTES_IN) + len, F_BYTES_IN);
  count(UDP_FROM_HOST);
  return true;
}

/**
 * An echo reply from a ping socket (an ICMP message, its identifier chosen by the kernel) back to
 * the guest with the guest's own identifier. Anything but an echo reply is dropped.
 */
function echoToGuest(rec: usize, proto: u32, data: usize, len: u32): bool {
  const family = <u32>load<u8>(rec, 1);
  const replyType: u32 = proto == PROTO_ICMP ? 0 : 129;
  if (len < 8 || <u32>load<u8>(data) != replyType) { count(DROP_UDP_NO_FLOW); return true; }
  if ((family == 4 ? <u32>20 : <u32>40) + len > load<u32>(CFG_MTU)) { count(DROP_OVERSIZE); return true; }
  const out = txReserve();
  if (!out) return false;
  const ip = emitEth(out, CFG_GUEST_MAC, family == 4 ? ETH_IP4 : ETH_IP6);
  const m = family == 4 ? emitIp4(ip, PROTO_ICMP, rec + 36, rec + 20, len) : emitIp6(ip, PROTO_ICMP6, rec + 24, rec + 8, len, 64);
  memory.copy(m, data, len);
  wr16(m + 4, <u32>load<u16>(rec, 4)); // the guest's identifier
  if (family == 4) {
    store<u16>(m + 2, 0);
    wr16(m + 2, checksum(m, len));
  } else {
    fillL4Checksum(m, len, 2, ip + 8, ip + 24, 16, PROTO_ICMP6);
  }
  txCommit(<u32>(m - out) + len);
  charge(LIM_INGRESS, <f64>len);
  store<f64>(rec, load<f64>(ST_NOW_MS), F_LAST_MS);
  count(ICMP_ECHO_FROM_HOST);
  return true;
}

/** Remove a UDP flow; `closeSocket` queues the close of its host socket. */
export function udpClose(idx: u32, closeSocket: bool): void {
  if (closeSocket) opPush(OPK_CLOSE, idx, 0, 0, 0, 0, 0);
  store<u32>(ST_UDP_LIVE, load<u32>(ST_UDP_LIVE) - 1);
  flowRemove(idx);
}

/** Expire flow `idx` if it is UDP and idle for `idleMs`. Returns true if it was removed. */
export function udpExpire(idx: u32, nowMs: f64, idleMs: f64): bool {
  const rec = flowRecord(idx);
  const proto = <u32>load<u8>(rec);
  if ((proto != PROTO_UDP && proto != PROTO_ICMP && proto != PROTO_ICMP6) || load<u32>(rec, F_STATE) != UDP_OPEN) return false;
  if (nowMs - load<f64>(rec, F_LAST_MS) < idleMs) return false;
  udpClose(idx, true);
  count(UDP_FLOWS_EXPIRED);
  return true;
}

