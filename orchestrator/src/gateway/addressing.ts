// addressing.ts — a sandbox's addresses and MACs (DESIGN §4).
//
// The IPv4 pool (default 172.30.0.0/16) is carved into /30s: slot N's gateway is the first usable
// address, the guest the second. IPv6: slot N gets the /64 <ula48>:N::/64, gateway ::1, guest ::2,
// and the gateway's link-local address is fe80::1. MACs are derived from the sandbox name, so they
// are stable. Which slot a sandbox gets is leased between moat processes (sandbox/leases.ts).
import { createHash } from "node:crypto";
import ipaddr from "ipaddr.js";
import { ConfigError } from "../errors.js";

export interface SandboxAddresses {
  slot: number;
  gatewayIp4: string;
  guestIp4: string;
  prefixLen4: 30;
  gatewayIp6: string;
  guestIp6: string;
  prefix6: string;
  gatewayLl6: string;
  gatewayMac: string;
  guestMac: string;
}

export const DEFAULT_POOL4 = "172.30.0.0/16";
export const DEFAULT_ULA48 = "fd6d:6f61:7400::"; // "moat" in the ULA's global ID

export function parsePool4(pool: string): { base: number; slots: number } {
  let parsed: [ipaddr.IPv4 | ipaddr.IPv6, number];
  try {
    parsed = ipaddr.parseCIDR(pool);
  } catch {
    throw new ConfigError(`address pool "${pool}" is not a CIDR`, "give an IPv4 network such as 172.30.0.0/16");
  }
  const [addr, len] = parsed;
  if (addr.kind() !== "ipv4" || len > 30) {
    throw new ConfigError(`address pool "${pool}" must be an IPv4 network of /30 or larger`, "for example 172.30.0.0/16");
  }
  const b = (addr as ipaddr.IPv4).toByteArray();
  const base = (((b[0]! << 24) | (b[1]! << 16) | (b[2]! << 8) | b[3]!) >>> 0) & (len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0);
  return { base: base >>> 0, slots: 2 ** (30 - len) };
}

function v4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join(".");
}

function macFrom(name: string, role: number): string {
  const h = createHash("sha256").update(name).digest();
  // locally administered, unicast; byte 1 tells gateway (0x6d) from guest (0x67)
  return [0x02, role, h[0]!, h[1]!, h[2]!, h[3]!].map((b) => b.toString(16).padStart(2, "0")).join(":");
}

export function addressesFor(slot: number, name: string, pool4 = DEFAULT_POOL4, ula48 = DEFAULT_ULA48): SandboxAddresses {
  const { base } = parsePool4(pool4);
  const net = (base + slot * 4) >>> 0;
  const ula = ipaddr.IPv6.parse(ula48).toByteArray();
  ula[6] = (slot >> 8) & 255;
  ula[7] = slot & 255;
  const prefix = ipaddr.fromByteArray(ula.slice(0, 8).concat(new Array(8).fill(0))).toString();
  const host = (n: number) => ipaddr.fromByteArray(ula.slice(0, 8).concat([0, 0, 0, 0, 0, 0, 0, n])).toString();
  return {
    slot,
    gatewayIp4: v4(net + 1),
    guestIp4: v4(net + 2),
    prefixLen4: 30,
    gatewayIp6: host(1),
    guestIp6: host(2),
    prefix6: prefix,
    gatewayLl6: "fe80::1",
    gatewayMac: macFrom(name, 0x6d),
    guestMac: macFrom(name, 0x67),
  };
}

/** A short tag naming the pool: its network and length, hashed (8 hex digits). */
export function poolTag(pool4 = DEFAULT_POOL4): string {
  const { base, slots } = parsePool4(pool4);
  return createHash("sha256").update(`${v4(base)}/${32 - Math.log2(slots * 4)}`).digest("hex").slice(0, 8);
}
