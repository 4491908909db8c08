// numbers.ts — protocol numbers the wire layer and its users share.
export const ETH_ARP: u32 = 0x0806;
export const ETH_IP4: u32 = 0x0800;
export const ETH_IP6: u32 = 0x86dd;
export const PROTO_ICMP: u32 = 1;
export const PROTO_TCP: u32 = 6;
export const PROTO_UDP: u32 = 17;
export const PROTO_ICMP6: u32 = 58;
