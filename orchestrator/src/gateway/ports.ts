// ports.ts — published ports: parsing and validating what the user asked for (`-p`, the config
// file's `ports`, the builder's port()/portUdp()), the messages that go with them, and the ports a
// gateway serves (PublishedPorts: a listener each in its engine, published and withdrawn live).
//
//   [BIND:]HOSTPORT:GUESTPORT[/tcp|/udp]      BIND defaults to 127.0.0.1; IPv6 as [::1]:8080:80
//
// A host port of 0 lets the kernel choose one (sandbox.ports tells which).
import { isIPv4 } from "node:net";
import { constants as osConstants } from "node:os";
import ipaddr from "ipaddr.js";
import { ConfigError, MoatError } from "../errors.js";
import { layout as L } from "../engine/layout.js";
import { addr16 } from "../engine/engine-config.js";
import type { EngineHost } from "../engine/engine-host.js";
import type { Emit, PortEvent } from "./events.js";

const { EADDRINUSE } = osConstants.errno;

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

/** What a gateway's published ports need of it. */
export interface PortWiring {
  /** The engine that listens; none: the sandbox has no network. */
  engine(): EngineHost | undefined;
  /** The gateway has stopped (said when publishing fails). */
  stopped(): boolean;
  /** The sandbox's name (in messages). */
  readonly name: string;
  readonly onWarning: (message: string) => void;
  readonly emit: Emit;
}

/** The ports a gateway serves, by listener id (< PUB_MAX) in its engine. */
export class PublishedPorts {
  private readonly published = new Map<number, PublishedPort>(); // by listener id
  private nextListener = 0;

  constructor(private readonly gw: PortWiring) {}

  /** The ports being served (host ports as bound: a requested 0 shows the port chosen). */
  get ports(): PublishedPort[] {
    return [...this.published.values()].map((p) => ({ ...p }));
  }

  /**
   * Publish a port on the running sandbox: `publish(8080, 80)`, `publish(5353, 53, "udp")` or
   * `publish({ bind, host, guest, protocol })`. Resolves with the port as bound (host 0: the
   * kernel's choice) once it accepts connections; a port in use rejects with ERR_PORT.
   */
  async publish(spec: PortSpec | number, guest?: number, protocol: PortProtocol = "tcp"): Promise<PublishedPort> {
    const want = validatePort(typeof spec === "number" ? { host: spec, guest: guest as number, protocol } : spec);
    const engine = this.gw.engine();
    if (!engine) throw new MoatError("ERR_PORT", `cannot publish ${describePort(want)}: the sandbox has no network${this.gw.stopped() ? " (stopped)" : ""}`);
    if (this.published.size >= L.PUB_MAX) throw new MoatError("ERR_PORT", `cannot publish ${describePort(want)}: ${L.PUB_MAX} ports are published already`, "unpublish one first");
    // Listener ids rotate, so a decision still in flight for a withdrawn port never meets a new one.
    let id = this.nextListener;
    while (this.published.has(id)) id = (id + 1) % L.PUB_MAX;
    this.nextListener = (id + 1) % L.PUB_MAX;
    // [::] listens dual-stack, so 127.0.0.1:H and [::1]:H both reach the guest (IPv4 peers
    // arrive as ::ffff:a.b.c.d, judged by ingress rules as the IPv4 address they are). Where IPv4
    // port H is taken already — by another program, or by this sandbox's own IPv4 publish of H —
    // it listens on IPv6 only, and says so unless this sandbox serves the IPv4 side itself.
    const family = isIPv4(want.bind) ? 4 : 6;
    const wildcard6 = want.bind === "::";
    let r = await engine.listen(id, want.protocol, family, addr16(want.bind), want.host, want.guest, wildcard6);
    let ipv6Only = false;
    if (wildcard6 && r === -EADDRINUSE) {
      r = await engine.listen(id, want.protocol, family, addr16(want.bind), want.host, want.guest, false);
      ipv6Only = r >= 0;
    }
    if (r < 0) throw this.publishError(want, -r);
    const p: PublishedPort = { ...want, host: r, ...(ipv6Only ? { ipv6Only } : {}) };
    const ownIPv4 = [...this.published.values()].some((o) => o.host === p.host && o.protocol === p.protocol && isIPv4(o.bind));
    this.published.set(id, p);
    if (ipv6Only && !ownIPv4) {
      this.gw.onWarning(`publishing ${describePort(p)}: IPv4 port ${p.host}/${p.protocol} is taken on this machine, so only IPv6 peers reach sandbox port ${p.guest} (127.0.0.1:${p.host} does not)`);
    }
    this.gw.emit<PortEvent>({ kind: "port-published", ...p });
    const warning = exposureWarning(p);
    if (warning) this.gw.onWarning(warning);
    return { ...p };
  }

  /** Why `want` could not be published (errno from the listener's bind). */
  private publishError(want: PublishedPort, errno: number): MoatError {
    const inUse = errno === EADDRINUSE;
    const dual = inUse && isIPv4(want.bind)
      ? [...this.published.values()].find((o) => o.bind === "::" && !o.ipv6Only && o.host === want.host && o.protocol === want.protocol)
      : undefined;
    if (dual) {
      return new MoatError("ERR_PORT", `cannot publish ${describePort(want)}: this sandbox's ${describePort(dual)} listens on IPv4 too (dual-stack)`,
        `publish ${describePort(want)} before [::] (which then listens on IPv6 only), or leave it out: ${describePort(dual)} already takes IPv4 peers to sandbox port ${dual.guest}`);
    }
    return new MoatError("ERR_PORT", `cannot publish ${describePort(want)}: ${inUse ? "the port is already in use" : errno === 99 ? "that address is not on this machine" : errno === 13 ? "permission denied" : `error ${errno}`}`,
      inUse ? `choose another host port, or stop what listens on ${want.host} (ss -lntup 'sport = :${want.host}')` : undefined);
  }

  /**
   * Withdraw a published port (by host port, and protocol if both are published): new peers are
   * refused from now on; connections already made carry on until they end.
   */
  async unpublish(hostPort: number, protocol?: PortProtocol): Promise<void> {
    const hit = [...this.published].filter(([, p]) => p.host === hostPort && (protocol === undefined || p.protocol === protocol));
    if (hit.length === 0) throw new MoatError("ERR_PORT", `host port ${hostPort}${protocol ? `/${protocol}` : ""} is not published by sandbox ${this.gw.name}`, `published: ${this.ports.map(describePort).join(", ") || "none"}`);
    for (const [id, p] of hit) {
      this.published.delete(id);
      await this.gw.engine()?.unlisten(id);
      this.gw.emit<PortEvent>({ kind: "port-unpublished", ...p });
    }
  }
}
