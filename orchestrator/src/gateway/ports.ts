// ports.ts — published ports: parsing and validating what the user asked for (`-p`, the config
// file's `ports`, the builder's port()/portUdp()), and the messages that go with them.
//
//   [BIND:]HOSTPORT:GUESTPORT[/tcp|/udp]      BIND defaults to 127.0.0.1; IPv6 as [::1]:8080:80
//
// A host port of 0 lets the kernel choose one (sandbox.ports tells which).
import ipaddr from "ipaddr.js";
import { ConfigError } from "../errors.js";

export type PortProtocol = "tcp" | "udp";

/** A port to publish, as given (API and config file). */
export interface PortSpec {
  /** Host address to listen on (default "127.0.0.1"; "::1", "0.0.0.0", "::" — IPv4 and IPv6 both). */
  bind?: string;
  /** Host port (0: any free one). */
  host: number;
  /** Port inside the sandbox. */
  guest: number;
  /** Default "tcp". */
  protocol?: PortProtocol;
}

/**
 * A port being served: `host` is the port actually bound. A "::" bind listens dual-stack (IPv4
 * peers too) unless `ipv6Only`: IPv4 port `host` was taken when it was published.
 */
export interface PublishedPort {
  bind: string;
  host: number;
  guest: number;
  protocol: PortProtocol;
  ipv6Only?: boolean;
}

export const DEFAULT_BIND = "127.0.0.1";
const FORM = "[BIND:]HOSTPORT:GUESTPORT[/tcp|/udp], e.g. 8080:80, 127.0.0.1:5353:53/udp or [::1]:8080:80";

/** Parse the `-p` form. `where` names the source in errors (e.g. "-p", "ports[2]"). */
export function parsePublish(text: string, where = "--publish"): PortSpec {
  const fail = (what: string): never => { throw new ConfigError(`${where} "${text}": ${what}`, `expected ${FORM}`); };
  if (typeof text !== "string" || text === "") fail("empty");
  let rest = text.trim();
  let protocol: PortProtocol = "tcp";
  const slash = rest.lastIndexOf("/");
  if (slash >= 0) {
    const p = rest.slice(slash + 1).toLowerCase();
    if (p !== "tcp" && p !== "udp") fail(`unknown protocol "${rest.slice(slash + 1)}" (tcp or udp)`);
    protocol = p as PortProtocol;
    rest = rest.slice(0, slash);
  }
  let bind: string | undefined;
  if (rest.startsWith("[")) {
    const close = rest.indexOf("]");
    if (close < 0 || rest[close + 1] !== ":") fail("an IPv6 bind address goes in brackets, followed by a colon");
    bind = rest.slice(1, close);
    rest = rest.slice(close + 2);
  }
  const parts = rest.split(":");
  if (bind === undefined && parts.length === 3) bind = parts.shift()!;
  if (parts.length !== 2) fail(parts.length > 2 ? "too many colons (an IPv6 bind address goes in brackets)" : "needs HOSTPORT:GUESTPORT");
  const num = (s: string, what: string, min: number): number => {
    if (!/^\d+$/.test(s) || Number(s) < min || Number(s) > 65535) fail(`${what} "${s}" is not a port (${min} to 65535)`);
    return Number(s);
  };
  return { bind, host: num(parts[0]!, "host port", 0), guest: num(parts[1]!, "guest port", 1), protocol };
}

/** Check a PortSpec from any source; returns it complete. */
export function validatePort(spec: PortSpec, where = "port"): PublishedPort {
  if (typeof spec !== "object" || spec === null) throw new ConfigError(`${where} is not a port`, `expected { host, guest, bind?, protocol? } or ${FORM}`);
  const port = (v: unknown, name: string, min: number): number => {
    if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > 65535) {
      throw new ConfigError(`${where}.${name} is ${JSON.stringify(v)}, not a port`, `use a whole number from ${min} to 65535`);
    }
    return v;
  };
  const protocol = spec.protocol ?? "tcp";
  if (protocol !== "tcp" && protocol !== "udp") throw new ConfigError(`${where}.protocol is ${JSON.stringify(spec.protocol)}`, `use "tcp" or "udp"`);
  const bindText = spec.bind ?? DEFAULT_BIND;
  let bind: string;
  try {
    if (typeof bindText !== "string" || !ipaddr.isValid(bindText) || bindText.includes("%")) throw new Error();
    bind = ipaddr.parse(bindText).toString();
  } catch {
    throw new ConfigError(`${where}.bind ${JSON.stringify(bindText)} is not an IP address`, `e.g. "127.0.0.1" (the default), "::1" or "0.0.0.0"`);
  }
  return { bind, host: port(spec.host, "host", 0), guest: port(spec.guest, "guest", 1), protocol };
}

/** A warning for a bind beyond this machine's loopback (exposing a sandbox is never silent). */
export function exposureWarning(p: PublishedPort): string | undefined {
  const a = ipaddr.parse(p.bind);
  if (a.range() === "loopback") return undefined;
  const where = a.range() === "unspecified" ? "every network this machine is on" : `the network of ${p.bind}`;
  return `publishing ${describePort(p)} exposes sandbox port ${p.guest}/${p.protocol} to ${where}`;
}

export function describePort(p: PublishedPort): string {
  return `${p.bind.includes(":") ? `[${p.bind}]` : p.bind}:${p.host}/${p.protocol}${p.ipv6Only ? " (IPv6 only)" : ""}`;
}
