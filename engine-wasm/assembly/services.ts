// services.ts — the services the gateway itself answers: ARP, DHCPv4, ICMPv4 echo, and for IPv6
// neighbour discovery (NS -> NA), router advertisements (RS -> RA, with prefix, MTU and RDNSS)
// and ICMPv6 echo. Every handler is given a frame already checked by engine.ts up to the layer
// it names, checks the rest against the frame's length, and either queues exactly one reply
// or counts one drop reason.

import {
  CFG_GATEWAY_MAC, CFG_GATEWAY_IP4, CFG_GUEST_IP4, CFG_PREFIX_LEN4, CFG_MTU,
  CFG_DNS_IP4, CFG_LEASE_SECS, CFG_GATEWAY_IP6, CFG_GATEWAY_LL6, CFG_PREFIX6, ST_DHCP_LEASED,
} from "./layout";
import {
  ARP_REPLIES, ICMP_ECHO_REPLIES, DHCP_REPLIES, NDP_REPLIES, ROUTER_ADVERTS, DROP_ARP_MALFORMED,
  DROP_ARP_IGNORED, DROP_ICMP_MALFORMED, DROP_ICMP_UNHANDLED, DROP_DHCP_MALFORMED,
} from "./counters";
import { rd16, wr16, wr32, rd32, copyMac, copy16, eq16 } from "./wire/bytes";
import { checksum } from "./wire/checksum";
import { count, txReserve, txCommit, emitEth, emitIp4, emitIp6, fillL4Checksum } from "./emit";
import { ETH_ARP, ETH_IP4, ETH_IP6, PROTO_ICMP, PROTO_UDP, PROTO_ICMP6 } from "./wire/numbers";


// ---- ARP (RFC 826) ---------------------------------------------------------------------------

export function handleArp(frame: usize, len: u32): void {
  if (len < 14 + 28) { count(DROP_ARP_MALFORMED); return; }
  const a = frame + 14;
  if (rd16(a) != 1 || rd16(a + 2) != ETH_IP4 || load<u8>(a + 4) != 6 || load<u8>(a + 5) != 4) {
    count(DROP_ARP_MALFORMED);
    return;
  }
  // Only requests for the gateway's address get an answer; gratuitous ARP, replies and
  // requests for other hosts are normal traffic on a link and are ignored (counted).
  if (rd16(a + 6) != 1 || load<u32>(a + 24) != load<u32>(CFG_GATEWAY_IP4)) {
    count(DROP_ARP_IGNORED);
    return;
  }
  const out = txReserve();
  if (!out) return;
  const r = emitEth(out, a + 8, ETH_ARP);
  wr16(r, 1);
  wr16(r + 2, ETH_IP4);
  store<u8>(r + 4, 6);
  store<u8>(r + 5, 4);
  wr16(r + 6, 2);
  copyMac(r + 8, CFG_GATEWAY_MAC);
  store<u32>(r + 14, load<u32>(CFG_GATEWAY_IP4));
  copyMac(r + 18, a + 8);
  store<u32>(r + 24, load<u32>(a + 14));
  txCommit(14 + 28);
  count(ARP_REPLIES);
}

// ---- ICMPv4 echo (RFC 792) to the gateway -----------------------------------------------------

/** `ip` is a checked IPv4 header of `hlen` bytes carrying `l4len` bytes of ICMP at `l4`. */
export function handleIcmp4ToGateway(frame: usize, ip: usize, l4: usize, l4len: u32): void {
  if (l4len < 8 || checksum(l4, l4len) != 0) { count(DROP_ICMP_MALFORMED); return; }
  if (load<u8>(l4) != 8 || load<u8>(l4 + 1) != 0) { count(DROP_ICMP_UNHANDLED); return; }
  const out = txReserve();
  if (!out) return;
  const rip = emitEth(out, frame + 6, ETH_IP4);
  const ricmp = emitIp4(rip, PROTO_ICMP, CFG_GATEWAY_IP4, ip + 12, l4len);
  memory.copy(ricmp, l4, l4len);
  store<u8>(ricmp, 0); // echo reply
  store<u16>(ricmp + 2, 0);
  wr16(ricmp + 2, checksum(ricmp, l4len));
  txCommit(14 + 20 + l4len);
  count(ICMP_ECHO_REPLIES);
}

// ---- DHCPv4 (RFC 2131, options RFC 2132) ------------------------------------------------------

const DHCP_MAGIC: u32 = 0x63825363;

/** `udp` points at the UDP header of a checked datagram with `payloadLen` bytes after it. */
export function handleDhcp(frame: usize, udp: usize, payloadLen: u32): void {
  const b = udp + 8;
  if (payloadLen < 240 || load<u8>(b) != 1 || load<u8>(b + 1) != 1 || load<u8>(b + 2) != 6 ||
      rd32(b + 236) != DHCP_MAGIC) {
    count(DROP_DHCP_MALFORMED);
    return;
  }
  // Walk the options for the message type (53) and requested address (50).
  let msgType: u32 = 0;
  let requested: u32 = 0;
  let hasRequested = false;
  let o = b + 240;
  const end = b + payloadLen;
  while (o < end) {
    const code = <u32>load<u8>(o);
    if (code == 255) break;
    if (code == 0) { o++; continue; }
    if (o + 2 > end) { count(DROP_DHCP_MALFORMED); return; }
    const olen = <u32>load<u8>(o + 1);
    if (o + 2 + olen > end) { count(DROP_DHCP_MALFORMED); return; }
    if (code == 53 && olen == 1) msgType = load<u8>(o + 2);
    if (code == 50 && olen == 4) { requested = load<u32>(o + 2); hasRequested = true; }
    o += 2 + olen;
  }
  const guest = load<u32>(CFG_GUEST_IP4);
  let reply: u32 = 0;
  if (msgType == 1) reply = 2; // DISCOVER -> OFFER
  else if (msgType == 3) { // REQUEST -> ACK, or NAK for an address that is not the guest's
    const ciaddr = load<u32>(b + 12);
    const asked = hasRequested ? requested : ciaddr;
    reply = asked == 0 || asked == guest ? 5 : 6;
  } else if (msgType == 8) reply = 5; // INFORM -> ACK (configuration only)
  else { count(DROP_DHCP_MALFORMED); return; } // RELEASE/DECLINE or no type: nothing to answer
  const out = txReserve();
  if (!out) return;
  store<u64>(out, 0xffffffffffff); // broadcast: the client may not have its address yet
  copyMac(out + 6, CFG_GATEWAY_MAC);
  wr16(out + 12, ETH_IP4);
  const ip = out + 14;
  const udpOut = ip + 20;
  const d = udpOut + 8;
  memory.fill(d, 0, 240);
  store<u8>(d, 2);
  store<u8>(d + 1, 1);
  store<u8>(d + 2, 6);
  store<u32>(d + 4, load<u32>(b + 4)); // xid
  store<u16>(d + 10, load<u16>(b + 10)); // flags
  if (reply != 6 && msgType != 8) store<u32>(d + 16, guest); // yiaddr
  if (reply != 6) store<u32>(d + 20, load<u32>(CFG_GATEWAY_IP4)); // siaddr (0 in a NAK, RFC 2131 table 3)
  memory.copy(d + 28, b + 28, 16); // chaddr
  wr32(d + 236, DHCP_MAGIC);
  let p = d + 240;
  store<u8>(p, 53); store<u8>(p + 1, 1); store<u8>(p + 2, <u8>reply); p += 3;
  store<u8>(p, 54); store<u8>(p + 1, 4); store<u32>(p + 2, load<u32>(CFG_GATEWAY_IP4)); p += 6;
  if (reply != 6) {
    const plen = load<u32>(CFG_PREFIX_LEN4);
    const mask: u32 = plen == 0 ? 0 : 0xffffffff << (32 - plen);
    if (msgType != 8) {
      store<u8>(p, 51); store<u8>(p + 1, 4); wr32(p + 2, load<u32>(CFG_LEASE_SECS)); p += 6;
    }
    store<u8>(p, 1); store<u8>(p + 1, 4); wr32(p + 2, mask); p += 6;
    store<u8>(p, 3); store<u8>(p + 1, 4); store<u32>(p + 2, load<u32>(CFG_GATEWAY_IP4)); p += 6;
    store<u8>(p, 6); store<u8>(p + 1, 4); store<u32>(p + 2, load<u32>(CFG_DNS_IP4)); p += 6;
    store<u8>(p, 26); store<u8>(p + 1, 2); wr16(p + 2, load<u32>(CFG_MTU)); p += 4;
  }
  store<u8>(p, 255); p += 1;
  while ((p - d) < 300) { store<u8>(p, 0); p++; } // BOOTP minimum message size
  const dlen = <u32>(p - d);
  const bcast: u32 = 0xffffffff;
  store<u32>(udpOut - 4, bcast); // scratch for the broadcast address, overwritten below
  // UDP 67 -> 68
  wr16(udpOut, 67);
  wr16(udpOut + 2, 68);
  wr16(udpOut + 4, 8 + dlen);
  emitIp4(ip, PROTO_UDP, CFG_GATEWAY_IP4, udpOut - 4, 8 + dlen);
  fillL4Checksum(udpOut, 8 + dlen, 6, ip + 12, ip + 16, 4, PROTO_UDP);
  txCommit(14 + 20 + 8 + dlen);
  if (reply == 5 && msgType == 3) store<u32>(ST_DHCP_LEASED, 1);
  count(DHCP_REPLIES);
}

// ---- ICMPv6: NDP (RFC 4861), router advertisements, echo (RFC 4443) ---------------------------

@inline function isGatewayIp6(a: usize): bool {
  return eq16(a, CFG_GATEWAY_LL6) || eq16(a, CFG_GATEWAY_IP6);
}

/** ICMPv6 message of `l4len` bytes at `l4` inside the checked IPv6 header `ip`. */
export function handleIcmp6(frame: usize, ip: usize, l4: usize, l4len: u32): void {
  if (l4len < 8) { count(DROP_ICMP_MALFORMED); return; }
  const type = <u32>load<u8>(l4);
  if (type == 135) { // neighbour solicitation
    if (l4len < 24 || load<u8>(ip + 7) != 255) { count(DROP_ICMP_MALFORMED); return; }
    if (!isGatewayIp6(l4 + 8)) { count(DROP_ICMP_UNHANDLED); return; }
    const out = txReserve();
    if (!out) return;
    const rip = emitEth(out, frame + 6, ETH_IP6);
    const r = rip + 40;
    wr32(r, 0x88000000); // type 136, code 0, checksum 0
    // Router | Solicited | Override
    wr32(r + 4, 0xe0000000);
    copy16(r + 8, l4 + 8);
    store<u8>(r + 24, 2); // target link-layer address option
    store<u8>(r + 25, 1);
    copyMac(r + 26, CFG_GATEWAY_MAC);
    const src = ip + 8;
    // A solicitation from :: (duplicate address detection) is answered to all-nodes, with the
    // Solicited flag clear (RFC 4861 §7.2.4).
    if (load<u64>(src) == 0 && load<u64>(src, 8) == 0) {
      wr32(r + 4, 0xa0000000); // Router | Override
      store<u32>(out, 0x00003333); // 33:33:00:00:00:01
      store<u16>(out + 4, 0x0100);
      store<u64>(rip + 24, 0x02ff); store<u64>(rip + 32, 0x0100000000000000);
      emitIp6(rip, PROTO_ICMP6, l4 + 8, rip + 24, 32, 255);
    } else {
      emitIp6(rip, PROTO_ICMP6, l4 + 8, src, 32, 255);
    }
    fillL4Checksum(r, 32, 2, rip + 8, rip + 24, 16, PROTO_ICMP6);
    txCommit(14 + 40 + 32);
    count(NDP_REPLIES);
    return;
  }
  if (type == 133) { // router solicitation
    if (load<u8>(ip + 7) != 255) { count(DROP_ICMP_MALFORMED); return; }
    sendRouterAdvert(frame + 6, ip + 8);
    return;
  }
  if (type == 128 && isGatewayIp6(ip + 24)) { // echo request to the gateway
    const out = txReserve();
    if (!out) return;
    const rip = emitEth(out, frame + 6, ETH_IP6);
    const r = emitIp6(rip, PROTO_ICMP6, ip + 24, ip + 8, l4len, 64);
    memory.copy(r, l4, l4len);
    store<u8>(r, 129);
    fillL4Checksum(r, l4len, 2, rip + 8, rip + 24, 16, PROTO_ICMP6);
    txCommit(14 + 40 + l4len);
    count(ICMP_ECHO_REPLIES);
    return;
  }
  count(DROP_ICMP_UNHANDLED);
}

/** A router advertisement to `dstMac`/`dstIp` (all-nodes when dstIp is ::). */
function sendRouterAdvert(dstMac: usize, dstIp: usize): void {
  const out = txReserve();
  if (!out) return;
  const rip = emitEth(out, dstMac, ETH_IP6);
  const r = rip + 40;
  const toAll = load<u64>(dstIp) == 0 && load<u64>(dstIp, 8) == 0;
  if (toAll) {
    store<u32>(out, 0x00003333); // 33:33:00:00:00:01, the all-nodes group
    store<u16>(out + 4, 0x0100);
    store<u64>(rip + 24, 0x02ff); store<u64>(rip + 32, 0x0100000000000000);
  } else {
    copy16(rip + 24, dstIp);
  }
  wr32(r, 0x86000000); // type 134
  store<u8>(r + 4, 64); // current hop limit
  store<u8>(r + 5, 0); // flags: addresses by SLAAC, no DHCPv6
  wr16(r + 6, 1800); // router lifetime (s)
  wr32(r + 8, 0); // reachable time
  wr32(r + 12, 0); // retrans timer
  let o = r + 16;
  store<u8>(o, 1); store<u8>(o + 1, 1); copyMac(o + 2, CFG_GATEWAY_MAC); o += 8; // source LL
  store<u8>(o, 5); store<u8>(o + 1, 1); wr16(o + 2, 0); wr32(o + 4, load<u32>(CFG_MTU)); o += 8; // MTU
  store<u8>(o, 3); store<u8>(o + 1, 4); store<u8>(o + 2, 64); store<u8>(o + 3, 0xc0); // prefix: L|A
  wr32(o + 4, 86400); wr32(o + 8, 14400); wr32(o + 12, 0); copy16(o + 16, CFG_PREFIX6); o += 32;
  store<u8>(o, 25); store<u8>(o + 1, 3); wr16(o + 2, 0); wr32(o + 4, 1800); // RDNSS (RFC 8106)
  copy16(o + 8, CFG_GATEWAY_IP6); o += 24;
  const l4len = <u32>(o - r);
  emitIp6(rip, PROTO_ICMP6, CFG_GATEWAY_LL6, rip + 24, l4len, 255);
  // emitIp6 copied dst from rip+24 onto itself: harmless.
  fillL4Checksum(r, l4len, 2, rip + 8, rip + 24, 16, PROTO_ICMP6);
  txCommit(14 + 40 + l4len);
  count(ROUTER_ADVERTS);
}
