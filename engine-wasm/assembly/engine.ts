// engine.ts — the engine's entry points: one batch in, replies and host work out.
//
// Theory of operation
// The worker calls engineRun(nowMs) whenever a link or a host socket has delivered something.
// A run drains two input rings:
//   - the inbound ring (IN_*): what host sockets received, turned into frames for the guest;
//   - the RX ring: frames from the guest, parsed layer by layer with every length and offset
//     checked against the frame, and either answered by the gateway (services.ts), turned into
//     host operations for a flow (flow/), or dropped and counted under exactly one reason.
// A packet for a flow is parsed, its key written (KEY_SCRATCH) and looked up, and dispatched:
// to its flow, or, when it would start one, where flow/outbound.ts decides it goes.
// Output goes to the TX ring (frames for the guest) and to the host-operation list (OPS_*),
// which the worker hands to native-vmm after the run.
//
// Slot lifetime: a host operation may point into an RX slot (the payload of a datagram to send),
// so RX slots consumed by a run are not released at once: the run stores the new head in
// RX_CTRL + RING_CTRL_PENDING_HEAD and whoever executes the ops (native-vmm's flush, or
// engineReleaseRx) publishes it afterwards. A run stops taking frames while the ops list is
// nearly full or the TX ring has no room, and returns so the worker can flush and call again:
// nothing is dropped for lack of room that could instead wait in a ring.
//
// Exports return plain integers; all state lives in the shared memory (layout.ts).

import {
  RX_CTRL, RX_DESC_BASE, RX_BUF_BASE, RX_SLOTS, IN_CTRL, IN_DESC_BASE, IN_BUF_BASE, IN_SLOTS, TX_CTRL,
  DESC_LEN, DESC_FLAGS, RX_F_CSUM_LEFT, DESC_TOKEN, DESC_AUX, RING_CTRL_PENDING_HEAD, ST_OPS_COUNT, ST_NOW_MS, ST_RUN,
  ST_TX_NEXT, ST_FLOWS_LIVE, ST_SCAN_CURSOR, ST_INITIALIZED, ST_UDP_LIVE, ST_TCP_LIVE, ST_IP_ID,
  ST_DHCP_LEASED, KEY_SCRATCH, OPS_MAX, COUNTERS_BASE, COUNTERS_MAX, FLOW_CAPACITY, CFG_GATEWAY_MAC,
  CFG_GUEST_MAC, CFG_GATEWAY_IP4, CFG_GUEST_IP4, CFG_PREFIX6, CFG_GATEWAY_IP6, CFG_GATEWAY_LL6, CFG_MTU,
  CFG_UDP_IDLE_MS, SLOT_BYTES, INK_UDP_DATA, INK_OPEN_FAILED, INK_KIND_MASK, EV_CTRL, EV_DESC_BASE, EV_SLOTS,
  PKT_FRAME, PKT_IP, PKT_L4, PKT_L4LEN, PKT_FAMILY, PIN_SCRATCH, INK_ACCEPT, LIM_BASE, LIM_BUCKET_BYTES,
  LIM_DNS, LB_RATE, LB_BURST, LB_TOKENS, LB_AT, ST_LIMIT_DUE, CONNQ_BASE, ST_TX_LENT, ST_TX_LENT_POS, IN_LENT_BASE,
} from "./layout";
import {
  RX_FRAMES, RX_BYTES, DROP_RUNT, DROP_NOT_FOR_US, DROP_ETHERTYPE, DROP_IP4_HEADER, DROP_IP4_CHECKSUM,
  DROP_IP_FRAGMENT, DROP_IP_SPOOFED, DROP_IP6_HEADER, DROP_IP6_EXT_HEADER, DROP_UDP_MALFORMED,
  DROP_TCP_MALFORMED, DROP_PROTOCOL, DROP_MULTICAST, DROP_OVERSIZE, DROP_ICMP_UNHANDLED, DROP_ICMP_MALFORMED,
  FLOW_ERRORS, DROP_UDP_NO_FLOW, DROP_TCP_NO_FLOW, DNS_RATE_REFUSED, ICMP_ECHO_FORWARDED,
} from "./counters";
import { limited, bucketLevel, charge } from "./limits";
import { ringHead, ringTail, ringPublishHead, descAt, bufAt } from "./ring";
import { rd16, eq16, mapV4, copy16, familyOf } from "./wire/bytes";
import { checksum } from "./wire/checksum";
import { count, countN, txPublish, txHasRoom, l4ChecksumOk } from "./emit";
import { handleArp, handleIcmp4ToGateway, handleDhcp, handleIcmp6 } from "./services";
import { tcpReset } from "./reject";
import { dnsQuery } from "./dns";
import { flowTableInit, flowRecord, keyHash, flowLookup, F_STATE } from "./flow/table";
import { datagramFromGuest, udpOnFlow, udpToGuest, udpClose, udpExpire, UDP_OPEN } from "./flow/datagram";
import { pinAdd } from "./policy/pinset";
import { canonicalAt } from "./policy/match";
import { auditNotRouted } from "./policy/admit";
import { tcpNew, tcpOnFlow, tcpEvent, tcpTick, tcpFlushAcks, tcpLimitWake, SEG_HANDLED, SEG_REFUSED, SEG_STRAY_RST } from "./flow/tcp";
import { inboundAccept } from "./flow/inbound";
import { outbound, outDial, SVC_NONE, SVC_DNS } from "./flow/outbound";
import { ETH_ARP, ETH_IP4, ETH_IP6, PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMP6 } from "./wire/numbers";

// ---- lifecycle ----------------------------------------------------------------------------

/** Reset all engine state. The orchestrator has written the CFG_* block. */
export function engineInit(): void {
  // A memory the engine never ran on is zero throughout (WebAssembly's own guarantee): its
  // tables need no clearing, and clearing them would make every page of them resident (4 MiB of
  // flow records per sandbox, most of which an idle sandbox never touches).
  const fresh = load<u32>(ST_INITIALIZED) == 0;
  flowTableInit(fresh);
  store<u32>(ST_OPS_COUNT, 0);
  store<u32>(ST_UDP_LIVE, 0);
  store<u32>(ST_TCP_LIVE, 0);
  store<u32>(ST_SCAN_CURSOR, 0);
  store<u32>(ST_IP_ID, 1);
  store<u32>(ST_DHCP_LEASED, 0);
  store<u32>(ST_TX_NEXT, ringTail(TX_CTRL));
  store<u32>(RX_CTRL + RING_CTRL_PENDING_HEAD, ringHead(RX_CTRL));
  store<u32>(IN_CTRL + RING_CTRL_PENDING_HEAD, ringHead(IN_CTRL));
  if (!fresh) {
    memory.fill(COUNTERS_BASE, 0, COUNTERS_MAX * 8);
    memory.fill(LIM_BASE, 0, CONNQ_BASE - LIM_BASE); // no limits (engineSetLimit sets them), nothing held
  }
  store<u32>(ST_INITIALIZED, 1);
}

/** Publish the RX head staged by the last run (after its host operations have executed). */
export function engineReleaseRx(): void {
  ringPublishHead(RX_CTRL, load<u32>(RX_CTRL + RING_CTRL_PENDING_HEAD));
}

/** Forget the queued host operations (benchmarks and tests that execute none). */
export function engineDiscardOps(): void {
  store<u32>(ST_OPS_COUNT, 0);
}

/**
 * Process what the inbound and RX rings hold. Returns the number of input entries consumed;
 * the caller executes the queued host operations, then calls again while this is non-zero.
 */
export function engineRun(nowMs: f64): i32 {
  store<f64>(ST_NOW_MS, nowMs);
  store<u32>(ST_RUN, load<u32>(ST_RUN) + 1); // reassembly slots released before now may be reused
  let done: i32 = 0;

  // Host -> guest first: events (no data), then data; both keep replies flowing.
  let evHead = ringHead(EV_CTRL);
  const evTail = ringTail(EV_CTRL);
  while (evHead != evTail) {
    if (!hostEvent(descAt(EV_DESC_BASE, EV_SLOTS, evHead), 0)) break;
    evHead++;
    done++;
  }
  ringPublishHead(EV_CTRL, evHead);
  // (native-vmm releases these slots: one whose frame was built in it once the link took it)
  let inHead = load<u32>(IN_CTRL + RING_CTRL_PENDING_HEAD);
  const inTail = ringTail(IN_CTRL);
  while (inHead != inTail) {
    store<u32>(ST_TX_LENT, 0);
    if (!hostEvent(descAt(IN_DESC_BASE, IN_SLOTS, inHead), bufAt(IN_BUF_BASE, IN_SLOTS, inHead))) break;
    const lent = IN_LENT_BASE + ((<usize>inHead & (IN_SLOTS - 1)) << 3);
    store<u32>(lent, load<u32>(ST_TX_LENT));
    store<u32>(lent, load<u32>(ST_TX_LENT_POS), 4);
    inHead++;
    done++;
  }
  store<u32>(IN_CTRL + RING_CTRL_PENDING_HEAD, inHead);

  // Guest -> world.
  let rxHead = load<u32>(RX_CTRL + RING_CTRL_PENDING_HEAD);
  const rxTail = ringTail(RX_CTRL);
  while (rxHead != rxTail) {
    if (load<u32>(ST_OPS_COUNT) > <u32>OPS_MAX - 4 || !txHasRoom()) break;
    const d = descAt(RX_DESC_BASE, RX_SLOTS, rxHead);
    const len = load<u32>(d, DESC_LEN);
    const frame = bufAt(RX_BUF_BASE, RX_SLOTS, rxHead);
    count(RX_FRAMES);
    countN(RX_BYTES, len);
    csumLeft = (load<u32>(d, DESC_FLAGS) & RX_F_CSUM_LEFT) != 0;
    if (len > <u32>SLOT_BYTES) count(DROP_OVERSIZE); // a producer bug; never read past the slot
    else processFrame(frame, len);
    rxHead++;
    done++;
  }
  csumLeft = false;
  store<u32>(RX_CTRL + RING_CTRL_PENDING_HEAD, rxHead);
  // Something a rate limit held back may go on by now (the worker's timer would come later).
  const due = load<f64>(ST_LIMIT_DUE);
  if (due != 0 && due <= nowMs) done += tcpLimitWake(nowMs);
  txPublish();
  return done;
}

/**
 * One entry of the event or inbound ring (`buf`: its data, 0 for events). Returns false when it
 * must stay queued (no room toward the guest yet).
 */
function hostEvent(d: usize, buf: usize): bool {
  const aux = load<u32>(d, DESC_AUX);
  const kind = aux & INK_KIND_MASK;
  const flow = load<u32>(d, DESC_TOKEN);
  if (kind == INK_ACCEPT) return inboundAccept(flow, buf, load<u32>(d, DESC_LEN)); // token: the listener
  if (flow >= <u32>FLOW_CAPACITY) { count(DROP_UDP_NO_FLOW); return true; }
  if (load<u8>(flowRecord(flow)) == PROTO_TCP) {
    return tcpEvent(flow, kind, load<u32>(d, DESC_LEN), load<u32>(d, DESC_FLAGS), buf, aux);
  }
  // (A datagram from a published port's listener starts after the peer's header: DESC_FLAGS.)
  if (kind == INK_UDP_DATA) return udpToGuest(flow, buf + load<u32>(d, DESC_FLAGS), load<u32>(d, DESC_LEN));
  count(FLOW_ERRORS);
  // A socket that could not be opened takes its flow with it; an ICMP error on a connected
  // socket (INK_FLOW_ERROR) leaves the flow in place.
  if (kind == INK_OPEN_FAILED && load<u32>(flowRecord(flow), F_STATE) == UDP_OPEN) udpClose(flow, false);
  return true;
}

/**
 * Expire idle flows: scans up to `budget` flow slots from where the last call stopped, so a tick
 * costs the same whatever the table's size. Returns the number of flows removed.
 */
export function engineTick(nowMs: f64, budget: u32): i32 {
  store<f64>(ST_NOW_MS, nowMs);
  if (load<u32>(ST_FLOWS_LIVE) == 0) return 0; // an idle sandbox costs no scan
  const idleMs = <f64>load<u32>(CFG_UDP_IDLE_MS);
  let cur = load<u32>(ST_SCAN_CURSOR);
  let removed: i32 = 0;
  for (let i: u32 = 0; i < budget; i++) {
    if (load<u32>(ST_OPS_COUNT) >= <u32>OPS_MAX - 1) break;
    if (udpExpire(cur, nowMs, idleMs) || tcpTick(cur, nowMs)) removed++;
    cur = (cur + 1) & (<u32>FLOW_CAPACITY - 1);
  }
  store<u32>(ST_SCAN_CURSOR, cur);
  return removed;
}

// ---- the per-frame path -----------------------------------------------------------------------

/**
 * The frame being processed came with RX_F_CSUM_LEFT: its guest's kernel left the TCP/UDP
 * checksum to the NIC, so it is not verified (a frame that never crossed a wire has nothing for
 * it to catch; a damaged one is the guest's own bytes, to its own connection).
 */
let csumLeft = false;

/** One frame of `len` bytes from the guest. */
export function processFrame(frame: usize, len: u32): void {
  if (len < 14) { count(DROP_RUNT); return; }
  // Destination: the gateway's MAC, or a group address (broadcast, IPv4/IPv6 multicast).
  if ((load<u8>(frame) & 1) == 0 &&
      (load<u32>(frame) != load<u32>(CFG_GATEWAY_MAC) || load<u16>(frame + 4) != load<u16>(CFG_GATEWAY_MAC + 4))) {
    count(DROP_NOT_FOR_US);
    return;
  }
  if (len > load<u32>(CFG_MTU) + 14) { count(DROP_OVERSIZE); return; }
  // Replies go to the MAC the guest sends from (a VMM moat does not run chooses it): learned from
  // its unicast, non-zero source addresses. One guest per link, so this only decides which frames
  // its NIC will take.
  const src4 = load<u32>(frame + 6);
  const src2 = load<u16>(frame + 10);
  if ((src4 != load<u32>(CFG_GUEST_MAC) || src2 != load<u16>(CFG_GUEST_MAC + 4)) && (load<u8>(frame + 6) & 1) == 0 && (src4 | src2) != 0) {
    store<u32>(CFG_GUEST_MAC, src4);
    store<u16>(CFG_GUEST_MAC + 4, src2);
  }
  const type = rd16(frame + 12);
  if (type == ETH_IP4) handleIp4(frame, len);
  else if (type == ETH_IP6) handleIp6(frame, len);
  else if (type == ETH_ARP) handleArp(frame, len);
  else count(DROP_ETHERTYPE);
}

function handleIp4(frame: usize, len: u32): void {
  const ip = frame + 14;
  const avail = len - 14;
  if (avail < 20) { count(DROP_IP4_HEADER); return; }
  const vihl = <u32>load<u8>(ip);
  const hlen = (vihl & 15) << 2;
  const total = rd16(ip + 2);
  if ((vihl >> 4) != 4 || hlen < 20 || total < hlen || total > avail) { count(DROP_IP4_HEADER); return; }
  if (checksum(ip, hlen) != 0) { count(DROP_IP4_CHECKSUM); return; }
  if ((rd16(ip + 6) & 0x3fff) != 0) { count(DROP_IP_FRAGMENT); return; } // MF or an offset
  const proto = <u32>load<u8>(ip + 9);
  const l4 = ip + hlen;
  const l4len = total - hlen;
  const src = load<u32>(ip + 12);
  const dst = load<u32>(ip + 16);
  const dstIsGateway = dst == load<u32>(CFG_GATEWAY_IP4);
  if (src != load<u32>(CFG_GUEST_IP4)) {
    // DHCP is the one thing a guest may send before it has its address.
    if (!(src == 0 && proto == PROTO_UDP && l4len >= 8 && rd16(l4 + 2) == 67)) { count(DROP_IP_SPOOFED); return; }
  }
  if (proto == PROTO_UDP) {
    if (l4len < 8) { count(DROP_UDP_MALFORMED); return; }
    const ulen = rd16(l4 + 4);
    if (ulen < 8 || ulen > l4len) { count(DROP_UDP_MALFORMED); return; }
    if (!csumLeft && load<u16>(l4 + 6) != 0 && !l4ChecksumOk(l4, ulen, ip + 12, ip + 16, 4, PROTO_UDP)) {
      count(DROP_UDP_MALFORMED);
      return;
    }
    const dport = rd16(l4 + 2);
    if (dport == 67 && (dst == 0xffffffff || dstIsGateway)) { handleDhcp(frame, l4, ulen - 8); return; }
    if (src == 0) { count(DROP_IP_SPOOFED); return; }
  }
  // 224/4 multicast, 240/4 and the broadcast address are not routed, whatever the protocol.
  if ((dst & 0xf0) >= 0xe0 && proto != PROTO_ICMP) {
    count(DROP_MULTICAST);
    const ports = (proto == PROTO_UDP || proto == PROTO_TCP) && l4len >= 4;
    writeKey4(proto, ip, ports ? rd16(l4) : 0, ports ? rd16(l4 + 2) : 0);
    auditNotRouted(proto, 4, ports ? rd16(l4 + 2) : 0);
    return;
  }
  if (proto == PROTO_UDP) {
    const dport = rd16(l4 + 2);
    const ulen = rd16(l4 + 4);
    writeKey4(PROTO_UDP, ip, rd16(l4), dport);
    notePacket(frame, ip, 4, l4, ulen);
    udpFromGuestTo(l4, ulen, 4, dstIsGateway, dport);
    return;
  }
  if (proto == PROTO_ICMP) {
    if (dstIsGateway) { handleIcmp4ToGateway(frame, ip, l4, l4len); return; }
    if (l4len < 8 || checksum(l4, l4len) != 0) { count(DROP_ICMP_MALFORMED); return; }
    // Echo requests to other hosts go out through a ping socket; other ICMP is not forwarded.
    if (load<u8>(l4) != 8 || load<u8>(l4 + 1) != 0 || (dst & 0xf0) >= 0xe0) { count(DROP_ICMP_UNHANDLED); return; }
    writeKey4(PROTO_ICMP, ip, rd16(l4 + 4), 0);
    notePacket(frame, ip, 4, l4, l4len);
    echoFromGuest(PROTO_ICMP, l4, l4len, 4);
    return;
  }
  if (proto == PROTO_TCP) { tcpSegment(frame, ip, 4, l4, l4len, dstIsGateway); return; }
  count(DROP_PROTOCOL);
}

function handleIp6(frame: usize, len: u32): void {
  const ip = frame + 14;
  const avail = len - 14;
  if (avail < 40 || (load<u8>(ip) >> 4) != 6) { count(DROP_IP6_HEADER); return; }
  const plen = rd16(ip + 4);
  if (<u32>40 + plen > avail) { count(DROP_IP6_HEADER); return; }
  const end = ip + 40 + plen;
  // Walk the extension headers (RFC 8200 §4), each bounded by the payload length.
  let nh = <u32>load<u8>(ip + 6);
  let p = ip + 40;
  let hops = 0;
  // (A loop without a condition and with `break` confuses asc's flow analysis, which then drops
  // the code after it: the loop states its condition.)
  while (nh == 0 || nh == 43 || nh == 60 || nh == 51) {
    if (p + 8 > end || hops >= 8) { count(DROP_IP6_EXT_HEADER); return; }
    const hl: usize = nh == 51 ? (<usize>load<u8>(p + 1) + 2) << 2 : (<usize>load<u8>(p + 1) + 1) << 3;
    nh = load<u8>(p);
    p += hl;
    hops++;
    if (p > end) { count(DROP_IP6_EXT_HEADER); return; }
  }
  if (nh == 44) {
    if (p + 8 > end) { count(DROP_IP6_EXT_HEADER); return; }
    count(DROP_IP_FRAGMENT);
    return;
  }
  const l4 = p;
  const l4len = <u32>(end - p);
  const src = ip + 8;
  const dst = ip + 24;
  if (nh == PROTO_ICMP6) {
    // NDP and RS may come from the link-local or unspecified address.
    if (l4len < 4 || !l4ChecksumOk(l4, l4len, src, dst, 16, PROTO_ICMP6)) { count(DROP_ICMP_MALFORMED); return; }
    if (!guestSrc6(src) && load<u16>(src) != 0x80fe && !(load<u64>(src) == 0 && load<u64>(src, 8) == 0)) {
      count(DROP_IP_SPOOFED);
      return;
    }
    // An echo request from the guest's address to a unicast host other than the gateway.
    if (l4len >= 8 && load<u8>(l4) == 128 && guestSrc6(src) && load<u8>(dst) != 0xff &&
        !eq16(dst, CFG_GATEWAY_IP6) && !eq16(dst, CFG_GATEWAY_LL6) && load<u16>(dst) != 0x80fe) {
      writeKey6(PROTO_ICMP6, ip, rd16(l4 + 4), 0);
      notePacket(frame, ip, 6, l4, l4len);
      echoFromGuest(PROTO_ICMP6, l4, l4len, 6);
      return;
    }
    handleIcmp6(frame, ip, l4, l4len);
    return;
  }
  if (!guestSrc6(src)) { count(DROP_IP_SPOOFED); return; }
  // IPv6 multicast, and IPv4 multicast or broadcast spelled ::ffff:a.b.c.d (a host socket would
  // send that as IPv4), are not routed either.
  if (load<u8>(dst) == 0xff || (familyOf(dst) == 4 && (load<u8>(dst, 12) & 0xf0) >= 0xe0)) {
    count(DROP_MULTICAST);
    const ports = (nh == PROTO_UDP || nh == PROTO_TCP) && l4len >= 4;
    writeKey6(nh, ip, ports ? rd16(l4) : 0, ports ? rd16(l4 + 2) : 0);
    auditNotRouted(nh, 6, ports ? rd16(l4 + 2) : 0);
    return;
  }
  const dstIsGateway = eq16(dst, CFG_GATEWAY_IP6) || eq16(dst, CFG_GATEWAY_LL6);
  if (nh == PROTO_UDP) {
    if (l4len < 8) { count(DROP_UDP_MALFORMED); return; }
    const ulen = rd16(l4 + 4);
    if (ulen < 8 || ulen > l4len || (!csumLeft && !l4ChecksumOk(l4, ulen, src, dst, 16, PROTO_UDP))) {
      count(DROP_UDP_MALFORMED);
      return;
    }
    writeKey6(PROTO_UDP, ip, rd16(l4), rd16(l4 + 2));
    notePacket(frame, ip, 6, l4, ulen);
    udpFromGuestTo(l4, ulen, 6, dstIsGateway, rd16(l4 + 2));
    return;
  }
  if (nh == PROTO_TCP) { tcpSegment(frame, ip, 6, l4, l4len, dstIsGateway); return; }
  count(DROP_PROTOCOL);
}

/** The guest's IPv6 sources: its /64 (any interface identifier, so SLAAC works). */
@inline function guestSrc6(src: usize): bool {
  return load<u64>(src) == load<u64>(CFG_PREFIX6);
}

@inline function writeKey4(proto: u32, ip: usize, guestPort: u32, remotePort: u32): void {
  store<u32>(KEY_SCRATCH, proto | (4 << 8));
  store<u16>(KEY_SCRATCH + 4, <u16>guestPort);
  store<u16>(KEY_SCRATCH + 6, <u16>remotePort);
  mapV4(KEY_SCRATCH + 8, ip + 12);
  mapV4(KEY_SCRATCH + 24, ip + 16);
}
@inline function writeKey6(proto: u32, ip: usize, guestPort: u32, remotePort: u32): void {
  store<u32>(KEY_SCRATCH, proto | (6 << 8));
  store<u16>(KEY_SCRATCH + 4, <u16>guestPort);
  store<u16>(KEY_SCRATCH + 6, <u16>remotePort);
  copy16(KEY_SCRATCH + 8, ip + 8);
  copy16(KEY_SCRATCH + 24, ip + 24);
}


/** Remember the frame in hand, for replies built deeper down (policy/admit.ts). */
@inline function notePacket(frame: usize, ip: usize, family: u32, l4: usize, l4len: u32): void {
  store<u32>(PKT_FRAME, <u32>frame);
  store<u32>(PKT_IP, <u32>ip);
  store<u32>(PKT_L4, <u32>l4);
  store<u32>(PKT_L4LEN, l4len);
  store<u32>(PKT_FAMILY, family);
}

/**
 * A checked UDP datagram (key written, packet noted) to its flow. A datagram of an existing flow
 * goes where the flow was sent when it was made (whichever side opened it); a new one where
 * flow/outbound.ts decides.
 */
function udpFromGuestTo(udp: usize, ulen: u32, family: u32, dstIsGateway: bool, dport: u32): void {
  const hash = keyHash();
  const found = flowLookup(hash);
  if (found >= 0) { udpOnFlow(<u32>found, udp + 8, ulen - 8, family); return; }
  const service = outbound(PROTO_UDP, family, dstIsGateway, dport);
  if (service == SVC_NONE) return; // refused there (counted, answered)
  if (service == SVC_DNS) dnsQuery(udp + 8, ulen - 8, family, dstIsGateway);
  else datagramFromGuest(hash, udp + 8, ulen - 8, familyOf(outDial()));
}

/** An ICMP/ICMPv6 echo request (key written, packet noted) to its flow, or to a new one. */
function echoFromGuest(proto: u32, l4: usize, l4len: u32, family: u32): void {
  const hash = keyHash();
  const found = flowLookup(hash);
  if (found >= 0) udpOnFlow(<u32>found, l4, l4len, family);
  else if (outbound(proto, family, false, 0) != SVC_NONE) datagramFromGuest(hash, l4, l4len, family);
  count(ICMP_ECHO_FORWARDED);
}

/** A TCP segment from the guest: checked here, then handed to the connection (flow/tcp.ts). */
function tcpSegment(frame: usize, ip: usize, family: u32, l4: usize, l4len: u32, dstIsGateway: bool): void {
  notePacket(frame, ip, family, l4, l4len);
  if (l4len < 20) { count(DROP_TCP_MALFORMED); return; }
  const doff = (<u32>load<u8>(l4 + 12) >> 4) << 2;
  const src = family == 4 ? ip + 12 : ip + 8;
  const dst = family == 4 ? ip + 16 : ip + 24;
  const alen: usize = family == 4 ? 4 : 16;
  if (doff < 20 || doff > l4len || (!csumLeft && !l4ChecksumOk(l4, l4len, src, dst, alen, PROTO_TCP))) { count(DROP_TCP_MALFORMED); return; }
  if (family == 4) writeKey4(PROTO_TCP, ip, rd16(l4), rd16(l4 + 2));
  else writeKey6(PROTO_TCP, ip, rd16(l4), rd16(l4 + 2));
  // A segment of an existing connection goes to it, whichever side opened it: where a flow goes
  // was decided when it was made (flow/outbound.ts, flow/inbound.ts).
  const hash = keyHash();
  const found = flowLookup(hash);
  if (found >= 0) { tcpOnFlow(<u32>found, l4, l4len); return; }
  if (outbound(PROTO_TCP, family, dstIsGateway, rd16(l4 + 2)) == SVC_NONE) return; // refused there (counted, reset)
  const verdict = tcpNew(hash, l4);
  if (verdict == SEG_HANDLED) return;
  if (verdict != SEG_REFUSED) count(DROP_TCP_NO_FLOW);
  if (verdict != SEG_STRAY_RST) tcpReset(frame, ip, family, l4, l4len);
}

// ---- benchmark entry points ----------------------------------------------------------------------

/** The Internet checksum of `len` bytes at `p`, `iterations` times (returns the last value). */
export function benchChecksum(p: usize, len: u32, iterations: u32): u32 {
  let c: u32 = 0;
  for (let i: u32 = 0; i < iterations; i++) c = checksum(p, len) + (c & 0);
  return c;
}

/** memory.copy of `len` bytes, `iterations` times: the reference the checksum is compared to. */
export function benchCopy(dst: usize, src: usize, len: u32, iterations: u32): void {
  for (let i: u32 = 0; i < iterations; i++) memory.copy(dst, src, len);
}

/** Checksum exposed for tests against a reference implementation. */
export function internetChecksum(p: usize, len: u32): u32 {
  return checksum(p, len);
}

export { policyEvaluate, classifyAny as policyClassify } from "./policy/match";
export { dnsAnswer } from "./dns";
export { tcpInspect } from "./flow/tcp";

/** The delayed-ACK timer (ST_ACK_DUE): send the ACKs due by `nowMs`, published at once. */
export function engineFlushAcks(nowMs: f64): i32 {
  const n = tcpFlushAcks(nowMs);
  if (n) txPublish();
  return n;
}

/**
 * Set rate limit `which` (0 egress, 1 ingress, 2 conn, 3 dns: layout.ts LIM_*) to `ratePerMs`
 * tokens per millisecond in a bucket of `burst` (rate 0: no limit). A new limit starts with a
 * full bucket; a changed one keeps its tokens (at most the new size). What waited goes on at once
 * if it may now. Returns what moved (the caller flushes).
 */
export function engineSetLimit(which: u32, ratePerMs: f64, burst: f64, nowMs: f64): i32 {
  store<f64>(ST_NOW_MS, nowMs);
  const b = LIM_BASE + <usize>(which & 3) * LIM_BUCKET_BYTES;
  const tokens = limited(b) ? bucketLevel(b) : burst;
  store<f64>(b, ratePerMs, LB_RATE);
  store<f64>(b, burst, LB_BURST);
  store<f64>(b, tokens > burst ? burst : tokens, LB_TOKENS);
  store<f64>(b, nowMs, LB_AT);
  const moved = tcpLimitWake(nowMs);
  if (moved) txPublish();
  return moved;
}

/** The rate limits' timer (ST_LIMIT_DUE): what was held back and may go on now does. */
export function engineLimitWake(nowMs: f64): i32 {
  const moved = tcpLimitWake(nowMs);
  if (moved) txPublish();
  return moved;
}

/** May the guest's next DNS query be answered (the DNS rate)? 0: no, answer REFUSED (counted). */
export function engineDnsAdmit(nowMs: f64): i32 {
  store<f64>(ST_NOW_MS, nowMs);
  if (limited(LIM_DNS) && bucketLevel(LIM_DNS) < 1) { count(DNS_RATE_REFUSED); return 0; }
  charge(LIM_DNS, 1);
  return 1;
}

/** Pin the address at PIN_SCRATCH under rule name `nameId` for `ttlMs` (the DNS interceptor's answers). */
export function dnsPin(nameId: u32, ttlMs: f64, nowMs: f64): void {
  store<f64>(ST_NOW_MS, nowMs);
  canonicalAt(PIN_SCRATCH);
  pinAdd(PIN_SCRATCH, nameId, ttlMs);
}
