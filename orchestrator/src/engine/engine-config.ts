// engine-config.ts — what one engine serves (addresses, MACs, limits) and how it is written into
// the CFG_* block of the engine's memory.
import ipaddr from "ipaddr.js";
import type { DnsPin } from "../dns/interceptor.js";
import { layout, counterNames } from "./layout.js";

export interface EngineConfig {
  gatewayMac: string; // "02:..:.."
  guestMac: string;
  gatewayIp4: string;
  guestIp4: string;
  prefixLen4: number;
  gatewayIp6: string; // the gateway's ULA address
  gatewayLl6: string; // the gateway's link-local address
  guestIp6: string;
  prefix6: string; // the /64 announced to the guest, e.g. "fd6d:6f61:7400:1::"
  mtu: number;
  leaseSecs: number;
  udpIdleMs: number;
  maxUdpFlows: number;
  maxTcpFlows: number;
  /** TCP + UDP flows at once (maxConnections of the reference); 0 = only the table's bounds. */
  maxConnections: number;
  /**
   * Where DNS over TCP goes (the orchestrator's listener when intercepting); without
   * interception, also where UDP DNS to the gateway is forwarded.
   */
  dnsForward: { ip: string; port: number } | null;
  /** UDP/53 to the DNS ring (the interceptor), TCP/53 to dnsForward, other DNS transports refused. */
  dnsIntercept: boolean;
  /** 16 random bytes that end every redirect preamble (layout.ts, OP_ORIG); zeros if absent. */
  redirectToken?: Uint8Array;
  /** TLS interception: intercepted TCP ports (and DoT) go to `proxy`; UDP to them is dropped with blockQuic. */
  tls?: { proxy: { ip: string; port: number }; ports: number[]; blockQuic: boolean };
  /** The deny page (deny response "http"): where denied TCP to port 80 (and intercepted ports) goes. */
  denyPage?: { ip: string; port: number };
  /** Rate limits: per bucket (egress, ingress, conn, dns) tokens per ms and size, [0, 0] = none (gateway/limits.ts engineLimits). */
  limits?: [ratePerMs: number, burst: number][];
}

function writeMac(mem: Uint8Array, off: number, mac: string): void {
  const parts = mac.split(":").map((h) => parseInt(h, 16));
  if (parts.length !== 6 || parts.some((b) => !(b >= 0 && b <= 255))) throw new Error(`bad MAC address ${mac}`);
  mem.set(parts, off);
}

/** The interceptor's pins as the engine takes them: one per (address, rule name), TTL floored at 1 s. */
export function enginePins(pins: readonly DnsPin[]): { addr: Uint8Array; nameId: number; ttlMs: number }[] {
  return pins.flatMap((p) => p.nameIds.map((nameId) => ({ addr: addr16(p.ip), nameId, ttlMs: Math.max(1, p.ttlSec) * 1000 })));
}

/** 16 bytes: IPv6 as is, IPv4 as ::ffff:a.b.c.d */
export function addr16(ip: string): Uint8Array {
  const a = ipaddr.parse(ip);
  return Uint8Array.from(a.kind() === "ipv4" ? (a as ipaddr.IPv4).toIPv4MappedAddress().toByteArray() : a.toByteArray());
}

export function writeEngineConfig(mem: Uint8Array, cfg: EngineConfig): void {
  const dv = new DataView(mem.buffer, mem.byteOffset, mem.byteLength);
  writeMac(mem, layout.CFG_GATEWAY_MAC, cfg.gatewayMac);
  writeMac(mem, layout.CFG_GUEST_MAC, cfg.guestMac);
  mem.set(ipaddr.IPv4.parse(cfg.gatewayIp4).toByteArray(), layout.CFG_GATEWAY_IP4);
  mem.set(ipaddr.IPv4.parse(cfg.guestIp4).toByteArray(), layout.CFG_GUEST_IP4);
  mem.set(ipaddr.IPv4.parse(cfg.gatewayIp4).toByteArray(), layout.CFG_DNS_IP4);
  dv.setUint32(layout.CFG_PREFIX_LEN4, cfg.prefixLen4, true);
  dv.setUint32(layout.CFG_MTU, cfg.mtu, true);
  dv.setUint32(layout.CFG_UDP_IDLE_MS, cfg.udpIdleMs, true);
  dv.setUint32(layout.CFG_MAX_UDP_FLOWS, cfg.maxUdpFlows, true);
  dv.setUint32(layout.CFG_MAX_TCP_FLOWS, cfg.maxTcpFlows, true);
  dv.setUint32(layout.CFG_MAX_CONNECTIONS, cfg.maxConnections, true);
  dv.setUint32(layout.CFG_LEASE_SECS, cfg.leaseSecs, true);
  mem.set(ipaddr.IPv6.parse(cfg.gatewayIp6).toByteArray(), layout.CFG_GATEWAY_IP6);
  mem.set(ipaddr.IPv6.parse(cfg.gatewayLl6).toByteArray(), layout.CFG_GATEWAY_LL6);
  mem.set(ipaddr.IPv6.parse(cfg.guestIp6).toByteArray(), layout.CFG_GUEST_IP6);
  mem.set(ipaddr.IPv6.parse(cfg.prefix6).toByteArray(), layout.CFG_PREFIX6);
  dv.setUint32(layout.CFG_DNS_INTERCEPT, cfg.dnsIntercept ? 1 : 0, true);
  if (cfg.redirectToken) mem.set(cfg.redirectToken.subarray(0, 16), layout.CFG_REDIRECT_TOKEN);
  if (cfg.denyPage) {
    mem.set(addr16(cfg.denyPage.ip), layout.CFG_TLS_PROXY_IP);
    dv.setUint32(layout.CFG_DENY_PROXY_PORT, cfg.denyPage.port, true);
  }
  if (cfg.tls) {
    if (cfg.tls.ports.length > layout.CFG_TLS_PORTS_MAX) throw new Error(`at most ${layout.CFG_TLS_PORTS_MAX} TLS ports`);
    mem.set(addr16(cfg.tls.proxy.ip), layout.CFG_TLS_PROXY_IP);
    dv.setUint32(layout.CFG_TLS_PROXY_PORT, cfg.tls.proxy.port, true);
    dv.setUint32(layout.CFG_TLS_BLOCK_QUIC, cfg.tls.blockQuic ? 1 : 0, true);
    dv.setUint32(layout.CFG_TLS_PORT_COUNT, cfg.tls.ports.length, true);
    cfg.tls.ports.forEach((p, i) => dv.setUint16(layout.CFG_TLS_PORTS + 2 * i, p, true));
  }
  if (cfg.dnsForward) {
    mem.set(addr16(cfg.dnsForward.ip), layout.CFG_DNS_FWD_IP);
    dv.setUint32(layout.CFG_DNS_FWD_PORT, cfg.dnsForward.port, true);
  } else {
    dv.setUint32(layout.CFG_DNS_FWD_PORT, 0, true);
  }
}

export type EngineCounters = Record<string, number>;

/** A snapshot of the engine's counters by name (only non-zero ones when `nonZero`). */
export function readCounters(mem: Uint8Array, nonZero = false): EngineCounters {
  const dv = new DataView(mem.buffer, mem.byteOffset, mem.byteLength);
  const out: EngineCounters = {};
  for (const [name, idx] of counterNames) {
    const v = Number(dv.getBigUint64(layout.COUNTERS_BASE + 8 * idx, true));
    if (!nonZero || v !== 0) out[name] = v;
  }
  return out;
}

/** Live flow counts from the engine state block. */
export function readFlowStats(mem: Uint8Array): { flows: number; udp: number; tcp: number } {
  const dv = new DataView(mem.buffer, mem.byteOffset, mem.byteLength);
  return {
    flows: dv.getUint32(layout.ST_FLOWS_LIVE, true),
    udp: dv.getUint32(layout.ST_UDP_LIVE, true),
    tcp: dv.getUint32(layout.ST_TCP_LIVE, true),
  };
}
