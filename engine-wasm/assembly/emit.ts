// emit.ts — queueing frames toward the guest (TX ring) and work for the host (ops), plus the
// header writers every reply shares. Nothing here allocates; a full ring is reported to the
// caller (return 0 / false), who counts the drop or leaves the input queued.

import {
  TX_CTRL, TX_DESC_BASE, TX_BUF_BASE, TX_SLOTS, DESC_LEN, DESC_FLAGS, DESC_TOKEN, DESC_AUX, ST_TX_NEXT, ST_IP_ID,
  ST_TX_CSUM_LEFT_OK, TX_F_CSUM_LEFT, TX_F_EXTERNAL, ST_TX_LENT, ST_TX_LENT_POS,
  CFG_GATEWAY_MAC, COUNTERS_BASE, OPS_BASE, OP_BYTES, OPS_MAX, ST_OPS_COUNT, OP_KIND, OP_FLOW,
  OP_DATA, OP_LEN, OP_FAMILY, OP_PORT, OP_ADDR, OP_ORIG,
} from "./layout";
import { ringHead, ringPublishTail, descAt, bufAt } from "./ring";
import { wr16, wr32, copyMac, copy16 } from "./wire/bytes";
import { PROTO_UDP } from "./wire/numbers";
import { checksum, sumLE, pseudoSum, finish } from "./wire/checksum";
import { TX_FRAMES, TX_BYTES, DROP_TX_RING_FULL, DROP_HOST_OPS_FULL } from "./counters";

@inline export function count(idx: i32): void {
  const p = COUNTERS_BASE + (<usize>idx << 3);
  store<u64>(p, load<u64>(p) + 1);
}
@inline export function countN(idx: i32, n: u64): void {
  const p = COUNTERS_BASE + (<usize>idx << 3);
  store<u64>(p, load<u64>(p) + n);
}

/** A free TX buffer, or 0 when the ring is full (then DROP_TX_RING_FULL is counted). */
export function txReserve(): usize {
  const next = load<u32>(ST_TX_NEXT);
  if (next - ringHead(TX_CTRL) >= <u32>TX_SLOTS) {
    count(DROP_TX_RING_FULL);
    return 0;
  }
  return bufAt(TX_BUF_BASE, TX_SLOTS, next);
}
/** True when a TX buffer is free (without counting anything). */
@inline export function txHasRoom(): bool {
  return load<u32>(ST_TX_NEXT) - ringHead(TX_CTRL) < <u32>TX_SLOTS;
}
/**
 * Commit the buffer returned by txReserve with `len` frame bytes. `csumStart`: where the summed
 * part of a frame whose TCP/UDP checksum was left to the link begins (txL4Checksum), and
 * `csumOff` the field's offset from there; 0 for a frame that is complete.
 */
export function txCommit(len: u32, csumStart: u32 = 0, csumOff: u32 = 0): void {
  txDescribe(len, csumStart ? TX_F_CSUM_LEFT : 0, csumStart | (csumOff << 16), 0);
}

/**
 * Commit a frame built in place at `frame` (in the inbound slot whose bytes it carries, layout.ts
 * IN_TCP_DATA_AT) instead of in a TX buffer; the caller checked txHasRoom(). The slot is lent to
 * the frame until the link takes it: ST_TX_LENT says so for the inbound event being handled.
 */
export function txCommitAt(frame: usize, len: u32, csumStart: u32, csumOff: u32): void {
  store<u32>(ST_TX_LENT, 1);
  store<u32>(ST_TX_LENT_POS, load<u32>(ST_TX_NEXT));
  txDescribe(len, TX_F_EXTERNAL | (csumStart ? TX_F_CSUM_LEFT : 0), csumStart | (csumOff << 16), <u32>frame);
}

function txDescribe(len: u32, flags: u32, token: u32, aux: u32): void {
  const next = load<u32>(ST_TX_NEXT);
  const d = descAt(TX_DESC_BASE, TX_SLOTS, next);
  store<u32>(d, len, DESC_LEN);
  store<u32>(d, flags, DESC_FLAGS);
  store<u32>(d, token, DESC_TOKEN);
  store<u32>(d, aux, DESC_AUX);
  store<u32>(ST_TX_NEXT, next + 1);
  count(TX_FRAMES);
  countN(TX_BYTES, len);
  // Publish in batches of 32 so a consumer on another thread can start early.
  if (((next + 1) & 31) == 0) ringPublishTail(TX_CTRL, next + 1);
}
export function txPublish(): void {
  ringPublishTail(TX_CTRL, load<u32>(ST_TX_NEXT));
}

/** Queue a host operation. False (and DROP_HOST_OPS_FULL) when the op area is full. */
export function opPush(kind: u32, flow: u32, data: usize, len: u32, family: u32, port: u32, addr: usize, orig: usize = 0): bool {
  const n = load<u32>(ST_OPS_COUNT);
  if (n >= <u32>OPS_MAX) {
    count(DROP_HOST_OPS_FULL);
    return false;
  }
  const op = OPS_BASE + <usize>n * OP_BYTES;
  store<u32>(op, kind, OP_KIND);
  store<u32>(op, flow, OP_FLOW);
  store<u32>(op, <u32>data, OP_DATA);
  store<u32>(op, len, OP_LEN);
  store<u32>(op, family, OP_FAMILY);
  store<u32>(op, port, OP_PORT);
  store<u32>(op, <u32>addr, OP_ADDR);
  store<u32>(op, <u32>orig, OP_ORIG);
  store<u32>(ST_OPS_COUNT, n + 1);
  return true;
}

/** Ethernet header from the gateway to `dstMac`. Returns the L3 offset. */
@inline export function emitEth(frame: usize, dstMac: usize, etherType: u32): usize {
  copyMac(frame, dstMac);
  copyMac(frame + 6, CFG_GATEWAY_MAC);
  wr16(frame + 12, etherType);
  return frame + 14;
}

/** IPv4 header (20 bytes, DF, TTL 64) with its checksum; src/dst point at 4-byte addresses. */
export function emitIp4(ip: usize, proto: u32, src: usize, dst: usize, payloadLen: u32): usize {
  store<u8>(ip, 0x45);
  store<u8>(ip + 1, 0);
  wr16(ip + 2, 20 + payloadLen);
  const id = load<u32>(ST_IP_ID);
  store<u32>(ST_IP_ID, id + 1);
  wr16(ip + 4, id & 0xffff);
  wr16(ip + 6, 0x4000);
  store<u8>(ip + 8, 64);
  store<u8>(ip + 9, <u8>proto);
  store<u16>(ip + 10, 0);
  store<u32>(ip + 12, load<u32>(src));
  store<u32>(ip + 16, load<u32>(dst));
  wr16(ip + 10, checksum(ip, 20));
  return ip + 20;
}

/** IPv6 header (40 bytes) with the given hop limit. */
export function emitIp6(ip: usize, nextHeader: u32, src: usize, dst: usize, payloadLen: u32, hopLimit: u32): usize {
  wr32(ip, 0x60000000);
  wr16(ip + 4, payloadLen);
  store<u8>(ip + 6, <u8>nextHeader);
  store<u8>(ip + 7, <u8>hopLimit);
  copy16(ip + 8, src);
  copy16(ip + 24, dst);
  return ip + 40;
}

/**
 * Fill the checksum of an L4 segment (UDP: offset 6, TCP: 16, ICMPv6: 2) of `l4len` bytes at
 * `l4` under the pseudo-header of (src, dst). UDP's all-zero result is sent as 0xffff.
 */
export function fillL4Checksum(l4: usize, l4len: u32, csumOff: usize, src: usize, dst: usize, addrLen: usize, proto: u32): void {
  store<u16>(l4 + csumOff, 0);
  let c = finish(sumLE(l4, l4len, pseudoSum(src, dst, addrLen, proto, l4len)));
  if (c == 0 && proto == PROTO_UDP) c = 0xffff;
  wr16(l4 + csumOff, c);
}

/**
 * The TCP/UDP checksum of a frame to the guest (arguments as fillL4Checksum's). Where the link
 * takes it so (ST_TX_CSUM_LEFT_OK), it is left as a kernel leaves it for its NIC, the
 * pseudo-header's sum in the field, and nothing here reads the segment's bytes: returns true, and
 * the frame is to be committed with its csumStart. Else filled here; false.
 */
export function txL4Checksum(l4: usize, l4len: u32, csumOff: usize, src: usize, dst: usize, addrLen: usize, proto: u32): bool {
  if (!load<u32>(ST_TX_CSUM_LEFT_OK)) {
    fillL4Checksum(l4, l4len, csumOff, src, dst, addrLen, proto);
    return false;
  }
  wr16(l4 + csumOff, ~finish(pseudoSum(src, dst, addrLen, proto, l4len)) & 0xffff);
  return true;
}

/** Verify an L4 checksum under its pseudo-header: true when the segment sums to zero. */
@inline export function l4ChecksumOk(l4: usize, l4len: u32, src: usize, dst: usize, addrLen: usize, proto: u32): bool {
  return finish(sumLE(l4, l4len, pseudoSum(src, dst, addrLen, proto, l4len))) == 0;
}
