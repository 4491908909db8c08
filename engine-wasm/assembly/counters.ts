// counters.ts — indexes of the engine's u64 counters (COUNTERS_BASE + 8 * index).
//
// Dual-language like layout.ts: the orchestrator reads the names off this module's exports, so a
// counter added here is reported everywhere without further wiring. Names starting DROP_ count
// frames dropped, by reason; every dropped frame is counted under exactly one reason.
//
// One ordered list: each index is the one before plus one, so a counter is added with one line,
// anywhere, and no two can share an index. COUNTER_COUNT (at most COUNTERS_MAX) comes last.

export const RX_FRAMES = 0;
export const RX_BYTES = RX_FRAMES + 1;
export const TX_FRAMES = RX_BYTES + 1;
export const TX_BYTES = TX_FRAMES + 1;
export const ARP_REPLIES = TX_BYTES + 1;
export const ICMP_ECHO_REPLIES = ARP_REPLIES + 1;
export const DHCP_REPLIES = ICMP_ECHO_REPLIES + 1;
export const NDP_REPLIES = DHCP_REPLIES + 1;
export const UDP_FLOWS_OPENED = NDP_REPLIES + 1;
export const UDP_FLOWS_EXPIRED = UDP_FLOWS_OPENED + 1;
export const UDP_TO_HOST = UDP_FLOWS_EXPIRED + 1;
export const UDP_FROM_HOST = UDP_TO_HOST + 1;
export const TCP_RESETS_SENT = UDP_FROM_HOST + 1;
export const FLOW_ERRORS = TCP_RESETS_SENT + 1;
export const ROUTER_ADVERTS = FLOW_ERRORS + 1;
export const HOST_SEND_ERRORS = ROUTER_ADVERTS + 1; // a host socket refused a datagram (buffer full, unreachable)
export const HOST_OPEN_ERRORS = HOST_SEND_ERRORS + 1; // a host socket could not be created or connected
export const LINK_RX_ERRORS = HOST_OPEN_ERRORS + 1; // the link failed a read (other than "nothing to read")
export const LINK_TX_ERRORS = LINK_RX_ERRORS + 1; // the link refused a frame (other than "try again")
export const TCP_FLOWS_OPENED = LINK_TX_ERRORS + 1; // guest SYNs dialled
export const TCP_CONNECTED = TCP_FLOWS_OPENED + 1; // dials that succeeded (SYN-ACK sent)
export const TCP_REFUSED = TCP_CONNECTED + 1; // dials refused by the destination (RST sent to the guest)
export const TCP_DIAL_FAILED = TCP_REFUSED + 1; // dials that failed otherwise or timed out (the guest hears nothing)
export const TCP_FLOWS_CLOSED = TCP_DIAL_FAILED + 1; // flows reaped after an orderly close or a reset
export const TCP_RETRANSMITS = TCP_FLOWS_CLOSED + 1; // go-back-N rewinds (timeout or three duplicate ACKs)
export const TCP_BYTES_TO_HOST = TCP_RETRANSMITS + 1;
export const TCP_BYTES_TO_GUEST = TCP_BYTES_TO_HOST + 1;
export const TCP_HOST_RESETS = TCP_BYTES_TO_GUEST + 1; // host sockets that failed or were reset by the peer
export const TCP_GUEST_RESETS = TCP_HOST_RESETS + 1; // RSTs received from the guest
export const TCP_SHORT_WRITES = TCP_GUEST_RESETS + 1; // host socket took less than a guest segment (back-pressure)
export const FLOWS_ALLOWED = TCP_SHORT_WRITES + 1; // new flows the policy let through
export const DROP_POLICY = FLOWS_ALLOWED + 1; // new flows (or datagrams) the policy denied: the per-sandbox "denied" count
export const DROP_RUNT = DROP_POLICY + 1; // shorter than an Ethernet header
export const DROP_NOT_FOR_US = DROP_RUNT + 1; // destination MAC neither ours nor broadcast/multicast
export const DROP_ETHERTYPE = DROP_NOT_FOR_US + 1; // not ARP, IPv4 or IPv6
export const DROP_ARP_MALFORMED = DROP_ETHERTYPE + 1;
export const DROP_ARP_IGNORED = DROP_ARP_MALFORMED + 1; // well-formed ARP not asking for the gateway
export const DROP_IP4_HEADER = DROP_ARP_IGNORED + 1; // version/IHL/total length inconsistent with the frame
export const DROP_IP4_CHECKSUM = DROP_IP4_HEADER + 1;
export const DROP_IP_FRAGMENT = DROP_IP4_CHECKSUM + 1; // IPv4 or IPv6 fragments are recognised, not yet reassembled
export const DROP_IP_SPOOFED = DROP_IP_FRAGMENT + 1; // source address is not the guest's
export const DROP_IP6_HEADER = DROP_IP_SPOOFED + 1;
export const DROP_IP6_EXT_HEADER = DROP_IP6_HEADER + 1; // extension header chain truncated or malformed
export const DROP_ICMP_MALFORMED = DROP_IP6_EXT_HEADER + 1;
export const DROP_ICMP_UNHANDLED = DROP_ICMP_MALFORMED + 1; // ICMP not addressed to the gateway's services
export const DROP_UDP_MALFORMED = DROP_ICMP_UNHANDLED + 1; // length field or checksum wrong
export const DROP_TCP_MALFORMED = DROP_UDP_MALFORMED + 1;
export const DROP_DHCP_MALFORMED = DROP_TCP_MALFORMED + 1;
export const DROP_PROTOCOL = DROP_DHCP_MALFORMED + 1; // IP protocol the gateway does not carry
export const DROP_FLOW_LIMIT = DROP_PROTOCOL + 1; // per-sandbox flow limit reached
export const DROP_FLOW_TABLE_FULL = DROP_FLOW_LIMIT + 1;
export const DROP_TX_RING_FULL = DROP_FLOW_TABLE_FULL + 1; // a reply could not be queued toward the guest
export const DROP_HOST_OPS_FULL = DROP_TX_RING_FULL + 1;
export const DROP_OVERSIZE = DROP_HOST_OPS_FULL + 1; // frame longer than the link MTU allows
export const DROP_TTL = DROP_OVERSIZE + 1; // hop limit exhausted
export const DROP_UDP_NO_FLOW = DROP_TTL + 1; // host datagram for a flow that has gone
export const DROP_MULTICAST = DROP_UDP_NO_FLOW + 1; // IP multicast/broadcast traffic the gateway does not route
export const DROP_DNS_NO_UPSTREAM = DROP_MULTICAST + 1;
export const DROP_TCP_OUT_OF_ORDER = DROP_DNS_NO_UPSTREAM + 1; // guest segment ahead of a gap that could not be held (reassembly full; dup ACK sent)
export const DROP_TCP_OUT_OF_WINDOW = DROP_TCP_OUT_OF_ORDER + 1; // segment or ACK outside the window
export const DROP_TCP_NO_FLOW = DROP_TCP_OUT_OF_WINDOW + 1; // segment for no connection (RST sent)
export const AUDIT_LOST = DROP_TCP_NO_FLOW + 1; // denials not recorded because the audit ring was full (still counted in DROP_POLICY)
export const ICMP_REJECTS_SENT = AUDIT_LOST + 1; // ICMP "administratively prohibited" sent for rejected flows
export const DNS_QUERIES = ICMP_REJECTS_SENT + 1; // guest DNS queries handed to the interceptor
export const DNS_ANSWERS = DNS_QUERIES + 1; // answers injected toward the guest
export const DNS_ALT_REFUSED = DNS_ANSWERS + 1; // DoT/DoQ/mDNS/LLMNR/NetBIOS-NS refused so the stub falls back to port 53
export const PINS_ADDED = DNS_ALT_REFUSED + 1;
export const DROP_DNS_OVERLOAD = PINS_ADDED + 1; // the DNS ring was full (too many queries in flight)
export const DROP_DNS_OVERSIZE = DROP_DNS_OVERLOAD + 1; // a query larger than DNS_MAX_QUERY
export const PINS_LOST = DROP_DNS_OVERSIZE + 1; // a pin could not be stored (pin set full): domain rules fail closed for it
export const ICMP_ECHO_FORWARDED = PINS_LOST + 1; // guest echo requests sent out through ping sockets
export const ICMP_ECHO_FROM_HOST = ICMP_ECHO_FORWARDED + 1; // echo replies brought back to the guest
export const TCP_PROBES = ICMP_ECHO_FROM_HOST + 1; // zero-window and keepalive probes sent to the guest
export const TCP_GUEST_TIMEOUTS = TCP_PROBES + 1; // connections reset because the guest stopped answering probes
export const TCP_STALE_DATA = TCP_GUEST_TIMEOUTS + 1; // host data peeked before a rewind or an acknowledgement moved snd_nxt: ignored
export const INBOUND_ACCEPTED = TCP_STALE_DATA + 1; // peers on published ports admitted as flows toward the guest
export const INBOUND_REFUSED = INBOUND_ACCEPTED + 1; // peers on published ports refused (policy, limit, port withdrawn; counted also under the reason)
export const TCP_INBOUND_CLOSED_PORT = INBOUND_REFUSED + 1; // inbound connections the guest refused (nothing listening): the peer gets a reset
export const DROP_QUIC = TCP_INBOUND_CLOSED_PORT + 1; // UDP to an intercepted TLS port (QUIC) while TLS is intercepted: dropped so clients use TCP
export const TLS_REDIRECTED = DROP_QUIC + 1; // new TCP connections sent to the TLS proxy (intercepted ports and DoT); counted before admission
export const SECRET_VIOLATIONS = TLS_REDIRECTED + 1; // guest TCP streams reset and UDP datagrams dropped for carrying a secret's placeholder
export const LINK_MALFORMED = SECRET_VIOLATIONS + 1; // malformed input from the guest's side of the link (bad descriptor chain, impossible frame length): dropped
export const LINK_PEERS = LINK_MALFORMED + 1; // VMMs that connected to a stream or vhost-user link, or took up an attached interface (its carrier came up)
export const TCP_OOO_QUEUED = LINK_PEERS + 1; // guest segments that arrived ahead of a gap, held until it filled (flow/tcp-reassembly.ts)
export const TCP_OOO_FILLED = TCP_OOO_QUEUED + 1; // held segments written once the gap before them filled
export const TCP_DELAYED_ACKS = TCP_OOO_FILLED + 1; // ACKs held back (RFC 9293 §3.8.6.3) and sent by the delayed-ACK timer
// Rate limits (limits.ts, --limit-*): what was dropped or refused, and what was held back.
export const DROP_RATE_EGRESS = TCP_DELAYED_ACKS + 1; // guest UDP datagrams and echo requests over the egress limit
export const DROP_RATE_INGRESS = DROP_RATE_EGRESS + 1; // host datagrams and echo replies over the ingress limit
export const DROP_RATE_CONN = DROP_RATE_INGRESS + 1; // new flows over the connection rate: UDP/ICMP dropped; TCP reset when the held-SYN queue is full
export const DNS_RATE_REFUSED = DROP_RATE_CONN + 1; // DNS queries over the DNS rate, answered REFUSED
export const RATE_EGRESS_PACED = DNS_RATE_REFUSED + 1; // a TCP flow's window held under a segment by the egress limit
export const RATE_INGRESS_PACED = RATE_EGRESS_PACED + 1; // a TCP flow's peek credit held back by the ingress limit
export const RATE_CONN_DELAYED = RATE_INGRESS_PACED + 1; // TCP connections whose SYN was held until the rate allowed the dial
export const COUNTER_COUNT = RATE_CONN_DELAYED + 1;
