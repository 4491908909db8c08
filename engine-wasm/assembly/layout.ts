// layout.ts — the shared-memory map of one engine, the single source of truth.
//
// This file is compiled twice: by asc into the engine (engine-wasm) and by tsc into the
// orchestrator, which hands the numbers on to native-vmm at link attach time. It must therefore
// stay valid in both languages: plain `export const NAME = <integer expression>` only, no types,
// no imports, no functions.
//
// Invariants
// - The memory is fixed-size (initial == maximum pages) and never grows: every thread keeps
//   views into it, and a grown shared memory would leave them stale.
// - Every region is at a constant offset. The engine module has no data segments and keeps no
//   state in globals: everything lives here, so any thread can attach to it.
// - Ring control words each sit on their own 128-byte line (no false sharing between producer
//   and consumer threads).

export const PAGE_BYTES = 65536;
export const CACHE_LINE = 128;

// ---- control page: rings' counters and flags -----------------------------------------------
// A ring control block: head (consumer's free-running counter), tail (producer's), the
// consumer's sleep flag, and a "pending head" the consumer may stage until host operations that
// still read the slots have run (see engine.ts, "slot lifetime").
export const RING_CTRL_HEAD = 0;
export const RING_CTRL_TAIL = 128;
export const RING_CTRL_SLEEP = 256;
export const RING_CTRL_PENDING_HEAD = 384;
export const RING_CTRL_BYTES = 512;

export const CTRL_BASE = 4096;
export const RX_CTRL = CTRL_BASE; // link -> engine: frames from the guest
export const TX_CTRL = CTRL_BASE + RING_CTRL_BYTES; // engine -> link: frames to the guest
export const IN_CTRL = CTRL_BASE + 2 * RING_CTRL_BYTES; // host sockets -> engine: data (datagrams, stream bytes)
export const EV_CTRL = CTRL_BASE + 3 * RING_CTRL_BYTES; // host sockets -> engine: events without data

// ---- engine state (replaces globals) ---------------------------------------------------------
export const STATE_BASE = 8192;
export const ST_FLOW_FREE_HEAD = STATE_BASE + 0; // u32: free-index queue, next to take (free-running)
export const ST_FLOWS_LIVE = STATE_BASE + 4; // u32: flows in use (all protocols)
export const ST_UDP_LIVE = STATE_BASE + 8; // u32: UDP flows in use
export const ST_SCAN_CURSOR = STATE_BASE + 12; // u32: next flow index for the idle scan
export const ST_OPS_COUNT = STATE_BASE + 16; // u32: host operations queued in OPS_BASE
export const ST_INITIALIZED = STATE_BASE + 20; // u32: 1 once engineInit ran
export const ST_TCP_LIVE = STATE_BASE + 24; // u32: TCP flows in use
export const ST_IP_ID = STATE_BASE + 28; // u32: next IPv4 identification
export const ST_NOW_MS = STATE_BASE + 32; // f64: time of the current batch
export const ST_DHCP_LEASED = STATE_BASE + 40; // u32: 1 once the guest took its lease
export const ST_FLOW_FREE_TAIL = STATE_BASE + 48; // u32: free-index queue, next place to return one
export const ST_POLICY_ACTIVE = STATE_BASE + 52; // u32: which policy slot (0/1) is in force; the orchestrator flips it
export const ST_TX_CSUM_LEFT_OK = STATE_BASE + 56; // u32: 1 while the link takes frames with TX_F_CSUM_LEFT as they are (native-vmm sets it as a link attaches)
export const ST_RUN = STATE_BASE + 60; // u32: engineRun calls (free-running): reassembly slots freed in a run are reused only after it
export const ST_TX_NEXT = STATE_BASE + 44; // u32: TX tail being filled (published at batch end)
export const KEY_SCRATCH = STATE_BASE + 64; // 40 bytes: the flow key being looked up
// Where the new guest flow in hand goes (flow/outbound.ts): decided once per new flow, read by
// whoever creates it.
export const OUT_LOOPBACK = STATE_BASE + 112; // 16 bytes: the host's loopback, when that is the dial address
export const OUT_PORT = STATE_BASE + 128; // u32: the dial port
export const OUT_DIAL = STATE_BASE + 132; // u32: offset of the 16-byte dial address
export const OUT_SERVICE = STATE_BASE + 136; // u32: the service (flow/outbound.ts SVC_*)
export const OUT_ROUTE = STATE_BASE + 140; // u32: flow/table.ts ROUTE_*
export const OUT_PROTO = STATE_BASE + 144; // u32: the flow's protocol
export const OUT_GATEWAY = STATE_BASE + 148; // u32: 1: the gateway's own service (policy does not govern it)
export const PKT_SCRATCH = STATE_BASE + 160; // the frame being handled, for replies built deep in a flow:
export const PKT_FRAME = PKT_SCRATCH + 0; // u32 frame offset
export const PKT_IP = PKT_SCRATCH + 4; // u32 L3 header offset
export const PKT_L4 = PKT_SCRATCH + 8; // u32 L4 header offset
export const PKT_L4LEN = PKT_SCRATCH + 12; // u32 L4 bytes
export const PKT_FAMILY = PKT_SCRATCH + 16; // u32 4 or 6
export const SACK_SCRATCH = STATE_BASE + 192; // 32 bytes: SACK blocks being put into a segment (flow/tcp-reassembly.ts)
// Delayed ACKs (flow/tcp.ts): flows owing the guest an ACK, and when the first is due.
export const ST_ACK_DUE = STATE_BASE + 224; // f64: earliest delayed-ACK deadline (ms), 0 = none; the worker sets a timer for it
export const ST_DELACK_COUNT = STATE_BASE + 232; // u32: entries in DELACK_LIST
export const DELACK_MAX = 512;
export const DELACK_LIST = STATE_BASE + 256; // DELACK_MAX x u32 flow index
// Inbound slots lent to frames (see "rings" below): the inbound event just handled built its
// frame in its own slot (ST_TX_LENT 1), at TX ring position ST_TX_LENT_POS.
export const ST_TX_LENT = STATE_BASE + 104; // u32
export const ST_TX_LENT_POS = STATE_BASE + 108; // u32
export const IN_LENT_BASE = STATE_BASE + 256 + DELACK_MAX * 4; // IN_SLOTS x (u32 lent, u32 TX position)

// ---- configuration written by the orchestrator before engineInit ----------------------------
export const CFG_BASE = 12288;
export const CFG_GATEWAY_MAC = CFG_BASE + 0; // 6 bytes
export const CFG_GUEST_MAC = CFG_BASE + 8; // 6 bytes
export const CFG_GATEWAY_IP4 = CFG_BASE + 16; // 4 bytes, network order
export const CFG_GUEST_IP4 = CFG_BASE + 20; // 4 bytes, network order
export const CFG_PREFIX_LEN4 = CFG_BASE + 24; // u32
export const CFG_MTU = CFG_BASE + 28; // u32: the guest link's MTU (IP bytes per frame)
export const CFG_UDP_IDLE_MS = CFG_BASE + 32; // u32
export const CFG_MAX_UDP_FLOWS = CFG_BASE + 36; // u32
export const CFG_DNS_IP4 = CFG_BASE + 40; // 4 bytes: DNS server announced by DHCP (the gateway)
export const CFG_LEASE_SECS = CFG_BASE + 44; // u32
export const CFG_GATEWAY_IP6 = CFG_BASE + 48; // 16 bytes: the gateway's ULA address
export const CFG_GATEWAY_LL6 = CFG_BASE + 64; // 16 bytes: the gateway's link-local address
export const CFG_GUEST_IP6 = CFG_BASE + 80; // 16 bytes: the guest's ULA address
export const CFG_PREFIX6 = CFG_BASE + 96; // 16 bytes: the /64 announced in router advertisements
export const CFG_DNS_FWD_IP = CFG_BASE + 112; // 16 bytes: where DNS to the gateway is forwarded (v4-mapped or v6)
export const CFG_DNS_FWD_PORT = CFG_BASE + 128; // u32: its port (0 = DNS to the gateway is dropped)
export const CFG_MAX_TCP_FLOWS = CFG_BASE + 132; // u32
export const CFG_MAX_CONNECTIONS = CFG_BASE + 136; // u32: TCP + UDP flows at once (0 = no limit beyond the table's)
export const CFG_DNS_INTERCEPT = CFG_BASE + 140; // u32: 1 = UDP/53 goes to the DNS ring and TCP/53 to CFG_DNS_FWD (the orchestrator's proxy)
export const CFG_REDIRECT_TOKEN = CFG_BASE + 144; // 16 bytes: ends every redirect preamble (OP_ORIG)
// TLS interception (DESIGN §8): TCP to an intercepted port (and DoT, TCP/853) goes to the
// orchestrator's TLS proxy, redirected with its original destination; UDP to an intercepted port
// (QUIC) is dropped when CFG_TLS_BLOCK_QUIC is set, so clients fall back to TCP.
export const CFG_TLS_PROXY_IP = CFG_BASE + 160; // 16 bytes (v4-mapped or v6)
export const CFG_TLS_PROXY_PORT = CFG_BASE + 176; // u32: 0 = no interception
export const CFG_TLS_BLOCK_QUIC = CFG_BASE + 180; // u32
export const CFG_TLS_PORT_COUNT = CFG_BASE + 184; // u32
export const CFG_TLS_PORTS = CFG_BASE + 188; // u16 each, CFG_TLS_PORTS_MAX of them
export const CFG_TLS_PORTS_MAX = 16;
// The deny page (policy deny response 2, "http"): a denied TCP connection to port 80, or to an
// intercepted TLS port, goes to the proxy (at CFG_TLS_PROXY_IP, this port), which answers its
// request with 403 and the reason; the preamble's admit field then holds DENIED_BIT | rule + 1
// (0: the default action). 0 = no deny page.
export const CFG_DENY_PROXY_PORT = CFG_BASE + 220; // u32
export const DENIED_BIT = 0x80000000;

// ---- counters: u64 each, indexes in counters.ts / orchestrator counter names -----------------
export const COUNTERS_BASE = 16384;
export const COUNTERS_MAX = 256;

// ---- host operations: engine -> native (sends, opens, closes) --------------------------------
export const OPS_BASE = 32768;
export const OP_BYTES = 32;
export const OPS_MAX = 1024; // the engine stops taking frames from a batch before this fills
// op record fields
export const OP_KIND = 0; // u32
export const OP_FLOW = 4; // u32 flow index (the token native uses for its fd)
export const OP_DATA = 8; // u32 offset of payload in this memory
export const OP_LEN = 12; // u32 payload length
export const OP_FAMILY = 16; // u32 4 or 6
export const OP_PORT = 20; // u32 remote port
export const OP_ADDR = 24; // u32 offset of the 16-byte remote address (v4 as ::ffff:a.b.c.d)
export const OP_ORIG = 28; // OPK_TCP_CONNECT: u32 offset of the flow's key when the flow is redirected to an orchestrator service, else 0
// A redirected TCP flow (DNS over TCP to any resolver, TLS to an intercepted port, DoT: dialled
// to an orchestrator service) keeps where the guest was going: native-vmm writes this preamble on
// the new connection before any guest byte, and the service reads it first (PRE_* fields).
// The token, random per sandbox, proves the preamble came from the engine: anything else that
// reaches the listener (a guest allowed to reach the host's loopback, say) cannot name a
// destination of its choosing.
export const PRE_MAGIC = 0; // 4 bytes: "moat"
export const PRE_VERSION = 4; // u8: REDIRECT_PREAMBLE_VERSION
export const PRE_FAMILY = 5; // u8: 4 or 6
export const PRE_PORT = 6; // u16 (big-endian): the port the guest dialled
export const PRE_ADDR = 8; // 16 bytes: the address the guest dialled (IPv4 as ::ffff:a.b.c.d)
export const PRE_TOKEN = 24; // 16 bytes: CFG_REDIRECT_TOKEN
export const PRE_ADMIT_NAME = 40; // u32 (big-endian): the name id of the domain rule that admitted the flow, 0 if none did (the flow record's, at OP_ORIG + ORIG_ADMIT_NAME)
export const REDIRECT_PREAMBLE_BYTES = PRE_ADMIT_NAME + 4;
export const REDIRECT_PREAMBLE_VERSION = 2;
export const ORIG_ADMIT_NAME = 116; // u32 in the flow record (flow/table.ts F_ADMIT_NAME)
// op kinds
export const OPK_UDP_OPEN = 1; // create a UDP socket connected to (addr, port), token = flow
export const OPK_UDP_SEND = 2; // send(len bytes at data) on the flow's socket
export const OPK_CLOSE = 3; // close the flow's socket
export const OPK_ICMP_OPEN = 11; // an ICMP echo ("ping") socket connected to addr; sends/replies as OPK_UDP_SEND / INK_UDP_DATA
// TCP (see engine-wasm/assembly/flow/tcp.ts, "host socket protocol")
export const OPK_TCP_CONNECT = 4; // non-blocking connect to (addr, port); DATA = seq of the first byte to peek, LEN = segment size
export const OPK_TCP_SEND = 5; // write len bytes at data; answered by INK_TCP_SENT
export const OPK_TCP_CREDIT = 6; // DATA = sequence number up to which host data may be peeked; LEN = segment size (0: unchanged)
export const OPK_TCP_ACKED = 7; // the guest acknowledged host bytes up to sequence number DATA (LEN: how many this time): discard them from the socket
export const OPK_TCP_REWIND = 8; // retransmit: peek again from DATA (the oldest unacknowledged sequence number)
export const OPK_TCP_SHUTDOWN = 9; // the guest sent FIN: shutdown(SHUT_WR) once every earlier write went through
export const OPK_TCP_ABORT = 10; // the guest reset: close with SO_LINGER 0 (the peer sees RST)
// Published ports (see "published ports" below): the engine's answer to an INK_ACCEPT.
export const OPK_ACCEPT = 12; // adopt listener PORT's waiting peer as flow FLOW. TCP: DATA = seq of the first byte to peek, LEN = segment size
export const OPK_REFUSE = 13; // refuse listener PORT's waiting peer (TCP: reset it; UDP: its datagram is dropped)

// ---- flow table -------------------------------------------------------------------------------
// Records live in a slab (stable index = the flow's token everywhere); an open-addressing index
// (linear probing, backward-shift deletion, so no tombstones) maps key hash -> index + 1.
export const FLOW_CAPACITY = 16384; // power of two
export const FLOW_INDEX_SLOTS = 2 * FLOW_CAPACITY; // load factor <= 0.5
export const FLOW_RECORD_BYTES = 256;
export const FLOW_INDEX_BASE = 65536 * 2; // FLOW_INDEX_SLOTS u32s
export const FLOW_FREE_BASE = FLOW_INDEX_BASE + FLOW_INDEX_SLOTS * 4; // FLOW_CAPACITY u32s
export const FLOW_SLAB_BASE = FLOW_FREE_BASE + FLOW_CAPACITY * 4;
export const FLOW_SLAB_END = FLOW_SLAB_BASE + FLOW_CAPACITY * FLOW_RECORD_BYTES;

// ---- rings --------------------------------------------------------------------------------------
// Descriptor rings (16 B per slot) with one fixed buffer per slot: slot i always uses buffer i.
// A frame is at most SLOT_BYTES (Ethernet header + MTU_MAX fits in 65536).
export const SLOT_BYTES = 65536;
// The guest link's MTU (IP bytes per frame, CFG_MTU): what the orchestrator accepts and announces.
export const MTU_MIN = 1280; // IPv6's minimum (RFC 8200 §5)
export const MTU_MAX = 65520; // the largest (passt's too): a frame of it fits a slot
export const MTU_DEFAULT = MTU_MAX; // 64 KiB frames cut per-packet costs ~40x (DESIGN §3)
export const MTU_ETHERNET = 1500; // an Ethernet interface's MTU unless raised
export const DESC_BYTES = 16;
export const DESC_LEN = 0; // u32 bytes in the buffer
export const DESC_FLAGS = 4; // u32
// RX ring DESC_FLAGS: the guest's kernel left the frame's TCP/UDP checksum to its NIC (a TAP's
// virtio-net header said NEEDS_CSUM or DATA_VALID): the field may hold only the pseudo-header's
// sum, and the engine does not verify it. Set only by a link whose frames come from the guest's
// own kernel, never by one whose bytes could have been damaged on the way (a wire, a fault).
export const RX_F_CSUM_LEFT = 1;
// TX ring DESC_FLAGS: the frame's TCP/UDP checksum field holds only the pseudo-header's sum, as a
// kernel leaves it for its NIC; DESC_TOKEN is where the summed part starts (the L4 header's offset
// in the frame) | the field's offset from there << 16. The engine sets it only while
// ST_TX_CSUM_LEFT_OK is 1 (a TAP with a virtio-net header: the guest's kernel gets the frame as
// NEEDS_CSUM, and neither side sums its bytes); any other link fills the checksum in before it
// sends the frame.
export const TX_F_CSUM_LEFT = 1;
export const DESC_TOKEN = 8; // u32 (inbound ring: flow index)
export const DESC_AUX = 12; // u32 (inbound ring: event kind)
export const RX_SLOTS = 256;
export const TX_SLOTS = 256;
export const IN_SLOTS = 64;
// Host TCP bytes are peeked IN_TCP_DATA_AT into an inbound slot, and the engine builds the frame
// that carries them to the guest around them, in place: Ethernet, IP and TCP headers (at most
// 14 + 40 + 60 bytes) in the room before them. The TX descriptor then says TX_F_EXTERNAL and
// gives the frame's offset in DESC_AUX, and the engine records the slot as lent (IN_LENT_BASE:
// u32 1, u32 the frame's TX ring position). The engine stages how far it consumed the inbound
// ring in its RING_CTRL_PENDING_HEAD; native-vmm publishes the head, past a lent slot only once
// the link took its frame. So the bytes are copied twice in all, socket to slot and slot to
// guest, and never inside the engine.
export const IN_TCP_DATA_AT = 128;
export const TX_F_EXTERNAL = 2;
// The event ring has descriptors only (no buffers), and room for every event one batch of host
// operations plus one epoll round can cause (2 * OPS_MAX + 64 < EV_SLOTS): events are never lost.
export const EV_SLOTS = 4096;
export const RX_DESC_BASE = FLOW_SLAB_END;
export const TX_DESC_BASE = RX_DESC_BASE + RX_SLOTS * DESC_BYTES;
export const IN_DESC_BASE = TX_DESC_BASE + TX_SLOTS * DESC_BYTES;
export const EV_DESC_BASE = IN_DESC_BASE + IN_SLOTS * DESC_BYTES;
export const RX_BUF_BASE = (EV_DESC_BASE + EV_SLOTS * DESC_BYTES + 65535) & ~65535;
export const TX_BUF_BASE = RX_BUF_BASE + RX_SLOTS * SLOT_BYTES;
export const IN_BUF_BASE = TX_BUF_BASE + TX_SLOTS * SLOT_BYTES;
// ---- policy (policy/match.ts): two slots, the orchestrator fills the idle one and flips ------
export const POLICY_MAX_RULES = 1024;
export const POLICY_HEADER_BYTES = 64; // PH_* fields, then the rules
export const POLICY_RULE_BYTES = 64;
export const POLICY_SLOT_BYTES = POLICY_HEADER_BYTES + POLICY_MAX_RULES * POLICY_RULE_BYTES;
export const POLICY_BASE = IN_BUF_BASE + IN_SLOTS * SLOT_BYTES;
// slot header fields
export const PH_RULE_COUNT = 0; // u32
export const PH_DEFAULT_ACTION = 4; // u32: POLICY_ALLOW / POLICY_DENY, for outbound flows
export const PH_DENY_RESPONSE = 8; // u32: DENY_*
export const PH_GENERATION = 12; // u32: advanced at every write of the slot
export const PH_DEFAULT_INBOUND = 16; // u32: POLICY_ALLOW / POLICY_DENY, for peers on published ports
// rule record fields
export const PR_ACTION = 0; // u8: POLICY_ALLOW / POLICY_DENY
export const PR_DIRECTION = 1; // u8: DIR_OUTBOUND / DIR_INBOUND
export const PR_PROTO = 2; // u8: 0 any, else the IP protocol number (wire/numbers.ts PROTO_*)
export const PR_KIND = 3; // u8: RULE_*, what the destination is
export const PR_GROUP = 4; // u8: group id (GROUP_*)
export const PR_PREFIX = 5; // u8: prefix length over the 128-bit (v4-mapped) address
export const PR_PORT_LO = 6; // u16
export const PR_PORT_HI = 8; // u16
export const PR_HAS_PORTS = 10; // u8: 1 when the rule has a port range (port 0 alone is a range too)
export const PR_NAME = 12; // u32: name id (domain rules), matched through the pin set
export const PR_ADDR = 16; // 16 bytes: network address, masked; IPv4 as ::ffff:a.b.c.d
// actions (also AU_ACTION), directions (also AU_DIRECTION), destination kinds
export const POLICY_ALLOW = 0;
export const POLICY_DENY = 1;
export const DIR_OUTBOUND = 0; // flows the guest opens
export const DIR_INBOUND = 1; // peers on published ports
export const RULE_ANY = 0;
export const RULE_CIDR = 1; // PR_ADDR / PR_PREFIX
export const RULE_DOMAIN = 2; // PR_NAME, through the pin set
export const RULE_DOMAIN_SUFFIX = 3; // PR_NAME, through the pin set
export const RULE_GROUP = 4; // PR_GROUP
// deny responses: what a denied guest sees (DESIGN §6)
export const DENY_DROP = 0; // nothing (the reference semantics)
export const DENY_REJECT = 1; // TCP RST, ICMP administratively prohibited
export const DENY_HTTP = 2; // TCP to port 80 or an intercepted TLS port: the deny page (CFG_DENY_PROXY_PORT); else as DENY_REJECT
export const GROUP_HOST = 0;
export const GROUP_METADATA = 1;
export const GROUP_LOOPBACK = 2;
export const GROUP_PRIVATE = 3;
export const GROUP_LINK_LOCAL = 4;
export const GROUP_MULTICAST = 5;
export const GROUP_PUBLIC = 6;

// ---- audit ring: one record per denied flow, engine -> worker -> audit log -----------------------
export const AUDIT_CTRL = POLICY_BASE + 2 * POLICY_SLOT_BYTES; // RING_CTRL_* layout
export const AUDIT_SLOTS = 1024;
export const AUDIT_RECORD_BYTES = 64;
export const AUDIT_BASE = AUDIT_CTRL + RING_CTRL_BYTES;
// record fields
export const AU_TIME_MS = 0; // f64: engine time (performance.now() of the worker)
export const AU_RULE = 8; // i32: index of the deciding rule, -1 = the default action, AU_RULE_NOT_ROUTED
export const AU_RULE_NOT_ROUTED = -2; // not a policy decision: multicast and broadcast are never forwarded
export const AU_RULE_SECRET = -4; // not a policy decision: a secret's placeholder in a TCP stream or UDP datagram (AU_DETAIL: which secret)
export const AU_RULE_QUIC = -3; // not a policy decision: QUIC to an intercepted TLS port is dropped (CFG_TLS_BLOCK_QUIC)
export const AU_PROTO = 12; // u8
export const AU_FAMILY = 13; // u8
export const AU_ACTION = 14; // u8: POLICY_DENY (only denials are recorded)
export const AU_DIRECTION = 15; // u8: DIR_*
export const AU_SPORT = 16; // u16
export const AU_DPORT = 18; // u16
export const AU_SRC = 24; // 16 bytes
export const AU_DST = 40; // 16 bytes
export const AU_DETAIL = 56; // u32: AU_RULE_SECRET: the secret's index

export const POLICY_ADDR_SCRATCH = AUDIT_BASE + AUDIT_SLOTS * AUDIT_RECORD_BYTES; // 16 bytes: the address being judged, canonical
export const PIN_MATCHED = POLICY_ADDR_SCRATCH + 16; // u32: pin index + 1 of the last domain-rule match (0 = none)
export const DENY_RULE = POLICY_ADDR_SCRATCH + 20; // u32: ADMIT_DENY_PAGE: DENIED_BIT | deciding rule + 1

// ---- DNS ring: guest queries (UDP/53 to any address) -> the orchestrator's interceptor --------
export const DNS_CTRL = POLICY_ADDR_SCRATCH + 64; // RING_CTRL_* layout
export const DNS_SLOTS = 64; // queries in flight per sandbox, at most
export const DNS_SLOT_BYTES = 4160;
export const DNS_MAX_QUERY = 4096;
export const DNS_BASE = DNS_CTRL + RING_CTRL_BYTES;
// slot header (also the header of an answer in DNS_ANSWER_BASE)
export const DQ_LEN = 0; // u32 payload bytes
export const DQ_FAMILY = 4; // u32 4 or 6
export const DQ_GUEST_PORT = 8; // u32
export const DQ_DEST_PORT = 12; // u32
export const DQ_GUEST_ADDR = 16; // 16 bytes
export const DQ_DEST_ADDR = 32; // 16 bytes
export const DQ_TO_GATEWAY = 48; // u32: 1 when addressed to the gateway (answered from the upstreams)
export const DQ_PAYLOAD = 64;
export const DNS_ANSWER_BASE = DNS_BASE + DNS_SLOTS * DNS_SLOT_BYTES; // one answer being injected: header + payload
export const DNS_ANSWER_BYTES = 65600;

// ---- pin set: (address, rule name id) -> expiry, for domain rules ------------------------------
export const PIN_SLOTS = 16384; // power of two
export const PIN_BYTES = 32;
export const PIN_BASE = DNS_ANSWER_BASE + DNS_ANSWER_BYTES;
export const PN_ADDR = 0; // 16 bytes
export const PN_NAME = 16; // u32 name id (0 = empty slot)
export const PN_LIVE = 20; // u32 live flows admitted through this pin
export const PN_EXPIRY = 24; // f64 engine time after which the pin alone no longer matches
export const PIN_SCRATCH = PIN_BASE + PIN_SLOTS * PIN_BYTES; // 16 bytes: an address handed in by the worker

// ---- the host's own addresses: Group Host like the gateway's (policy/match.ts) ------------------
// Every address configured in the namespace moat dials from, kept current by the orchestrator
// (orchestrator/src/policy/host-addresses.ts). Two slots: the orchestrator fills the one not in
// force, then flips HOST_ADDR_ACTIVE, so the engine never reads a half-written table.
export const HOST_ADDR_MAX = 256;
export const HOST_ADDR_ENTRY_BYTES = 32; // 16-byte address (IPv4 as ::ffff:a.b.c.d), u8 prefix length (of 128), pad
export const HOST_ADDR_SLOT_BYTES = 16 + HOST_ADDR_MAX * HOST_ADDR_ENTRY_BYTES; // u32 count, 12 bytes pad, entries
export const HOST_ADDR_ACTIVE = PIN_SCRATCH + 64; // u32: the slot in force, 0 or 1
export const HOST_ADDR_BASE = HOST_ADDR_ACTIVE + 16;

// ---- published ports: host listeners whose peers become flows toward the guest ------------------
// native-vmm owns the listening sockets (id = index here); the orchestrator fills an entry before
// it asks native-vmm to listen, and clears it before it stops. When a new peer arrives (a TCP
// connection accepted, a UDP datagram from an address not yet seen) native-vmm puts an
// INK_ACCEPT in the inbound ring (token = listener id, slot = an ACC_* header, then for UDP the
// datagram) and takes nothing more from that listener until the engine answers with OPK_ACCEPT
// (a new flow: inbound policy and limits passed) or OPK_REFUSE.
export const PUB_MAX = 64;
export const PUB_ENTRY_BYTES = 8;
export const PUB_GUEST_PORT = 0; // u16: the guest port the listener leads to
export const PUB_PROTO = 2; // u8: 6 or 17; 0 = no listener
export const PUB_BASE = HOST_ADDR_BASE + 2 * HOST_ADDR_SLOT_BYTES;
// INK_ACCEPT slot header
export const ACC_FAMILY = 0; // u8: the peer's family, 4 or 6
export const ACC_PROTO = 1; // u8: 6 or 17
export const ACC_PORT = 2; // u16: the peer's port (host order)
export const ACC_ADDR = 4; // 16 bytes: the peer's address (IPv4 as ::ffff:a.b.c.d)
export const ACC_BYTES = 20; // UDP: the datagram follows

// ---- secrets: placeholder forms the engine looks for in the guest's own TCP and UDP payloads ------
// (TLS to intercepted ports is judged by the orchestrator's proxy, DNS names by the interceptor.)
// The orchestrator writes the forms (secrets/secrets.ts placeholderForms) before the engine starts;
// SECRET_FORM_COUNT 0 means no scanning. A TCP flow keeps the last bytes it sent (SECRET_CARRY_*),
// so a placeholder split across segments is still found.
export const SECRET_FORMS_MAX = 128;
export const SECRET_FORM_BYTES = 256; // u32 length, u32 secret index, then up to 248 bytes
export const SECRET_FORM_MAX_LEN = 248;
export const SECRET_FORM_COUNT = PUB_BASE + PUB_MAX * PUB_ENTRY_BYTES; // u32
export const SECRET_FIRST = SECRET_FORM_COUNT + 64; // 256 bytes: 1 where some form starts with that byte
export const SECRET_FORMS_BASE = SECRET_FIRST + 256;
export const SECRET_SCRATCH = SECRET_FORMS_BASE + SECRET_FORMS_MAX * SECRET_FORM_BYTES; // 512 bytes
export const SECRET_CARRY_BYTES = 256; // per flow: u32 length, then the last bytes sent (< SECRET_FORM_MAX_LEN)
export const SECRET_CARRY_BASE = SECRET_SCRATCH + 512;

// ---- TCP reassembly: guest segments that arrived ahead of a gap (flow/tcp-reassembly.ts) ------------
// A pool shared by all flows, each flow holding at most OOO_PER_FLOW_MAX; a segment that finds no
// room is dropped as before (DROP_TCP_OUT_OF_ORDER) and the guest retransmits it.
export const OOO_SLOTS = 128;
export const OOO_PER_FLOW_MAX = 32;
export const OOO_META_BYTES = 32; // u32 owner flow + 1 (0 = free), u32 seq, u32 len, u32 FIN, u32 next slot + 1, u32 run freed in
export const OOO_META_BASE = SECRET_CARRY_BASE + FLOW_CAPACITY * SECRET_CARRY_BYTES;
export const OOO_BUF_BASE = OOO_META_BASE + OOO_SLOTS * OOO_META_BYTES; // OOO_SLOTS x SLOT_BYTES

// ---- rate limits (limits.ts): per-sandbox token buckets, the TCP flows they hold back, held SYNs --------
// Four buckets: bytes from the guest (egress), bytes to the guest (ingress), new flows the guest
// opens (conn) and DNS queries (dns). The orchestrator sets a bucket's rate and size through
// engineSetLimit (on the worker's thread, between runs); a rate of 0 means no limit.
export const LIM_BASE = OOO_BUF_BASE + OOO_SLOTS * SLOT_BYTES;
export const LIM_BUCKET_BYTES = 32;
export const LIM_EGRESS = LIM_BASE; // TCP payload written to host sockets, UDP/ICMP payload sent
export const LIM_INGRESS = LIM_BASE + 32; // TCP payload sent to the guest, UDP/ICMP payload delivered
export const LIM_CONN = LIM_BASE + 64; // flows the guest opens (TCP connections, UDP and ICMP flows)
export const LIM_DNS = LIM_BASE + 96; // DNS queries (UDP, TCP, DoT), asked by the interceptors
export const LB_RATE = 0; // f64: tokens per millisecond; 0 = no limit
export const LB_BURST = 8; // f64: the bucket's size
export const LB_TOKENS = 16; // f64: tokens now (below 0: debt, taken by flows that were offered more)
export const LB_AT = 24; // f64: engine time of the last refill
export const ST_LIMIT_DUE = LIM_BASE + 128; // f64: when a held-back flow or a held SYN can go on (0 = none); the worker sets a timer for it
export const ST_PACED_COUNT = LIM_BASE + 136; // u32: entries in PACED_LIST
export const ST_CONNQ_HEAD = LIM_BASE + 140; // u32: held SYNs, next to dial (free-running)
export const ST_CONNQ_TAIL = LIM_BASE + 144; // u32: held SYNs, next place to hold one
export const PACED_MAX = 1024; // beyond it a held-back flow is resumed by the tick alone (100 ms)
export const PACED_LIST = LIM_BASE + 192; // PACED_MAX x u32 flow index: TCP flows held back by egress or ingress
export const CONNQ_SLOTS = 1024; // power of two; a SYN over the rate with the queue full is reset
export const CONNQ_BASE = PACED_LIST + PACED_MAX * 4; // CONNQ_SLOTS x u32 flow index

export const BENCH_BASE = CONNQ_BASE + CONNQ_SLOTS * 4; // 1 MiB scratch for benchmarks and tests
export const BENCH_BYTES = 1048576;
export const MEMORY_END = BENCH_BASE + BENCH_BYTES;
export const MEMORY_PAGES = (MEMORY_END + 65535) >> 16;

// inbound ring event kinds (DESC_AUX)
export const INK_UDP_DATA = 1; // a datagram from the flow's remote
export const INK_FLOW_ERROR = 2; // the flow's socket failed (token = flow), DESC_FLAGS = errno
export const INK_OPEN_FAILED = 3; // the flow's socket could not be opened (token = flow), DESC_FLAGS = errno
export const INK_TCP_CONNECTED = 4; // the dial succeeded
export const INK_TCP_DATA = 5; // LEN bytes of host data in the slot, DESC_FLAGS = sequence number of the first
export const INK_TCP_SENT = 6; // LEN bytes of an OPK_TCP_SEND were written; DESC_FLAGS = socket send space; AUX bit 16 = partial
export const INK_TCP_EOF = 7; // the host peer closed its side, and everything before was peeked
export const INK_TCP_RESET = 8; // the host socket failed (reset, error); DESC_FLAGS = errno
export const INK_TCP_SHUT_DONE = 9; // shutdown(SHUT_WR) done for the guest's FIN
export const INK_TCP_WRITABLE = 10; // a blocked socket can take data again; DESC_FLAGS = send space
export const INK_ACCEPT = 11; // a new peer on a published port: token = listener id, slot = ACC_* header (+ datagram)
// INK_UDP_DATA: DESC_FLAGS = where the datagram starts in the slot (0, or ACC_BYTES from a listener)
export const INK_KIND_MASK = 0xffff;
export const INK_PARTIAL = 0x10000;
// INK_TCP_DATA and INK_TCP_EOF carry, in AUX bits 24..31, the flow's peek epoch: how many
// OPK_TCP_REWINDs native-vmm had executed for it when it peeked. The engine counts the rewinds it
// issues and ignores data from an older epoch: bytes peeked before a rewind and still queued
// when it was issued must not be taken as the retransmission (they may carry the same sequence
// number, and native-vmm would then re-send from a point the engine has already passed).
export const INK_EPOCH_SHIFT = 24;
