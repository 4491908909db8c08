// inbound.ts — published ports: peers on the host side become flows toward the guest.
//
// Theory of operation
// native-vmm listens on each published port (layout.ts, "published ports"). A new peer — a TCP
// connection it accepted, or a UDP datagram from an address it has not seen on that listener —
// arrives here as INK_ACCEPT, with the peer's address in an ACC_* header. The engine decides
// once, here, and records the decision in the flow:
//   - the listener must still be published (the orchestrator clears the entry before it closes
//     the socket, so a peer that raced a withdrawal is refused);
//   - the inbound rules, judged on the peer's address and the guest port, first match wins, else
//     the policy's default inbound action (policy/admit.ts admitInbound);
//   - the connection limit, shared with outbound flows (--max-connections counts both).
// A refused peer is answered with OPK_REFUSE (TCP: a reset; UDP: its datagram dropped); an
// admitted one becomes a flow with origin ORIGIN_HOST and route ROUTE_PEER, adopted by native-vmm
// (OPK_ACCEPT): TCP is opened toward the guest with a SYN (flow/tcp.ts tcpActiveOpen), UDP
// delivers the datagram and sends the guest's replies back to that peer.
//
// What the guest sees: the connection comes from the gateway's IPv4 address, from the peer's own
// port where that is free (else a nearby one). Not the peer's address: published ports bind the
// host's loopback by default, and 127.0.0.1 as a source inside the guest would be answered by
// the guest's own loopback; and one source for all peers keeps the guest's view of the world
// the one it has for outbound traffic (everything beyond the gateway). The peer's real address
// is kept in the flow (F_DIAL_ADDR/F_DIAL_PORT) and judged by the inbound rules.

import {
  KEY_SCRATCH, OPS_MAX, ST_OPS_COUNT, CFG_GUEST_IP4, CFG_GATEWAY_IP4, PUB_MAX, PUB_BASE, PUB_ENTRY_BYTES,
  PUB_GUEST_PORT, PUB_PROTO, ACC_PROTO, ACC_PORT, ACC_ADDR, ACC_BYTES, OPK_REFUSE,
} from "../layout";
import { INBOUND_ACCEPTED, INBOUND_REFUSED, DROP_FLOW_TABLE_FULL } from "../counters";
import { keyHash, flowLookup, flowTableFull } from "./table";
import { mapV4 } from "../wire/bytes";
import { PROTO_TCP } from "../wire/numbers";
import { count, opPush, txHasRoom } from "../emit";
import { admitInbound } from "../policy/admit";
import { tcpActiveOpen } from "./tcp";
import { udpInboundOpen } from "./datagram";

const PORT_TRIES: u32 = 64; // source ports tried for the guest's view of a peer before giving up

/**
 * INK_ACCEPT from listener `listener`: `len` bytes at `buf` (ACC_* header, then a UDP datagram).
 * Returns false when there is no room to answer yet (it stays queued and comes again).
 */
export function inboundAccept(listener: u32, buf: usize, len: u32): bool {
  // Room for the answer (an op) and the first frame (SYN or datagram), so that nothing below has
  // to be undone half way.
  if (load<u32>(ST_OPS_COUNT) > <u32>OPS_MAX - 4 || !txHasRoom()) return false;
  if (listener >= <u32>PUB_MAX || len < <u32>ACC_BYTES) return refuse(listener);
  const pub = PUB_BASE + <usize>listener * PUB_ENTRY_BYTES;
  const proto = <u32>load<u8>(pub, PUB_PROTO);
  if (proto == 0 || proto != <u32>load<u8>(buf, ACC_PROTO)) return refuse(listener); // withdrawn meanwhile
  const guestPort = <u32>load<u16>(pub, PUB_GUEST_PORT);
  const peer = buf + ACC_ADDR;
  const peerPort = <u32>load<u16>(buf, ACC_PORT);
  // The guest's side of the key: its IPv4 address and port, the gateway as the remote.
  store<u32>(KEY_SCRATCH, proto | (4 << 8));
  store<u16>(KEY_SCRATCH + 4, <u16>guestPort);
  mapV4(KEY_SCRATCH + 8, CFG_GUEST_IP4);
  mapV4(KEY_SCRATCH + 24, CFG_GATEWAY_IP4);
  store<u16>(KEY_SCRATCH + 6, <u16>peerPort);
  if (!admitInbound(proto, peer, peerPort, KEY_SCRATCH + 8, guestPort)) return refuse(listener);
  if (flowTableFull()) { count(DROP_FLOW_TABLE_FULL); return refuse(listener); }
  // A remote port the guest is not already using with the gateway from that port.
  let port = peerPort == 0 ? 1024 : peerPort;
  let hash: u32 = 0;
  let tries: u32 = 0;
  for (; tries < PORT_TRIES; tries++) {
    store<u16>(KEY_SCRATCH + 6, <u16>port);
    hash = keyHash();
    if (flowLookup(hash) < 0) break;
    port = port >= 65535 ? 1024 : port + 1;
  }
  if (tries == PORT_TRIES) { count(DROP_FLOW_TABLE_FULL); return refuse(listener); }
  const ok = proto == PROTO_TCP
    ? tcpActiveOpen(hash, listener, peer, peerPort)
    : udpInboundOpen(hash, listener, peer, peerPort, buf + ACC_BYTES, len - ACC_BYTES);
  if (!ok) return refuse(listener);
  count(INBOUND_ACCEPTED);
  return true;
}

/** Answer the listener's waiting peer with a refusal (counted). Always consumes the event. */
function refuse(listener: u32): bool {
  count(INBOUND_REFUSED);
  opPush(OPK_REFUSE, 0, 0, 0, 0, listener, 0);
  return true;
}
