// tcp.ts — TCP termination: every guest connection ends here and is re-originated from a host
// socket (DESIGN §5).
//
// Read first: RFC 9293 (TCP), RFC 7323 §2 (window scale), RFC 6298 (retransmission timer),
// RFC 5681 §3.2 (fast retransmit). This is a deliberately small TCP: it talks only to one guest
// over a virtual link, so toward the guest it uses go-back-N retransmission on a timeout, and on
// three duplicate ACKs resends only the hole the guest's SACK blocks show (one segment without
// them) until its ACK moves (RFC 6675 in spirit, one hole at a time); no timestamps. From
// the guest, segments that arrive ahead of a gap (a frame lost or reordered on the way) are held
// and SACKed (flow/tcp-reassembly.ts, RFC 2018), so the guest resends only what is missing.
//
// Theory of operation
// The engine plays the server side toward the guest and lets the host kernel's TCP do the real
// work toward the world. The two halves meet in the host socket, driven through host operations
// (engine -> native-vmm) and inbound events (native-vmm -> engine):
//
//   guest SYN            -> OPK_TCP_CONNECT            (dial first: the guest hears nothing yet)
//   INK_TCP_CONNECTED    -> SYN-ACK to the guest       (refused: RST; other failures: silence)
//   guest data at rcv_wr -> OPK_TCP_SEND               (write(2) straight from the RX slot)
//   INK_TCP_SENT n       -> ACK n bytes to the guest   (a short write ACKs only what was taken:
//                                                       the guest retransmits the rest)
//   guest ACK            -> OPK_TCP_ACKED, OPK_TCP_CREDIT
//   INK_TCP_DATA         -> a segment to the guest
//
// Connections from a host peer to a published port (flow/inbound.ts) are opened the other way
// round: native-vmm has accepted the peer and holds its socket; the engine sends the guest a SYN
// (SYN_SENT, retransmitted on the RTO like a SYN-ACK), and the guest's SYN-ACK makes the flow
// ESTABLISHED, from where everything above applies unchanged. The guest's RST to the SYN (nothing
// listens on the port) resets the peer at once.
//
// Host -> guest bytes are never copied into a buffer of ours: native-vmm reads them with
// MSG_PEEK (SO_PEEK_OFF), so they stay in the kernel's receive queue until the guest ACKs them
// (OPK_TCP_ACKED discards them); the peek lands in an inbound slot, and the segment carrying
// them to the guest is built around them there (emitSegment, layout.ts IN_TCP_DATA_AT). Retransmission rewinds the peek offset to snd_una (go-back-N).
// native-vmm peeks only up to the credit the engine grants (snd_una + the guest's window), so
// the guest's window is the only buffer on that side. Toward the host, the window offered to the
// guest is the socket's free send space (reported with every INK_TCP_SENT / INK_TCP_WRITABLE):
// backpressure both ways, and no unbounded buffering anywhere.
//
// Sequence bookkeeping (all u32, compared modulo 2^32):
//   snd_una <= snd_nxt          host->guest: oldest unacknowledged, next to send
//   rcv_nxt <= rcv_wr           guest->host: confirmed written to the socket, issued to write
// Inbound data events carry their sequence number and the peek epoch (the number of rewinds
// native-vmm had executed when it peeked): an event of an older epoch than the engine's count of
// rewinds issued, or that does not start at snd_nxt, predates a rewind and is ignored, so a
// rewind can never reorder the stream. (The sequence number alone is not enough: data peeked
// before a rewind and still queued behind a full TX ring can start exactly at the rewound
// snd_nxt, be taken, and leave native-vmm rewinding to a point the engine has passed.)
//
// Closing: the guest's FIN becomes OPK_TCP_SHUTDOWN (only once every earlier byte is written;
// INK_TCP_SHUT_DONE then ACKs the FIN); the host's EOF becomes our FIN once every byte before it
// was sent. When both FINs are acknowledged the socket is closed and the flow lingers 2 s
// (TIME_WAIT's job: re-ACK a retransmitted FIN), then is removed. A RST either way resets the
// other side and removes the flow at once.
//
// Timers: every state in which something is owed has one, run from engineTick (100 ms), so
// every flow leaves the table in bounded time on every path:
//   state                          timer                              on expiry
//   DIALING                        30 s dial timeout                  silence to the guest, removed
//   SYN_RCVD                       SYN-ACK retransmission (RTO)       10 unanswered: RST, removed
//   SYN_SENT (inbound)             SYN retransmission (RTO)           10 unanswered: peer reset, removed
//   ESTABLISHED, data/FIN in flight retransmission (RTO 200 ms..8 s)  go-back-N; 10 unanswered: RST both
//   ESTABLISHED, guest window 0    persist (200 ms doubling to 5 s)   zero-window probe (RFC 9293
//                                                                     §3.8.6.1); 10 unanswered: RST both
//   ESTABLISHED, idle              keepalive toward the guest: 30 s   probe every 5 s; 3 unanswered:
//                                  idle (10 s once the guest sent     RST both. A guest socket that is
//                                  its FIN)                           gone answers the probe with RST
//                                                                     (FIN_WAIT_2 orphans, lost RSTs)
//   LINGER                         2 s                                removed
//   ESTABLISHED, guest data written delayed ACK: 40 ms (the worker's    a pure ACK, unless a segment
//   and not yet acknowledged       timer at ST_ACK_DUE; the tick too) carried it first
//   ESTABLISHED, our window under  every tick, once a segment fits    a window update (the one sent
//   a segment, or an ACK lost to                                      when it reopened can be lost)
//   a full TX ring
//   ESTABLISHED, held back by a    the limits' timer (ST_LIMIT_DUE,   a window update; more credit
//   rate limit (FL_PACED)          tcpLimitWake; the tick too)
//   DIALING, SYN held by the       the limits' timer, when the rate   the dial (the 30 s dial timeout
//   connection rate (FL_CONN_HELD) allows                             runs from the SYN)
// Probes carry snd_una - 1 and no data: an old sequence number that the guest must answer with
// an ACK (its current window) or, if the connection is gone, a RST. Any segment from the guest
// answers an outstanding probe. Peek credit that could not be granted (host-op list full) is
// granted again from the tick, so a lost grant cannot stall a flow either.
//
// Rate limits (limits.ts) shape both halves without dropping a byte: the window offered to the
// guest is at most the egress tokens (advWindow), the peek credit at most the ingress tokens
// (grantCredit), and a flow held back that way is resumed by engineLimitWake (tcpLimitWake) when
// the tokens come — a window update, more credit — with the tick as a safety net. A SYN over the
// connection rate waits in DIALING, not dialled (FL_CONN_HELD), until tcpLimitWake dials it.

import {
  SACK_SCRATCH, ST_ACK_DUE, ST_DELACK_COUNT, DELACK_MAX, DELACK_LIST, CFG_GUEST_MAC, CFG_MTU, CFG_MAX_TCP_FLOWS, ST_TCP_LIVE, ST_NOW_MS,
  OPK_TCP_CONNECT, OPK_TCP_SEND, OPK_TCP_CREDIT, OPK_TCP_ACKED, OPK_TCP_REWIND, OPK_TCP_SHUTDOWN,
  OPK_TCP_ABORT, OPK_CLOSE, OPK_ACCEPT, INK_TCP_CONNECTED, INK_TCP_DATA, INK_TCP_SENT, INK_TCP_EOF,
  INK_TCP_RESET, INK_TCP_SHUT_DONE, INK_TCP_WRITABLE, INK_OPEN_FAILED, INK_PARTIAL, INK_EPOCH_SHIFT,
  LIM_EGRESS, LIM_INGRESS, LIM_CONN, ST_LIMIT_DUE, ST_PACED_COUNT, PACED_LIST, IN_TCP_DATA_AT,
} from "../layout";
import {
  TCP_FLOWS_OPENED, TCP_CONNECTED, TCP_REFUSED, TCP_DIAL_FAILED, TCP_FLOWS_CLOSED,
  TCP_RETRANSMITS, TCP_BYTES_TO_HOST, TCP_BYTES_TO_GUEST, TCP_HOST_RESETS, TCP_GUEST_RESETS,
  DROP_FLOW_LIMIT, DROP_FLOW_TABLE_FULL, DROP_TCP_OUT_OF_ORDER, DROP_TCP_OUT_OF_WINDOW, TCP_PROBES,
  TCP_GUEST_TIMEOUTS, TCP_STALE_DATA, TCP_INBOUND_CLOSED_PORT, TCP_OOO_QUEUED, TCP_OOO_FILLED, TCP_DELAYED_ACKS,
  DROP_RATE_CONN, RATE_EGRESS_PACED, RATE_INGRESS_PACED, RATE_CONN_DELAYED, DROP_TX_RING_FULL,
} from "../counters";
import {
  limited, bucketLevel, charge, readyAt, wakeAt, pacedPush, connQueueEmpty, connQueueFull, connQueuePush,
  connQueuePeek, connQueuePop,
} from "../limits";
import { oooHold, oooFirst, oooPop, oooClear, oooData, oooSeq, oooLen, oooFin, oooSackBlocks, T_OOO_COUNT } from "./tcp-reassembly";
import {
  flowInsert, flowTableFull, flowRemove, flowRecord, F_STATE, F_LAST_MS, F_DIAL_ADDR, F_DIAL_PORT, F_PKTS_OUT,
  F_PKTS_IN, F_BYTES_OUT, F_BYTES_IN, F_ROUTE, ROUTE_SERVICE, flowFromPeer, flowIndexOf,
} from "./table";
import { rd16, rd32, wr16, wr32, familyOf } from "../wire/bytes";
import { ETH_IP4, ETH_IP6, PROTO_TCP, TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK } from "../wire/numbers";
import { auditSecret } from "../policy/admit";
import { outboundAdmit, outboundRecord } from "./outbound";
import { secretsActive, secretInStream, secretOfForm } from "../policy/placeholder-scan";
import { count, countN, opPush, txReserve, txHasRoom, txCommit, txCommitAt, emitEth, emitIp4, emitIp6, txL4Checksum } from "../emit";

// F_STATE values for TCP flows
export const TS_DIALING: u32 = 2; // SYN received, host socket connecting
export const TS_SYN_RCVD: u32 = 3; // SYN-ACK sent
export const TS_ESTABLISHED: u32 = 4; // data phase, including half-closed either way
export const TS_LINGER: u32 = 5; // both FINs acknowledged, socket closed; reaped after LINGER_MS
export const TS_SYN_SENT: u32 = 6; // inbound: SYN sent to the guest, the host peer already accepted

// TCP state in the flow record (flow/table.ts reserves 128.. for protocol state)
const T_ISS = 128;
const T_IRS = 132;
const T_SND_UNA = 136;
const T_SND_NXT = 140;
const T_SND_WND = 144; // the guest's window, bytes (scaled)
const T_RCV_NXT = 148;
const T_RCV_WR = 152;
const T_SPACE = 156; // host socket's free send space, bytes
const T_GUEST_MSS = 160; // u32: segment size toward the guest
const T_GUEST_WS = 164; // u8 guest's window shift; u8 ours (0 when the guest did not offer scaling)
const T_OUR_WS = 165;
const T_GRANTED = 168; // peek credit granted up to this sequence number
const T_FLAGS = 172;
const T_FIN_SEQ = 176; // sequence number of our FIN
const T_DUPACKS = 180;
const T_RTO_MS = 184;
const T_RETRIES = 188;
const T_TIMER_AT = 192; // f64: retransmission / SYN-ACK / linger deadline (0 = not armed)
const T_SINCE = 200; // f64: when the current state began
const T_SND_MAX = 208; // highest sequence number sent (snd_nxt falls back below it on a rewind)
const T_PROBES = 212; // u32: probes sent (persist or keepalive) since the guest last spoke
const T_PROBE_AT = 216; // f64: next persist / keepalive probe (0 = to be computed by the tick)
const T_PERSIST_MS = 224; // u32: persist interval, doubling while the guest's window stays shut
const T_EPOCH = 228; // u8: OPK_TCP_REWINDs issued (mod 256): the peek epoch current data must carry
const T_ACK_SEGS = 229; // u8: guest segments written since our last ACK
const T_ACK_AT = 248; // f64: when a delayed ACK is due (FL_ACK_DELAYED)

const FL_SHUT_PENDING: u32 = 1; // OPK_TCP_SHUTDOWN issued for the guest's FIN
const FL_GUEST_FIN: u32 = 2; // guest's FIN written through (rcv_nxt counts it)
const FL_HOST_EOF: u32 = 4;
const FL_FIN_SENT: u32 = 8;
const FL_FIN_ACKED: u32 = 16;
const FL_WND_SHUT: u32 = 32; // the last segment offered the guest less than a segment: an update is owed once it opens
const FL_ACK_OWED: u32 = 64; // an ACK (acknowledgement, window update) found the TX ring full
const FL_SACK_OK: u32 = 128; // the guest offered SACK-permitted: held segments are reported in SACK blocks
const FL_RECOVERY: u32 = 256; // fast recovery: only the hole before T_RECOVER_END is resent until the guest's ACK moves
const T_RECOVER_END = 244; // u32: in fast recovery, where the hole the guest reported ends (its first SACK block)
const FL_ACK_DELAYED: u32 = 512; // an ACK is owed and held back (on DELACK_LIST) until T_ACK_AT or a segment carries it
const DELACK_MS: f64 = 40; // RFC 9293 §3.8.6.3 allows 500; Linux waits 40 at least
const FL_PACED: u32 = 1024; // on PACED_LIST: held back by a rate limit (limits.ts) until tcpLimitWake
const FL_CONN_HELD: u32 = 2048; // DIALING, not dialled: the SYN waits for the connection rate (limits.ts)

const OUR_WS: u32 = 7; // window shift we offer: windows up to 8 MiB
const INITIAL_SPACE: u32 = 262144; // send space assumed until the socket reports its own
const RTO_MIN_MS: u32 = 200;
const RTO_MAX_MS: u32 = 8000;
const MAX_RETRIES: u32 = 10; // consecutive timeouts before both sides are reset
const DIAL_TIMEOUT_MS: f64 = 30000;
const LINGER_MS: f64 = 2000;
const PERSIST_MAX_MS: u32 = 5000;
const KEEPALIVE_IDLE_MS: f64 = 30000;
const KEEPALIVE_HALF_CLOSED_MS: f64 = 10000; // the guest has sent its FIN: probe sooner
const KEEPALIVE_INTERVAL_MS: f64 = 5000;
const KEEPALIVE_PROBES: u32 = 3;
const ECONNREFUSED: u32 = 111;

@inline function seqLt(a: u32, b: u32): bool { return <i32>(a - b) < 0; }
@inline function seqLe(a: u32, b: u32): bool { return <i32>(a - b) <= 0; }
@inline function now(): f64 { return load<f64>(ST_NOW_MS); }

/** What the host socket can take: its free space less what is written-but-unconfirmed. */
function spaceWindow(rec: usize): u32 {
  const inFlight = load<u32>(rec, T_RCV_WR) - load<u32>(rec, T_RCV_NXT);
  const space = load<u32>(rec, T_SPACE);
  return space > inFlight ? space - inFlight : 0;
}

/** Bytes the guest may send us: what the socket can take, and no more than the egress tokens. */
function advWindow(rec: usize): u32 {
  let w = spaceWindow(rec);
  if (limited(LIM_EGRESS)) {
    const t = bucketLevel(LIM_EGRESS);
    if (t < <f64>w) w = t > 0 ? <u32>t : 0;
  }
  const max: u32 = load<u8>(rec, T_OUR_WS) ? 0xffff << OUR_WS : 0xffff;
  return w > max ? max : w;
}

/**
 * Tokens the egress bucket must hold before a window update is worth sending: a segment, rounded
 * up to the window's granularity (a scaled window is said in units of 1 << our shift).
 */
@inline function egressNeed(rec: usize): f64 {
  const ws = <u32>load<u8>(rec, T_OUR_WS);
  return <f64>(((load<u32>(rec, T_GUEST_MSS) + (<u32>1 << ws) - 1) >> ws) << ws);
}

/**
 * Flow `rec` waits for bucket `b` to hold `need` tokens: listed for tcpLimitWake (once) and
 * counted under `counter`. A full list leaves it to the tick.
 */
function pace(rec: usize, b: usize, need: f64, counter: i32): void {
  wakeAt(readyAt(b, need));
  const f = load<u32>(rec, T_FLAGS);
  if (f & FL_PACED) return;
  count(counter);
  if (pacedPush(flowIndexOf(rec))) store<u32>(rec, f | FL_PACED, T_FLAGS);
}

/**
 * Emit a segment to the guest: `flags`, sequence `seq`, `dlen` bytes at `data`; ACK fields from
 * the flow's receive side. SYN segments carry MSS and window-scale options. False when the TX
 * ring is full. Data is host bytes in an inbound slot, IN_TCP_DATA_AT into it: the frame is built
 * around them, its headers in the room before them (txCommitAt), and they are not copied.
 */
function emitSegment(rec: usize, flags: u32, seq: u32, data: usize, dlen: u32): bool {
  if (dlen && !txHasRoom()) {
    count(DROP_TX_RING_FULL);
    return false;
  }
  const v4 = load<u8>(rec, 1) == 4;
  const syn = (flags & TCP_SYN) != 0;
  const sackOk = (load<u32>(rec, T_FLAGS) & FL_SACK_OK) != 0;
  // SACK-permitted in our SYN (an inbound connection: offered), in a SYN-ACK only if the guest
  // offered it; SACK blocks in any other segment while segments are held beyond a gap.
  const synSack = syn && (sackOk || !(flags & TCP_ACK));
  // (Options count against the segment size: a full data segment carries no blocks, or its frame
  // would outgrow the guest's MTU and the TX slot.)
  const segMax = load<u32>(rec, T_GUEST_MSS);
  const room: u32 = dlen == 0 ? 4 : dlen + 12 <= segMax ? min<u32>(4, (segMax - dlen - 4) >> 3) : 0;
  const blocks: u32 = !syn && sackOk && room && !(flags & TCP_RST) && load<u32>(rec, T_OOO_COUNT) ? oooSackBlocks(rec, SACK_SCRATCH, room) : 0;
  const hlen: u32 = syn ? (synSack ? 32 : 28) : blocks ? 24 + 8 * blocks : 20;
  const out = dlen ? data - hlen - (v4 ? 20 : 40) - 14 : txReserve();
  if (!out) return false;
  const ip = emitEth(out, CFG_GUEST_MAC, v4 ? ETH_IP4 : ETH_IP6);
  const t = v4 ? emitIp4(ip, PROTO_TCP, rec + 36, rec + 20, hlen + dlen) : emitIp6(ip, PROTO_TCP, rec + 24, rec + 8, hlen + dlen, 64);
  wr16(t, <u32>load<u16>(rec, 6));
  wr16(t + 2, <u32>load<u16>(rec, 4));
  wr32(t + 4, seq);
  wr32(t + 8, (flags & TCP_ACK) ? load<u32>(rec, T_RCV_NXT) : 0);
  store<u8>(t + 12, <u8>((hlen >> 2) << 4));
  store<u8>(t + 13, <u8>flags);
  const w = advWindow(rec);
  const field = syn ? (w > 0xffff ? 0xffff : w) : w >> load<u8>(rec, T_OUR_WS);
  wr16(t + 14, field);
  // Less than a segment offered: a bulk sender waits (sender-side silly-window avoidance) on its
  // probe timer, which backs off to minutes; the tick sends the update once a segment fits.
  let f = load<u32>(rec, T_FLAGS);
  const small = !syn && (<u32>field << load<u8>(rec, T_OUR_WS)) < load<u32>(rec, T_GUEST_MSS);
  if (flags & TCP_ACK) { f &= ~FL_ACK_DELAYED; store<u8>(rec, 0, T_ACK_SEGS); } // this segment carries the ACK owed
  store<u32>(rec, small ? f | FL_WND_SHUT : f & ~FL_WND_SHUT, T_FLAGS);
  // Held under a segment by the egress limit, not by the socket: reopened when the tokens come.
  if (small && limited(LIM_EGRESS) && spaceWindow(rec) >= load<u32>(rec, T_GUEST_MSS)) pace(rec, LIM_EGRESS, egressNeed(rec), RATE_EGRESS_PACED);
  store<u32>(t + 16, 0); // checksum, urgent pointer
  if (syn) {
    const mss = load<u32>(CFG_MTU) - (v4 ? 40 : 60);
    store<u8>(t + 20, 2); store<u8>(t + 21, 4); wr16(t + 22, mss > 0xffff ? 0xffff : mss);
    if (load<u8>(rec, T_OUR_WS)) { store<u8>(t + 24, 1); store<u8>(t + 25, 3); store<u8>(t + 26, 3); store<u8>(t + 27, <u8>OUR_WS); }
    else store<u32>(t + 24, 0x01010101); // NOPs
    if (synSack) store<u32>(t + 28, 0x02040101); // NOP, NOP, SACK-permitted (kind 4, length 2)
  } else if (blocks) {
    store<u32>(t + 20, 0x00050101 | ((2 + 8 * blocks) << 24)); // NOP, NOP, SACK (kind 5), length
    memory.copy(t + 24, SACK_SCRATCH, 8 * blocks);
  }
  const left = v4 ? txL4Checksum(t, hlen + dlen, 16, ip + 12, ip + 16, 4, PROTO_TCP) : txL4Checksum(t, hlen + dlen, 16, ip + 8, ip + 24, 16, PROTO_TCP);
  const csumAt: u32 = left ? <u32>(t - out) : 0;
  if (dlen) txCommitAt(out, <u32>(t - out) + hlen + dlen, csumAt, 16);
  else txCommit(<u32>(t - out) + hlen, csumAt, 16);
  return true;
}

/**
 * A pure ACK (and window update). It carries the highest sequence number sent, not snd_nxt: after
 * a go-back-N rewind snd_nxt is behind what the guest has seen, and a receiver takes the window
 * of a segment only if its sequence number is not older than the last one it took a window from
 * (RFC 9293 §3.10.7.4, SND.WL1): a window update from behind would be ignored, and a guest that
 * last heard "window 0" would wait for its own persist timer, backing off to minutes.
 */
@inline function emitAck(rec: usize): bool {
  if (emitSegment(rec, TCP_ACK, load<u32>(rec, T_SND_MAX), 0, 0)) {
    store<u32>(rec, load<u32>(rec, T_FLAGS) & ~FL_ACK_OWED, T_FLAGS);
    return true;
  }
  // Lost to a full TX ring: the tick sends it. A guest whose data is all written and that waits
  // for this ACK (or the window it carries) would otherwise sit on its own timers.
  store<u32>(rec, load<u32>(rec, T_FLAGS) | FL_ACK_OWED, T_FLAGS);
  return false;
}

/**
 * Acknowledge guest data that was just written (RFC 9293 §3.8.6.3): at once when two segments are
 * unacknowledged, else within DELACK_MS, so that the next segment we send anyway (an echo, our
 * FIN) carries it instead of a frame of its own (each one an interrupt in a VM guest).
 */
function ackSoon(idx: u32, rec: usize): void {
  const segs = <u32>load<u8>(rec, T_ACK_SEGS) + 1;
  const f = load<u32>(rec, T_FLAGS);
  if (segs >= 2 || (f & FL_ACK_OWED)) { emitAck(rec); return; }
  store<u8>(rec, <u8>segs, T_ACK_SEGS);
  if (f & FL_ACK_DELAYED) return;
  const n = load<u32>(ST_DELACK_COUNT);
  if (n >= <u32>DELACK_MAX) { emitAck(rec); return; } // the list is full: no delay
  store<u32>(DELACK_LIST + (<usize>n << 2), idx);
  store<u32>(ST_DELACK_COUNT, n + 1);
  const due = now() + DELACK_MS;
  store<f64>(rec, due, T_ACK_AT);
  store<u32>(rec, f | FL_ACK_DELAYED, T_FLAGS);
  const first = load<f64>(ST_ACK_DUE);
  if (first == 0 || due < first) store<f64>(ST_ACK_DUE, due);
}

/**
 * Send the delayed ACKs due by `t` (the worker calls this at ST_ACK_DUE; the tick also does, as a
 * safety net). Returns how many went out.
 */
export function tcpFlushAcks(t: f64): i32 {
  store<f64>(ST_NOW_MS, t);
  const n = load<u32>(ST_DELACK_COUNT);
  let keep: u32 = 0;
  let sent: i32 = 0;
  let next: f64 = 0;
  for (let i: u32 = 0; i < n; i++) {
    const idx = load<u32>(DELACK_LIST + (<usize>i << 2));
    const rec = flowRecord(idx);
    // Gone, reused, or already carried by a segment: nothing owed by this entry.
    if (load<u8>(rec) != PROTO_TCP || !(load<u32>(rec, T_FLAGS) & FL_ACK_DELAYED)) continue;
    const due = load<f64>(rec, T_ACK_AT);
    if (due <= t) {
      if (emitAck(rec)) { count(TCP_DELAYED_ACKS); sent++; continue; }
      store<u32>(rec, load<u32>(rec, T_FLAGS) & ~FL_ACK_DELAYED, T_FLAGS); // FL_ACK_OWED: the tick retries
      continue;
    }
    store<u32>(DELACK_LIST + (<usize>keep << 2), idx);
    keep++;
    if (next == 0 || due < next) next = due;
  }
  store<u32>(ST_DELACK_COUNT, keep);
  store<f64>(ST_ACK_DUE, next);
  return sent;
}

/** A RST to the guest for a flow, then the flow is gone (the host socket closed or aborted). */
function resetBoth(idx: u32, rec: usize, abortHost: bool): void {
  emitSegment(rec, TCP_RST | TCP_ACK, load<u32>(rec, T_SND_NXT), 0, 0);
  tcpRemove(idx, abortHost ? OPK_TCP_ABORT : OPK_CLOSE);
}

/** Remove a TCP flow; `closeOp` (0 = none) is queued for its host socket first. */
function tcpRemove(idx: u32, closeOp: u32): void {
  oooClear(flowRecord(idx));
  if (closeOp) opPush(closeOp, idx, 0, 0, 0, 0, 0);
  if (load<u32>(flowRecord(idx), F_STATE) != TS_LINGER) store<u32>(ST_TCP_LIVE, load<u32>(ST_TCP_LIVE) - 1);
  count(TCP_FLOWS_CLOSED);
  flowRemove(idx);
}

@inline function armTimer(rec: usize): void {
  store<f64>(rec, now() + <f64>load<u32>(rec, T_RTO_MS), T_TIMER_AT);
}

/**
 * Grant native-vmm credit to peek host data up to snd_una + the guest's window — and, under an
 * ingress limit, no further past what was sent than the tokens reach (they are taken as data is
 * sent), a segment at a time at least; short of that the flow waits for tcpLimitWake.
 */
function grantCredit(idx: u32, rec: usize): void {
  const granted = load<u32>(rec, T_GRANTED);
  let upto = load<u32>(rec, T_SND_UNA) + load<u32>(rec, T_SND_WND);
  if (!seqLt(granted, upto)) return;
  if (limited(LIM_INGRESS)) {
    const offered = max<i32>(<i32>(granted - load<u32>(rec, T_SND_MAX)), 0); // granted, not sent yet
    const room = bucketLevel(LIM_INGRESS) - <f64>offered;
    const want = upto - granted;
    if (<f64>want > room) {
      const step = min<u32>(want, load<u32>(rec, T_GUEST_MSS));
      if (room < <f64>step) { pace(rec, LIM_INGRESS, <f64>(offered + step), RATE_INGRESS_PACED); return; }
      upto = granted + <u32>room;
    }
  }
  if (opPush(OPK_TCP_CREDIT, idx, upto, load<u32>(rec, T_GUEST_MSS), 0, 0, 0)) store<u32>(rec, upto, T_GRANTED);
}

/** Both FINs acknowledged: close the socket, linger, then be reaped by tcpTick. */
function maybeFinished(idx: u32, rec: usize): void {
  const f = load<u32>(rec, T_FLAGS);
  if ((f & FL_GUEST_FIN) && (f & FL_FIN_ACKED) && load<u32>(rec, F_STATE) != TS_LINGER) {
    opPush(OPK_CLOSE, idx, 0, 0, 0, 0, 0);
    store<u32>(rec, TS_LINGER, F_STATE);
    // A lingering flow is closed as far as the guest is concerned: it no longer counts against
    // the connection limit (a connect/close loop must not run into its own ghosts).
    store<u32>(ST_TCP_LIVE, load<u32>(ST_TCP_LIVE) - 1);
    store<f64>(rec, now() + LINGER_MS, T_TIMER_AT);
  }
}

// ---- segments from the guest --------------------------------------------------------------------

// What tcpFromGuest tells its caller to do.
export const SEG_HANDLED: i32 = 0;
export const SEG_NO_FLOW: i32 = 1; // no connection and not a SYN: count DROP_TCP_NO_FLOW, answer RST
export const SEG_REFUSED: i32 = 2; // a SYN refused (limit; already counted): answer RST
export const SEG_STRAY_RST: i32 = 3; // a RST for no connection: count DROP_TCP_NO_FLOW, never answer

/**
 * A checked TCP segment from the guest for no existing flow (key at KEY_SCRATCH, its hash
 * `hash`), where flow/outbound.ts decided it goes: a SYN opens a connection, dialled there.
 * Returns one of the SEG_* codes above.
 */
export function tcpNew(hash: u32, l4: usize): i32 {
  const flags = <u32>load<u8>(l4 + 13);
  if (flags & TCP_RST) return SEG_STRAY_RST;
  if ((flags & (TCP_SYN | TCP_ACK)) != TCP_SYN) return SEG_NO_FLOW;
  return tcpOpen(hash, l4, rd32(l4 + 4)) ? SEG_HANDLED : SEG_REFUSED;
}

/** A checked TCP segment from the guest for flow `idx` (whichever side opened it). */
export function tcpOnFlow(idx: u32, l4: usize, l4len: u32): void {
  const doff = (<u32>load<u8>(l4 + 12) >> 4) << 2;
  const flags = <u32>load<u8>(l4 + 13);
  let seq = rd32(l4 + 4);
  const ack = rd32(l4 + 8);
  let data = l4 + doff;
  let dlen = l4len - doff;
  const rec = flowRecord(idx);
  const state = load<u32>(rec, F_STATE);
  store<f64>(rec, now(), F_LAST_MS);
  store<u64>(rec, load<u64>(rec, F_PKTS_OUT) + 1, F_PKTS_OUT);
  store<u32>(rec, 0, T_PROBES); // the guest is alive: outstanding probes are answered
  store<f64>(rec, 0, T_PROBE_AT);

  if (state == TS_SYN_SENT) { synSentSegment(idx, rec, l4, doff, flags, seq, ack); return; }
  if (flags & TCP_RST) {
    // RFC 5961 §3: accept only a RST at the expected sequence number (else it is ignored).
    if (state == TS_DIALING || seq == load<u32>(rec, T_RCV_NXT) || seq == load<u32>(rec, T_RCV_WR)) {
      count(TCP_GUEST_RESETS);
      tcpRemove(idx, state == TS_LINGER ? 0 : OPK_TCP_ABORT);
    } else {
      count(DROP_TCP_OUT_OF_WINDOW);
    }
    return;
  }
  if (state == TS_DIALING) return; // a retransmitted SYN while we dial: the answer is coming
  if (flags & TCP_SYN) {
    // A retransmitted SYN (our SYN-ACK was lost) gets the SYN-ACK again; in any later state a
    // SYN gets a challenge ACK (RFC 5961 §4).
    if (state == TS_SYN_RCVD && !(flags & TCP_ACK)) emitSegment(rec, TCP_SYN | TCP_ACK, load<u32>(rec, T_ISS), 0, 0);
    else emitAck(rec);
    return;
  }
  if (!(flags & TCP_ACK)) { count(DROP_TCP_OUT_OF_WINDOW); return; }

  if (state == TS_SYN_RCVD) {
    if (ack != load<u32>(rec, T_ISS) + 1) { count(DROP_TCP_OUT_OF_WINDOW); return; }
    store<u32>(rec, TS_ESTABLISHED, F_STATE);
    store<f64>(rec, now(), T_SINCE);
    store<u32>(rec, ack, T_SND_UNA);
    store<u32>(rec, ack, T_SND_NXT);
    store<f64>(rec, 0, T_TIMER_AT);
    store<u32>(rec, 0, T_RETRIES);
  }

  // ---- ACK: what the guest has received of ours
  const una = load<u32>(rec, T_SND_UNA);
  const nxt = load<u32>(rec, T_SND_NXT);
  const wnd = rd16(l4 + 14) << load<u8>(rec, T_GUEST_WS);
  const oldWnd = load<u32>(rec, T_SND_WND);
  store<u32>(rec, wnd, T_SND_WND);
  if (wnd != 0) store<u32>(rec, RTO_MIN_MS, T_PERSIST_MS);
  const max = load<u32>(rec, T_SND_MAX);
  const sack = sackOption(l4, doff); // (found once: both kinds of ACK below read it)
  if (seqLt(una, ack) && seqLe(ack, max)) {
    let acked = ack - una;
    let f = load<u32>(rec, T_FLAGS);
    // Our FIN counts in the sequence space: it is acknowledged by fin_seq + 1 (also when a
    // rewind has since taken snd_nxt back below it).
    if ((f & FL_HOST_EOF) && !(f & FL_FIN_ACKED) && ack == load<u32>(rec, T_FIN_SEQ) + 1) {
      f |= FL_FIN_ACKED | FL_FIN_SENT;
      store<u32>(rec, f, T_FLAGS);
      acked--;
    }
    store<u32>(rec, ack, T_SND_UNA);
    // Absolute: native-vmm discards up to this sequence number, so a lost op is made good by the
    // next one instead of leaving the socket's queue out of step with snd_una for good.
    if (acked) opPush(OPK_TCP_ACKED, idx, f & FL_FIN_ACKED ? load<u32>(rec, T_FIN_SEQ) : ack, acked, 0, 0, 0);
    if (f & FL_RECOVERY) {
      // The resent hole arrived. Everything the guest holds beyond it is now acknowledged; what
      // it still lacks starts at ack: the next hole (its first SACK block shows where it ends),
      // or, without blocks, everything from ack (go-back-N). Either way sending resumes at ack
      // (native-vmm peeked past the hole meanwhile, and that data was not sent).
      const hole = sackHoleEnd(sack, ack, max);
      if (ack == max || hole == ack) store<u32>(rec, f & ~FL_RECOVERY, T_FLAGS);
      else store<u32>(rec, hole, T_RECOVER_END);
      // (Also at max: data peeked past the hole, new data included, was held back, not sent.)
      if (!(f & FL_FIN_ACKED) && pushRewind(idx, rec, ack)) store<u32>(rec, ack, T_SND_NXT);
      else if (seqLt(nxt, ack)) store<u32>(rec, ack, T_SND_NXT);
    } else if (seqLt(nxt, ack)) {
      // The guest had received more than a rewind assumed: carry on from what it acknowledged.
      store<u32>(rec, ack, T_SND_NXT);
      if (!(f & FL_FIN_ACKED)) pushRewind(idx, rec, ack);
    }
    store<u32>(rec, 0, T_DUPACKS);
    store<u32>(rec, 0, T_RETRIES);
    store<u32>(rec, RTO_MIN_MS, T_RTO_MS);
    if (ack == max) store<f64>(rec, 0, T_TIMER_AT);
    else armTimer(rec);
  } else if (ack == una && una != max && !(load<u32>(rec, T_FLAGS) & FL_RECOVERY) &&
             ((dlen == 0 && !(flags & TCP_FIN) && wnd == oldWnd) || sackHoleEnd(sack, una, max) != una)) {
    // A duplicate ACK: a pure one (RFC 5681), or any segment whose SACK blocks report data above
    // a hole (RFC 6675: an echoing guest's ACKs ride on its data, and its window moves).
    const d = load<u32>(rec, T_DUPACKS) + 1;
    store<u32>(rec, d, T_DUPACKS);
    // Three of them; two that SACK data above the hole (on this link a segment overtaken by two
    // others is lost, not late); or one whose SACKs reach everything sent (a loss at the tail of
    // a burst brings no more duplicates: it would wait for the RTO).
    const top = sackTop(sack);
    if (d == 3 || (top != 0 && (d >= 2 || top == max))) {
      // Fast retransmit: resend the hole the guest reports, then wait for its ACK.
      const hole = sackHoleEnd(sack, una, max);
      // (No room for the rewind: the next duplicate or the RTO tries again; no recovery without it.)
      if (rewind(idx, rec)) {
        store<u32>(rec, load<u32>(rec, T_FLAGS) | FL_RECOVERY, T_FLAGS);
        store<u32>(rec, hole != una ? hole : una + load<u32>(rec, T_GUEST_MSS), T_RECOVER_END);
      }
    }
  } else if (seqLt(max, ack)) {
    count(DROP_TCP_OUT_OF_WINDOW); // acknowledges what we never sent
    emitAck(rec);
    return;
  }
  if (load<u32>(rec, F_STATE) == TS_ESTABLISHED) grantCredit(idx, rec);

  // ---- data and FIN: what the guest sends to the world
  const fl = load<u32>(rec, T_FLAGS);
  const wr = load<u32>(rec, T_RCV_WR);
  if (dlen > 0 && seqLt(seq, wr) && seqLt(wr, seq + dlen)) {
    // Overlaps what we already took (a retransmission after a short write): keep the new part.
    const skip = wr - seq;
    data += skip;
    dlen -= skip;
    seq = wr;
  }
  if (dlen > 0) {
    if (fl & (FL_SHUT_PENDING | FL_GUEST_FIN)) {
      count(DROP_TCP_OUT_OF_WINDOW); // data after the guest's own FIN
    } else if (seq == wr) {
      // A secret's placeholder in the guest's own stream (not one a service judges): the segment
      // that completes it is not sent, and the connection is reset both ways.
      if (secretsActive() && load<u8>(rec, F_ROUTE) != ROUTE_SERVICE) {
        const f = secretInStream(idx, data, dlen);
        if (f) {
          auditSecret(PROTO_TCP, <u32>load<u8>(rec, 1), <u32>load<u16>(rec, 6), secretOfForm(f));
          resetBoth(idx, rec, true);
          return;
        }
      }
      if (opPush(OPK_TCP_SEND, idx, data, dlen, 0, wr, 0)) {
        store<u32>(rec, wr + dlen, T_RCV_WR);
        charge(LIM_EGRESS, <f64>dlen);
        store<u64>(rec, load<u64>(rec, F_BYTES_OUT) + dlen, F_BYTES_OUT);
        // The gap before held segments may have closed: write what the stream now reaches.
        if (oooFirst(rec) && !(flags & TCP_FIN) && !writeHeld(idx, rec)) return;
      }
    } else if (seqLe(seq + dlen, wr)) {
      emitAck(rec); // an old duplicate: tell the guest where we are
    } else {
      // Ahead of a gap: held (and SACKed) within the largest window we offer, else dropped; either
      // way a duplicate ACK tells the guest where the gap is.
      if (seq + dlen - wr <= (0xffff << OUR_WS) && oooHold(idx, rec, seq, data, dlen, (flags & TCP_FIN) != 0)) count(TCP_OOO_QUEUED);
      else count(DROP_TCP_OUT_OF_ORDER);
      emitAck(rec);
      return;
    }
  }
  if (dlen == 0 && !(flags & TCP_FIN) && seq != wr) {
    emitAck(rec); // an unacceptable segment, e.g. a zero-window probe: answer with where we are
  }
  if (flags & TCP_FIN) guestFin(idx, rec, seq + dlen);
  maybeFinished(idx, rec);
  return;
}

/** The guest's FIN at `finSeq`: passed on once every byte before it was issued to the socket. */
function guestFin(idx: u32, rec: usize, finSeq: u32): void {
  const f2 = load<u32>(rec, T_FLAGS);
  if (f2 & FL_GUEST_FIN) emitAck(rec); // retransmitted FIN: our ACK was lost
  else if (!(f2 & FL_SHUT_PENDING) && finSeq == load<u32>(rec, T_RCV_WR)) {
    if (opPush(OPK_TCP_SHUTDOWN, idx, 0, 0, 0, 0, 0)) store<u32>(rec, f2 | FL_SHUT_PENDING, T_FLAGS);
  }
}

/**
 * Write the held segments (flow/tcp-reassembly.ts) that rcv_wr now reaches, in order, straight
 * from their pool slots; a held FIN is passed on after its data. Stops at the next gap, or when
 * the host-op list is full (what is left stays held; the guest's retransmission brings it back
 * here). False when the flow was reset (a secret's placeholder in the held bytes).
 */
function writeHeld(idx: u32, rec: usize): bool {
  let h = oooFirst(rec);
  while (h) {
    const s = h - 1;
    const seq = oooSeq(s);
    const end = seq + oooLen(s);
    const wr = load<u32>(rec, T_RCV_WR);
    if (seqLt(wr, seq)) break; // still a gap before it
    if (seqLt(wr, end)) {
      if (load<u32>(rec, T_FLAGS) & (FL_SHUT_PENDING | FL_GUEST_FIN)) { oooClear(rec); break; }
      const data = oooData(s) + <usize>(wr - seq);
      const n = end - wr;
      if (secretsActive() && load<u8>(rec, F_ROUTE) != ROUTE_SERVICE) {
        const f = secretInStream(idx, data, n);
        if (f) {
          auditSecret(PROTO_TCP, <u32>load<u8>(rec, 1), <u32>load<u16>(rec, 6), secretOfForm(f));
          resetBoth(idx, rec, true);
          return false;
        }
      }
      if (!opPush(OPK_TCP_SEND, idx, data, n, 0, wr, 0)) break;
      store<u32>(rec, end, T_RCV_WR);
      charge(LIM_EGRESS, <f64>n);
      store<u64>(rec, load<u64>(rec, F_BYTES_OUT) + n, F_BYTES_OUT);
      count(TCP_OOO_FILLED);
    }
    const fin = oooFin(s);
    oooPop(rec);
    if (fin && end == load<u32>(rec, T_RCV_WR)) guestFin(idx, rec, end);
    h = oooFirst(rec);
  }
  return true;
}

/** A guest SYN for a new connection: create the flow and dial (or, over the connection rate, hold it). */
function tcpOpen(hash: u32, l4: usize, seq: u32): bool {
  const live = load<u32>(ST_TCP_LIVE);
  if (live >= load<u32>(CFG_MAX_TCP_FLOWS)) { count(DROP_FLOW_LIMIT); return false; }
  if (flowTableFull()) { count(DROP_FLOW_TABLE_FULL); return false; }
  // Over the connection rate the SYN is held, behind those held already, and dialled when the
  // rate allows (tcpLimitWake): the guest sees a slower network. Reset only when the queue is full.
  const hold = limited(LIM_CONN) && (!connQueueEmpty() || bucketLevel(LIM_CONN) < 1);
  if (hold && connQueueFull()) { count(DROP_RATE_CONN); return false; }
  if (!outboundAdmit()) return true; // answered by admission
  const found = flowInsert(hash);
  if (found < 0) { count(DROP_FLOW_TABLE_FULL); return false; }
  const idx = <u32>found;
  const rec = flowRecord(idx);
  store<u32>(ST_TCP_LIVE, live + 1);
  store<u32>(rec, TS_DIALING, F_STATE);
  outboundRecord(rec);
  takeSynOptions(rec, l4);
  const iss = initSend(rec, hash);
  store<u32>(rec, iss + 1, T_GRANTED);
  store<u32>(rec, seq, T_IRS);
  store<u32>(rec, seq + 1, T_RCV_NXT);
  store<u32>(rec, seq + 1, T_RCV_WR);
  if (hold) {
    connQueuePush(idx);
    store<u32>(rec, load<u32>(rec, T_FLAGS) | FL_CONN_HELD, T_FLAGS);
    count(RATE_CONN_DELAYED);
    wakeAt(readyAt(LIM_CONN, 1));
    return true;
  }
  charge(LIM_CONN, 1);
  if (!tcpDial(idx, rec)) {
    charge(LIM_CONN, -1);
    tcpRemove(idx, 0);
  }
  return true; // (no room for the dial: counted as DROP_HOST_OPS_FULL; the guest will retry its SYN)
}

/** Dial flow `idx` (DIALING) where it was decided to go; false when the host-op list is full. */
function tcpDial(idx: u32, rec: usize): bool {
  // A redirect to an orchestrator service: native-vmm tells it the original destination (the
  // key's remote address and port) in a preamble (layout.ts, OP_ORIG).
  const dial = rec + F_DIAL_ADDR;
  if (!opPush(OPK_TCP_CONNECT, idx, load<u32>(rec, T_ISS) + 1, load<u32>(rec, T_GUEST_MSS), familyOf(dial), load<u32>(rec, F_DIAL_PORT), dial, load<u8>(rec, F_ROUTE) == ROUTE_SERVICE ? rec : 0)) return false;
  count(TCP_FLOWS_OPENED);
  return true;
}

/**
 * The rate limits' wake-up (limits.ts; the worker's timer at ST_LIMIT_DUE, and engineRun): held
 * SYNs dialled in order as the connection rate allows; flows held back by the egress or ingress
 * limit get their window update or credit, or wait again. Returns how many things moved.
 */
export function tcpLimitWake(t: f64): i32 {
  store<f64>(ST_NOW_MS, t);
  store<f64>(ST_LIMIT_DUE, 0); // whatever still waits asks again
  let moved: i32 = 0;
  while (!connQueueEmpty()) {
    const idx = connQueuePeek();
    const rec = flowRecord(idx);
    // Gone meanwhile (the guest gave up, the dial timed out): its place is skipped.
    if (load<u8>(rec) != 6 || load<u32>(rec, F_STATE) != TS_DIALING || !(load<u32>(rec, T_FLAGS) & FL_CONN_HELD)) { connQueuePop(); continue; }
    if (limited(LIM_CONN) && bucketLevel(LIM_CONN) < 1) { wakeAt(readyAt(LIM_CONN, 1)); break; }
    if (!tcpDial(idx, rec)) { wakeAt(t + 1); break; } // the host-op list is full: soon
    charge(LIM_CONN, 1);
    store<u32>(rec, load<u32>(rec, T_FLAGS) & ~FL_CONN_HELD, T_FLAGS);
    connQueuePop();
    moved++;
  }
  // The list is taken whole; a flow that must wait again is listed anew (at most once each, at a
  // place already read).
  const n = load<u32>(ST_PACED_COUNT);
  store<u32>(ST_PACED_COUNT, 0);
  for (let i: u32 = 0; i < n; i++) {
    const idx = load<u32>(PACED_LIST + (<usize>i << 2));
    const rec = flowRecord(idx);
    const f = load<u32>(rec, T_FLAGS);
    if (load<u8>(rec) != 6 || !(f & FL_PACED)) continue; // gone, or reused
    store<u32>(rec, f & ~FL_PACED, T_FLAGS);
    if (load<u32>(rec, F_STATE) != TS_ESTABLISHED) continue;
    if (f & FL_WND_SHUT) {
      if (<f64>advWindow(rec) >= egressNeed(rec)) { emitAck(rec); moved++; }
      else if (limited(LIM_EGRESS) && spaceWindow(rec) >= load<u32>(rec, T_GUEST_MSS)) pace(rec, LIM_EGRESS, egressNeed(rec), RATE_EGRESS_PACED);
    }
    const granted = load<u32>(rec, T_GRANTED);
    grantCredit(idx, rec);
    if (load<u32>(rec, T_GRANTED) != granted) moved++;
  }
  return moved;
}

/** The segment size this link carries (MTU less the IP and TCP headers). */
@inline function linkMss(v4: bool): u32 {
  return load<u32>(CFG_MTU) - (v4 ? 40 : 60);
}

/** The guest's SYN options: MSS (2) and window scale (3); everything else is ignored. */
function takeSynOptions(rec: usize, l4: usize): void {
  const v4 = load<u8>(rec, 1) == 4;
  let mss: u32 = v4 ? 536 : 1220;
  let guestWs: i32 = -1;
  let o = l4 + 20;
  const end = l4 + ((<u32>load<u8>(l4 + 12) >> 4) << 2);
  while (o < end) {
    const kind = <u32>load<u8>(o);
    if (kind == 0) break;
    if (kind == 1) { o++; continue; }
    if (o + 1 >= end) break;
    const olen = <u32>load<u8>(o + 1);
    if (olen < 2 || o + olen > end) break;
    if (kind == 2 && olen == 4) mss = rd16(o + 2);
    if (kind == 3 && olen == 3) guestWs = <i32>min<u32>(load<u8>(o + 2), 14);
    if (kind == 4 && olen == 2) store<u32>(rec, load<u32>(rec, T_FLAGS) | FL_SACK_OK, T_FLAGS);
    o += olen;
  }
  const linkMax = linkMss(v4);
  if (mss > linkMax) mss = linkMax;
  if (mss < 64) mss = 64;
  store<u32>(rec, mss, T_GUEST_MSS);
  store<u8>(rec, <u8>(guestWs < 0 ? 0 : guestWs), T_GUEST_WS);
  store<u8>(rec, <u8>(guestWs < 0 ? 0 : OUR_WS), T_OUR_WS);
}

/** Our side's starting state; returns the ISS (RFC 6528 in spirit: time-driven, spread by the hash). */
function initSend(rec: usize, hash: u32): u32 {
  const iss = <u32>(<u64>(now() * 250.0)) ^ (hash * 0x9e3779b1);
  store<u32>(rec, iss, T_ISS);
  store<u32>(rec, iss, T_SND_UNA);
  store<u32>(rec, iss, T_SND_NXT);
  store<u32>(rec, INITIAL_SPACE, T_SPACE);
  store<u32>(rec, RTO_MIN_MS, T_RTO_MS);
  store<u32>(rec, RTO_MIN_MS, T_PERSIST_MS);
  store<f64>(rec, now(), T_SINCE);
  store<f64>(rec, now(), F_LAST_MS);
  return iss;
}

/**
 * A peer accepted on published TCP port `listener` (flow/inbound.ts judged it): a connection
 * toward the guest, key at KEY_SCRATCH (the guest's port, the gateway as the remote). Adopts the
 * peer's socket (OPK_ACCEPT) and sends the guest a SYN. The caller checked there is room for the
 * host operation and the frame. False when no flow can be made (counted): refuse the peer.
 */
export function tcpActiveOpen(hash: u32, listener: u32, peer: usize, peerPort: u32): bool {
  const live = load<u32>(ST_TCP_LIVE);
  if (live >= load<u32>(CFG_MAX_TCP_FLOWS)) { count(DROP_FLOW_LIMIT); return false; }
  const found = flowInsert(hash);
  if (found < 0) { count(DROP_FLOW_TABLE_FULL); return false; }
  const idx = <u32>found;
  const rec = flowRecord(idx);
  store<u32>(ST_TCP_LIVE, live + 1);
  store<u32>(rec, TS_SYN_SENT, F_STATE);
  flowFromPeer(rec, listener, peer, peerPort);
  // Until the guest's SYN-ACK says otherwise: the link's segment size, and our window scale
  // offered (taken back if the guest does not offer its own).
  store<u32>(rec, linkMss(load<u8>(rec, 1) == 4), T_GUEST_MSS);
  store<u8>(rec, <u8>OUR_WS, T_OUR_WS);
  const iss = initSend(rec, hash);
  store<u32>(rec, iss + 1, T_SND_NXT);
  store<u32>(rec, iss + 1, T_SND_MAX);
  store<u32>(rec, iss + 1, T_GRANTED);
  opPush(OPK_ACCEPT, idx, iss + 1, load<u32>(rec, T_GUEST_MSS), 0, listener, 0);
  emitSegment(rec, TCP_SYN, iss, 0, 0); // a full TX ring: the RTO sends it
  armTimer(rec);
  return true;
}

/** The guest's answer to our SYN (an inbound connection): SYN-ACK, or RST (nothing listens). */
function synSentSegment(idx: u32, rec: usize, l4: usize, doff: u32, flags: u32, seq: u32, ack: u32): void {
  const iss = load<u32>(rec, T_ISS);
  // Only a segment acknowledging our SYN counts (RFC 9293 §3.10.7.3); anything else is stale.
  if (!(flags & TCP_ACK) || ack != iss + 1) { count(DROP_TCP_OUT_OF_WINDOW); return; }
  if (flags & TCP_RST) {
    count(TCP_INBOUND_CLOSED_PORT);
    tcpRemove(idx, OPK_TCP_ABORT); // the peer sees "connection reset" at once, not a hang
    return;
  }
  if (!(flags & TCP_SYN)) { count(DROP_TCP_OUT_OF_WINDOW); return; }
  takeSynOptions(rec, l4);
  store<u32>(rec, seq, T_IRS);
  store<u32>(rec, seq + 1, T_RCV_NXT);
  store<u32>(rec, seq + 1, T_RCV_WR);
  store<u32>(rec, iss + 1, T_SND_UNA);
  store<u32>(rec, rd16(l4 + 14), T_SND_WND); // a SYN's window is never scaled
  store<u32>(rec, TS_ESTABLISHED, F_STATE);
  store<f64>(rec, now(), T_SINCE);
  store<f64>(rec, 0, T_TIMER_AT);
  store<u32>(rec, 0, T_RETRIES);
  store<u32>(rec, RTO_MIN_MS, T_RTO_MS);
  count(TCP_CONNECTED);
  emitAck(rec);
  grantCredit(idx, rec);
}

/** Tell native-vmm to peek again from `seq`; data peeked before it is from now on stale. */
function pushRewind(idx: u32, rec: usize, seq: u32): bool {
  if (!opPush(OPK_TCP_REWIND, idx, seq, 0, 0, 0, 0)) return false;
  store<u8>(rec, load<u8>(rec, T_EPOCH) + 1, T_EPOCH);
  return true;
}

/** The SACK option (kind 5) among the options of the segment at `l4`: its address, or 0. */
function sackOption(l4: usize, doff: u32): usize {
  let o = l4 + 20;
  const end = l4 + doff;
  while (o < end) {
    const kind = <u32>load<u8>(o);
    if (kind == 0) break;
    if (kind == 1) { o++; continue; }
    if (o + 1 >= end) break;
    const olen = <u32>load<u8>(o + 1);
    if (olen < 2 || o + olen > end) break;
    if (kind == 5) return o;
    o += olen;
  }
  return 0;
}

/**
 * Where the hole after `from` ends by the SACK blocks of option `sack` (sackOption; 0: none):
 * the lowest left edge above `from` (and not beyond `max`), or `from` when there is none.
 */
function sackHoleEnd(sack: usize, from: u32, max: u32): u32 {
  let best = from;
  if (!sack) return best;
  const olen = <u32>load<u8>(sack + 1);
  for (let b = sack + 2; b + 8 <= sack + olen; b += 8) {
    const left = rd32(b);
    if (seqLt(from, left) && seqLe(left, max) && (best == from || seqLt(left, best))) best = left;
  }
  return best;
}

/** The highest right edge among the SACK blocks of option `sack` (0 when there are none). */
function sackTop(sack: usize): u32 {
  let top: u32 = 0;
  if (!sack) return top;
  const olen = <u32>load<u8>(sack + 1);
  for (let b = sack + 2; b + 8 <= sack + olen; b += 8) {
    const right = rd32(b + 4);
    if (top == 0 || seqLt(top, right)) top = right;
  }
  return top;
}

/** Go-back-N: resend everything from snd_una (and our FIN, if it was sent). */
function rewind(idx: u32, rec: usize): bool {
  const una = load<u32>(rec, T_SND_UNA);
  if (!pushRewind(idx, rec, una)) return false;
  store<u32>(rec, una, T_SND_NXT);
  const f = load<u32>(rec, T_FLAGS);
  // (A timeout ends fast recovery: everything from snd_una goes again.)
  store<u32>(rec, (f & FL_FIN_SENT) && !(f & FL_FIN_ACKED) ? f & ~(FL_FIN_SENT | FL_RECOVERY) : f & ~FL_RECOVERY, T_FLAGS);
  store<u32>(rec, 0, T_DUPACKS);
  count(TCP_RETRANSMITS);
  armTimer(rec);
  return true;
}

/**
 * A TCP flow's state for tests (test/helpers/engine-harness.ts, tcpState): `what` 0 state (TS_*,
 * 0 when the flow is not TCP), 1 rcv_nxt, 2 rcv_wr, 3 snd_una, 4 snd_nxt, 5 segments held beyond
 * a gap, 6 flags (FL_*), 7 the delayed-ACK deadline (ms, 0 = none).
 */
export function tcpInspect(idx: u32, what: u32): f64 {
  const rec = flowRecord(idx);
  if (load<u8>(rec) != PROTO_TCP) return 0;
  if (what == 0) return <f64>load<u32>(rec, F_STATE);
  if (what == 1) return <f64>load<u32>(rec, T_RCV_NXT);
  if (what == 2) return <f64>load<u32>(rec, T_RCV_WR);
  if (what == 3) return <f64>load<u32>(rec, T_SND_UNA);
  if (what == 4) return <f64>load<u32>(rec, T_SND_NXT);
  if (what == 5) return <f64>load<u32>(rec, T_OOO_COUNT);
  if (what == 6) return <f64>load<u32>(rec, T_FLAGS);
  if (what == 7) return load<u32>(rec, T_FLAGS) & FL_ACK_DELAYED ? load<f64>(rec, T_ACK_AT) : 0;
  return 0;
}

// ---- events from the host socket -----------------------------------------------------------------

/**
 * An inbound event for TCP flow `idx`. Returns false when it must be retried later (the TX ring
 * is full); true when consumed.
 */
export function tcpEvent(idx: u32, kind: u32, len: u32, arg: u32, buf: usize, aux: u32): bool {
  const rec = flowRecord(idx);
  const state = load<u32>(rec, F_STATE);
  if (load<u8>(rec) != PROTO_TCP || state < TS_DIALING) return true; // the flow has gone meanwhile
  const current = (aux >>> INK_EPOCH_SHIFT) == <u32>load<u8>(rec, T_EPOCH);
  if (kind == INK_TCP_DATA) {
    if (!current || state != TS_ESTABLISHED || arg != load<u32>(rec, T_SND_NXT) || (load<u32>(rec, T_FLAGS) & FL_FIN_SENT)) {
      count(TCP_STALE_DATA);
      return true;
    }
    const fr = load<u32>(rec, T_FLAGS);
    if ((fr & FL_RECOVERY) && !seqLt(arg, load<u32>(rec, T_RECOVER_END))) return true; // beyond the hole: after the guest's ACK
    if (!emitSegment(rec, TCP_ACK | TCP_PSH, arg, buf + IN_TCP_DATA_AT, len)) return false;
    store<u32>(rec, arg + len, T_SND_NXT);
    const sent = load<u32>(rec, T_SND_MAX);
    if (seqLt(sent, arg + len)) {
      store<u32>(rec, arg + len, T_SND_MAX);
      charge(LIM_INGRESS, <f64>(arg + len - sent)); // first sends only: a retransmission is free
    }
    store<u64>(rec, load<u64>(rec, F_PKTS_IN) + 1, F_PKTS_IN);
    store<u64>(rec, load<u64>(rec, F_BYTES_IN) + len, F_BYTES_IN);
    countN(TCP_BYTES_TO_GUEST, len);
    if (load<f64>(rec, T_TIMER_AT) == 0) armTimer(rec);
    return true;
  }
  if (kind == INK_TCP_SENT) {
    store<u32>(rec, load<u32>(rec, T_RCV_NXT) + len, T_RCV_NXT);
    store<u32>(rec, arg, T_SPACE);
    countN(TCP_BYTES_TO_HOST, len);
    if (aux & INK_PARTIAL) {
      // The socket took only part: everything after it will be dropped as a gap. Three
      // duplicate ACKs make the guest retransmit from rcv_nxt now (RFC 5681 §3.2). A FIN queued
      // behind the lost part was skipped by native-vmm too: it comes again with the data.
      // (The egress tokens of what was not written are given back: it will be sent again.)
      charge(LIM_EGRESS, -<f64>(load<u32>(rec, T_RCV_WR) - load<u32>(rec, T_RCV_NXT)));
      store<u32>(rec, load<u32>(rec, T_RCV_NXT), T_RCV_WR);
      store<u32>(rec, load<u32>(rec, T_FLAGS) & ~FL_SHUT_PENDING, T_FLAGS);
      emitAck(rec);
      emitAck(rec);
      emitAck(rec);
      return true;
    }
    // Our window is closing (less than two segments left): say so now, or the guest stalls.
    if (advWindow(rec) < 2 * linkMss(load<u8>(rec, 1) == 4)) emitAck(rec);
    else ackSoon(idx, rec);
    return true;
  }
  if (kind == INK_TCP_WRITABLE) {
    store<u32>(rec, arg, T_SPACE);
    emitAck(rec); // window update
    return true;
  }
  if (kind == INK_TCP_CONNECTED) {
    if (state != TS_DIALING) return true;
    if (!emitSegment(rec, TCP_SYN | TCP_ACK, load<u32>(rec, T_ISS), 0, 0)) return false;
    store<u32>(rec, TS_SYN_RCVD, F_STATE);
    store<u32>(rec, load<u32>(rec, T_ISS) + 1, T_SND_NXT);
    store<u32>(rec, load<u32>(rec, T_ISS) + 1, T_SND_MAX);
    armTimer(rec);
    count(TCP_CONNECTED);
    return true;
  }
  if (kind == INK_OPEN_FAILED || (kind == INK_TCP_RESET && state == TS_DIALING)) {
    // The dial failed. Refused: the guest sees "connection refused" (RST). Anything else
    // (unreachable, timed out): silence, as on a real network.
    if (arg == ECONNREFUSED) {
      store<u32>(rec, load<u32>(rec, T_ISS), T_SND_NXT);
      emitSegment(rec, TCP_RST | TCP_ACK, 0, 0, 0);
      count(TCP_REFUSED);
    } else {
      count(TCP_DIAL_FAILED);
    }
    tcpRemove(idx, OPK_CLOSE);
    return true;
  }
  if (kind == INK_TCP_RESET) {
    count(TCP_HOST_RESETS);
    if (state == TS_LINGER) tcpRemove(idx, 0);
    else resetBoth(idx, rec, false);
    return true;
  }
  if (kind == INK_TCP_EOF) {
    const f = load<u32>(rec, T_FLAGS);
    if (!current || state != TS_ESTABLISHED || (f & FL_FIN_SENT) || arg != load<u32>(rec, T_SND_NXT)) return true; // stale
    if (!emitSegment(rec, TCP_FIN | TCP_ACK, arg, 0, 0)) return false;
    store<u32>(rec, f | FL_HOST_EOF | FL_FIN_SENT, T_FLAGS);
    store<u32>(rec, arg, T_FIN_SEQ);
    store<u32>(rec, arg + 1, T_SND_NXT);
    if (seqLt(load<u32>(rec, T_SND_MAX), arg + 1)) store<u32>(rec, arg + 1, T_SND_MAX);
    if (load<f64>(rec, T_TIMER_AT) == 0) armTimer(rec);
    return true;
  }
  if (kind == INK_TCP_SHUT_DONE) {
    const f = load<u32>(rec, T_FLAGS);
    if (!(f & FL_SHUT_PENDING)) return true;
    store<u32>(rec, (f & ~FL_SHUT_PENDING) | FL_GUEST_FIN, T_FLAGS);
    const n = load<u32>(rec, T_RCV_NXT) + 1;
    store<u32>(rec, n, T_RCV_NXT);
    store<u32>(rec, n, T_RCV_WR);
    emitAck(rec);
    maybeFinished(idx, rec);
    return true;
  }
  return true;
}

// ---- timers ------------------------------------------------------------------------------------------

/** Run flow `idx`'s timers if it is TCP. Returns true if the flow was removed. */
export function tcpTick(idx: u32, t: f64): bool {
  const rec = flowRecord(idx);
  if (load<u8>(rec) != PROTO_TCP) return false;
  const state = load<u32>(rec, F_STATE);
  if (state < TS_DIALING) return false;
  if (state == TS_DIALING) {
    if (t - load<f64>(rec, T_SINCE) < DIAL_TIMEOUT_MS) return false;
    count(TCP_DIAL_FAILED);
    tcpRemove(idx, OPK_CLOSE);
    return true;
  }
  // A window update the guest is owed (ours reopened, but the ACK that said so found the TX ring
  // full): sent from here, or the guest waits for its own persist timer, up to minutes.
  if (state == TS_ESTABLISHED) {
    const fl = load<u32>(rec, T_FLAGS);
    if ((fl & FL_ACK_OWED) || ((fl & FL_WND_SHUT) && advWindow(rec) >= load<u32>(rec, T_GUEST_MSS)) ||
        ((fl & FL_ACK_DELAYED) && load<f64>(rec, T_ACK_AT) <= t)) emitAck(rec); // (a delayed ACK the timer missed)
  }
  const at = load<f64>(rec, T_TIMER_AT);
  if (at == 0) return state == TS_ESTABLISHED ? probeTick(idx, rec, t) : false;
  if (t < at) return false;
  if (state == TS_LINGER) {
    tcpRemove(idx, 0);
    return true;
  }
  const retries = load<u32>(rec, T_RETRIES) + 1;
  if (retries > MAX_RETRIES) {
    resetBoth(idx, rec, true); // the guest stopped answering
    return true;
  }
  store<u32>(rec, retries, T_RETRIES);
  const rto = load<u32>(rec, T_RTO_MS) << 1;
  store<u32>(rec, rto > RTO_MAX_MS ? RTO_MAX_MS : rto, T_RTO_MS);
  if (state == TS_SYN_RCVD || state == TS_SYN_SENT) {
    emitSegment(rec, state == TS_SYN_SENT ? TCP_SYN : TCP_SYN | TCP_ACK, load<u32>(rec, T_ISS), 0, 0);
    armTimer(rec);
    return false;
  }
  if (load<u32>(rec, T_SND_UNA) != load<u32>(rec, T_SND_NXT)) rewind(idx, rec);
  else store<f64>(rec, 0, T_TIMER_AT);
  return false;
}

/**
 * Nothing of ours is in flight: keep the peek credit granted, and probe a guest whose window is
 * shut (persist) or that has been silent (keepalive). Returns true if the flow was removed.
 */
function probeTick(idx: u32, rec: usize, t: f64): bool {
  grantCredit(idx, rec);
  const f = load<u32>(rec, T_FLAGS);
  const shut = load<u32>(rec, T_SND_WND) == 0 && !(f & FL_FIN_ACKED);
  let at = load<f64>(rec, T_PROBE_AT);
  if (at == 0) {
    if (shut) at = t + <f64>load<u32>(rec, T_PERSIST_MS);
    else at = load<f64>(rec, F_LAST_MS) + (f & (FL_GUEST_FIN | FL_SHUT_PENDING) ? KEEPALIVE_HALF_CLOSED_MS : KEEPALIVE_IDLE_MS);
    store<f64>(rec, at, T_PROBE_AT);
  }
  if (t < at) return false;
  const probes = load<u32>(rec, T_PROBES) + 1;
  if (probes > (shut ? MAX_RETRIES : KEEPALIVE_PROBES)) {
    count(TCP_GUEST_TIMEOUTS);
    resetBoth(idx, rec, true); // the guest stopped answering
    return true;
  }
  if (!emitSegment(rec, TCP_ACK, load<u32>(rec, T_SND_UNA) - 1, 0, 0)) return false; // TX full: next tick
  store<u32>(rec, probes, T_PROBES);
  count(TCP_PROBES);
  if (shut) {
    const p = min<u32>(load<u32>(rec, T_PERSIST_MS) << 1, PERSIST_MAX_MS);
    store<u32>(rec, p, T_PERSIST_MS);
    store<f64>(rec, t + <f64>p, T_PROBE_AT);
  } else {
    store<f64>(rec, t + KEEPALIVE_INTERVAL_MS, T_PROBE_AT);
  }
  return false;
}
