// serve.ts — a gateway for a guest moat does not run (`moat serve`, DESIGN §9 "Embedding"): the
// caller's VMM connects to the link (vhost-user or stream socket), or holds the TAP device that
// moat serves from its kernel side (attach), or moat holds the TAP device whose kernel side is
// the guest's (tap); the guest configures itself by DHCP from the gateway. moat owns only the
// address lease: an interface is never created here.
import { leaseNamed } from "./leases.js";
import { addressesFor } from "../gateway/addressing.js";
import { Gateway } from "../gateway/gateway.js";
import { validateOptions, type GatewayOptions } from "../gateway/options.js";
import type { LinkSpec } from "../links/link.js";
import { ConfigError, MoatError } from "../errors.js";
import { layout as L } from "../engine/layout.js";
import { loadNative, type InterfaceInfo } from "../native.js";

export interface ServedGateway {
  gateway: Gateway;
  /** Drain (the exitGraceMs option, or `graceMs`), stop the gateway, release the address lease. Idempotent. */
  stop(options?: { graceMs?: number }): Promise<void>;
  /** Resolves with the reason if a secret violation (block-and-terminate) cut the guest off. */
  terminated: Promise<string>;
}

/** Serve `link` with a gateway built from `options` until stop(). */
export async function serveGateway(options: GatewayOptions, link: LinkSpec): Promise<ServedGateway> {
  const served = servedLink(link, options.mtu);
  link = served.link;
  const o = validateOptions({ ...options, mtu: served.mtu });
  if (o.policy.offline) throw new ConfigError("NetworkPolicy.none() has no interface, so there is nothing to serve", "choose another policy");
  const lease = leaseNamed(o.ipv4Pool, options.name);
  const { slot } = lease;
  const release = lease.releaseAll;
  const name = options.name ?? `moat-serve-${slot}`;
  let gateway: Gateway;
  let onTerminated: (reason: string) => void = () => {};
  const terminated = new Promise<string>((resolve) => { onTerminated = resolve; });
  try {
    gateway = await Gateway.start(o, {
      name,
      addresses: addressesFor(slot, name, o.ipv4Pool),
      link,
      // The guest's processes are not ours to kill: its network is cut at once (no grace: the
      // engine stops serving now), which is all the harm it could still do through moat.
      terminate: (reason) => {
        void stop({ graceMs: 0 });
        onTerminated(reason);
      },
    });
  } catch (e) {
    release();
    throw e;
  }
  let stopping: Promise<void> | undefined;
  const stop = (options: { graceMs?: number } = {}) => (stopping ??= (async () => {
    await gateway.drain(options.graceMs);
    await gateway.stop();
    release();
  })());
  return { gateway, stop, terminated };
}

/**
 * The link as served: a TAP device or an attached interface must exist (and is never created),
 * and an attached one must be a point-to-point Ethernet link whose MTU carries the gateway's. The
 * gateway's MTU: the one asked for, else (attach) the interface's.
 */
function servedLink(link: LinkSpec, mtu: number | undefined): { link: LinkSpec; mtu: number | undefined } {
  if (link.kind === "tap") {
    // Only the caller's own namespace can be looked at from here; native-vmm refuses a missing
    // device in any namespace (create: false).
    if (link.netnsPath === "") {
      const info = lookUp(link.ifname, "tap", `create it (ip tuntap add dev ${link.ifname} mode tap) and start again; a TAP that a VMM opens itself (Firecracker's host_dev_name) is served with --attach ${link.ifname} once the VMM runs`);
      if (info.driver !== "tun" || !info.ethernet) {
        throw new MoatError("ERR_LINK", `tap link ${link.ifname}: it is not a TAP device (${describe(info)})`, `serve an existing veth end or other TAP-like interface with --attach ${link.ifname}`);
      }
      if (info.running) {
        throw new MoatError("ERR_LINK", `tap link ${link.ifname}: another process holds the TAP device (a VMM?), and a TAP has one holder`, `serve it from its kernel side instead: moat serve --attach ${link.ifname}`);
      }
    }
    return { link: { ...link, create: false }, mtu };
  }
  if (link.kind !== "attach") return { link, mtu };
  const name = link.ifname;
  const info = lookUp(name, "attach", `start the VMM first (Firecracker opens or creates the TAP named by host_dev_name), or create the interface (ip tuntap add dev ${name} mode tap; ip link add ${name} type veth peer name ...), then start moat serve`);
  if (!info.ethernet) {
    throw new MoatError("ERR_LINK", `attach link ${name}: not an Ethernet interface (${describe(info)})`, "attach a TAP device (IFF_TAP; a TUN device carries IP packets, not Ethernet frames) or a veth end");
  }
  if (info.driver !== "tun" && info.driver !== "veth") {
    throw new MoatError("ERR_LINK", `attach link ${name}: a ${describe(info)} interface, and moat serves only point-to-point links: a TAP device or a veth end`,
      "on a shared segment (a bridge, a NIC) the gateway would answer DHCP and ARP for every host there: give the guest a TAP or veth of its own");
  }
  if (info.mtu < L.MTU_MIN) {
    throw new MoatError("ERR_LINK", `attach link ${name}: its MTU is ${info.mtu}, below the ${L.MTU_MIN} bytes IPv6 needs`, `raise it: ip link set ${name} mtu ${L.MTU_ETHERNET}`);
  }
  if (mtu !== undefined && mtu > info.mtu) {
    throw new ConfigError(`--mtu ${mtu} is larger than ${name}'s MTU (${info.mtu}): the interface would not carry such frames`,
      `raise the interface's first (ip link set ${name} mtu ${mtu}), or leave --mtu out to use ${info.mtu}`);
  }
  return { link, mtu: mtu ?? Math.min(info.mtu, L.MTU_MAX) };
}

function lookUp(name: string, kind: "tap" | "attach", whatToDo: string): InterfaceInfo {
  try {
    return loadNative().interfaceInfo(name);
  } catch (cause) {
    if (cause instanceof MoatError) throw cause;
    const errno = (cause as { errno?: number }).errno;
    const msg = cause instanceof Error ? cause.message : String(cause);
    if (errno === 19 /* ENODEV */) {
      throw new MoatError("ERR_LINK", `${kind} link ${name}: ${msg} (moat serve --${kind} serves an interface that exists, and creates none)`, whatToDo, { cause });
    }
    throw new MoatError("ERR_LINK", `${kind} link ${name}: ${msg}`, undefined, { cause });
  }
}

function describe(info: InterfaceInfo): string {
  return `${info.driver || "unknown"} driver${info.ethernet ? "" : ", not Ethernet"}`;
}
