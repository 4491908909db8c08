// counters.ts — indexes of the engine's u64 counters (COUNTERS_BASE + 8 * index).
//
// Dual-language like layout.ts: the orchestrator reads the names off this module's exports, so a
// counter added here is reported everywhere without further wiring. Names starting DROP_ count
// frames dropped, by reason; every dropped frame is counted under exactly one reason.

export const RX_FRAMES = 0;
export const RX_BYTES = 1;
export const TX_FRAMES = 2;
export const TX_BYTES = 3;
export const ARP_REPLIES = 4;
export const ICMP_ECHO_REPLIES = 5;
export const DHCP_REPLIES = 6;
export const NDP_REPLIES = 7;
export const UDP_FLOWS_OPENED = 8;
export const UDP_FLOWS_EXPIRED = 9;
export const UDP_TO_HOST = 10;
export const UDP_FROM_HOST = 11;
export const TCP_RESETS_SENT = 12;
export const FLOW_ERRORS = 13;
export const ROUTER_ADVERTS = 14;
export const ICMP_REJECTS_SENT = 62;
export const DNS_QUERIES = 63; // guest DNS queries handed to the interceptor
export const DNS_ANSWERS = 64; // answers injected toward the guest
export const DNS_ALT_REFUSED = 65; // DoT/DoQ/mDNS/LLMNR/NetBIOS-NS refused so the stub falls back to port 53
export const PINS_ADDED = 66;
export const DROP_DNS_OVERLOAD = 67; // the DNS ring was full (too many queries in flight)
export const DROP_DNS_OVERSIZE = 68; // a query larger than DNS_MAX_QUERY
export const PINS_LOST = 69; // a pin could not be stored (pin set full): domain rules fail closed for it // ICMP "administratively prohibited" sent for rejected flows
export const HOST_SEND_ERRORS = 15; // a host socket refused a datagram (buffer full, unreachable)
export const HOST_OPEN_ERRORS = 16; // a host socket could not be created or connected
export const LINK_RX_ERRORS = 17; // the link failed a read (other than "nothing to read")
export const LINK_TX_ERRORS = 18; // the link refused a frame (other than "try again")
export const TCP_FLOWS_OPENED = 19; // guest SYNs dialled
export const TCP_CONNECTED = 20; // dials that succeeded (SYN-ACK sent)
export const TCP_REFUSED = 21; // dials refused by the destination (RST sent to the guest)
export const TCP_DIAL_FAILED = 22; // dials that failed otherwise or timed out (the guest hears nothing)
export const TCP_FLOWS_CLOSED = 23; // flows reaped after an orderly close or a reset
export const TCP_RETRANSMITS = 24; // go-back-N rewinds (timeout or three duplicate ACKs)
export const TCP_BYTES_TO_HOST = 25;
export const TCP_BYTES_TO_GUEST = 26;
export const TCP_HOST_RESETS = 27; // host sockets that failed or were reset by the peer
export const TCP_GUEST_RESETS = 28; // RSTs received from the guest
export const TCP_SHORT_WRITES = 29; // host socket took less than a guest segment (back-pressure)
export const FLOWS_ALLOWED = 30; // new flows the policy let through
export const DROP_POLICY = 31; // new flows (or datagrams) the policy denied: the per-sandbox "denied" count
export const AUDIT_LOST = 61; // denials not recorded because the audit ring was full (still counted in DROP_POLICY)

export const DROP_RUNT = 32; // shorter than an Ethernet header
export const DROP_NOT_FOR_US = 33; // destination MAC neither ours nor broadcast/multicast
export const DROP_ETHERTYPE = 34; // not ARP, IPv4 or IPv6
export const DROP_ARP_MALFORMED = 35;
export const DROP_ARP_IGNORED = 36; // well-formed ARP not asking for the gateway
export const DROP_IP4_HEADER = 37; // version/IHL/total length inconsistent with the frame
export const DROP_IP4_CHECKSUM = 38;
export const DROP_IP_FRAGMENT = 39; // IPv4 or IPv6 fragments are recognised, not yet reassembled
export const DROP_IP_SPOOFED = 40; // source address is not the guest's
export const DROP_IP6_HEADER = 41;
export const DROP_IP6_EXT_HEADER = 42; // extension header chain truncated or malformed
export const DROP_ICMP_MALFORMED = 43;
export const DROP_ICMP_UNHANDLED = 44; // ICMP not addressed to the gateway's services
export const DROP_UDP_MALFORMED = 45; // length field or checksum wrong
export const DROP_TCP_MALFORMED = 46;
export const DROP_DHCP_MALFORMED = 47;
export const DROP_PROTOCOL = 48; // IP protocol the gateway does not carry
export const DROP_FLOW_LIMIT = 49; // per-sandbox flow limit reached
export const DROP_FLOW_TABLE_FULL = 50;
export const DROP_TX_RING_FULL = 51; // a reply could not be queued toward the guest
export const DROP_HOST_OPS_FULL = 52;
export const DROP_OVERSIZE = 53; // frame longer than the link MTU allows
export const DROP_TTL = 54; // hop limit exhausted
export const DROP_UDP_NO_FLOW = 55; // host datagram for a flow that has gone
export const DROP_MULTICAST = 56; // IP multicast/broadcast traffic the gateway does not route
export const DROP_DNS_NO_UPSTREAM = 57;
export const DROP_TCP_OUT_OF_ORDER = 58; // guest segment not at the expected sequence number (dup ACK sent)
export const DROP_TCP_OUT_OF_WINDOW = 59; // segment or ACK outside the window
export const DROP_TCP_NO_FLOW = 60; // segment for no connection (RST sent)
export const COUNTER_COUNT = 70;
