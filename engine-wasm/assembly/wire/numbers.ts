// numbers.ts — the wire's own numbers (IANA's, the RFCs'): EtherTypes, IP protocol numbers, TCP
// header flags. Defined here once for every language moat is written in.
//
// Dual-language like layout.ts: compiled by asc into the engine, by tsc for the orchestrator and
// the tests (which import it as engine-wasm/assembly/wire/numbers.js), and turned into C++
// constants by native-vmm/gen-layout.mjs (moat::wire in layout.gen.h). So: plain
// `export const NAME = <integer expression>;` only, no types, no imports, no functions.

// EtherTypes (the Ethernet header's type field)
export const ETH_ARP = 0x0806;
export const ETH_IP4 = 0x0800;
export const ETH_IP6 = 0x86dd;

// IP protocol numbers (IPv4 protocol, IPv6 next header). In a policy rule (layout.ts PR_PROTO),
// 0 means any protocol.
export const PROTO_ICMP = 1;
export const PROTO_TCP = 6;
export const PROTO_UDP = 17;
export const PROTO_ICMP6 = 58;

// TCP header flags (RFC 9293 §3.1, the byte at offset 13). Not TH_*: those are macros in
// <netinet/tcp.h>, which the C++ that includes layout.gen.h also includes.
export const TCP_FIN = 0x01;
export const TCP_SYN = 0x02;
export const TCP_RST = 0x04;
export const TCP_PSH = 0x08;
export const TCP_ACK = 0x10;
