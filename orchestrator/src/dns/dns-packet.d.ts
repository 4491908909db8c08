// dns-packet.d.ts — the part of dns-packet 5.x that moat uses (no @types/dns-packet is installed).
// Runtime: a CommonJS module; imported as `import dnsPacket from "dns-packet"`.
declare module "dns-packet" {
  export interface Question {
    name: string;
    type: string;
    class?: string;
  }

  /** A resource record as decoded; `data` depends on `type` (A/AAAA: address text, CNAME: a name). */
  export interface Answer {
    name: string;
    type: string;
    class?: string;
    ttl?: number;
    flush?: boolean;
    data?: unknown;
    // OPT pseudo-record (type "OPT") only:
    udpPayloadSize?: number;
    extendedRcode?: number;
    ednsVersion?: number;
    flags?: number;
    flag_do?: boolean;
    options?: unknown[];
  }

  export interface Packet {
    id?: number;
    type?: "query" | "response";
    flags?: number;
    flag_qr?: boolean;
    opcode?: string;
    flag_aa?: boolean;
    flag_tc?: boolean;
    flag_rd?: boolean;
    flag_ra?: boolean;
    flag_z?: boolean;
    flag_ad?: boolean;
    flag_cd?: boolean;
    rcode?: string;
    questions?: Question[];
    answers?: Answer[];
    authorities?: Answer[];
    additionals?: Answer[];
  }

  interface Codec<T> {
    encode(value: T, buf?: Buffer, offset?: number): Buffer;
    decode(buf: Buffer, offset?: number): T;
    encodingLength(value: T): number;
  }

  interface DnsPacket {
    encode(packet: Packet, buf?: Buffer, offset?: number): Buffer;
    decode(buf: Buffer, offset?: number): Packet;
    encodingLength(packet: Packet): number;
    streamEncode(packet: Packet): Buffer;
    answer: Codec<Answer>;
    question: Codec<Question>;
    name: Codec<string>;
    AUTHORITATIVE_ANSWER: number;
    TRUNCATED_RESPONSE: number;
    RECURSION_DESIRED: number;
    RECURSION_AVAILABLE: number;
    AUTHENTIC_DATA: number;
    CHECKING_DISABLED: number;
    DNSSEC_OK: number;
  }

  const dnsPacket: DnsPacket;
  export default dnsPacket;
}
