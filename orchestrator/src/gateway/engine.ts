// engine.ts — a gateway's engine, as the gateway runs it: what it is configured with (the guest's
// addresses, the options' bounds, where guest DNS over TCP, intercepted TLS and the deny page are
// redirected, the rate limits) and, at the end, how long it keeps serving the guest's TCP
// connections (drainFlows). The engine itself is engine/engine-host.ts.
import type { EngineConfig } from "../engine/engine-config.js";
import type { EngineHost } from "../engine/engine-host.js";
import { layout as L } from "../engine/layout.js";
import type { LinkSpec } from "../links/link.js";
import type { SandboxAddresses } from "./addressing.js";
import { engineLimits } from "./limits.js";
import type { ValidOptions } from "./options.js";

/** The longest drainFlows() waits for connections that keep moving data, in grace periods. */
const EXIT_GRACE_TOTAL_FACTOR = 30;

type Listener = { ip: string; port: number };

/** The engine's configuration; `dnsTcp`, `tlsProxy`: where DNS over TCP and TLS are sent. */
export function engineConfig(o: ValidOptions, guest: SandboxAddresses, redirectToken: Uint8Array, dnsTcp: Listener, tlsProxy: Listener | undefined): EngineConfig {
  const { slot: _slot, ...addresses } = guest;
  return {
    ...addresses,
    mtu: o.mtu,
    leaseSecs: 86400,
    udpIdleMs: o.udpIdleMs,
    maxUdpFlows: o.maxUdpFlows,
    maxTcpFlows: L.FLOW_CAPACITY,
    maxConnections: o.maxConnections,
    dnsForward: dnsTcp,
    dnsIntercept: true,
    redirectToken,
    tls: o.tls && tlsProxy ? { proxy: tlsProxy, ports: o.tls.ports, blockQuic: o.tls.blockQuic } : undefined,
    denyPage: o.denyResponse === "http" ? tlsProxy : undefined,
    limits: engineLimits(o.limits),
  };
}

/** The link: a vhost-user guest is offered the gateway's MTU; an attached one carries it. */
export function guestLink(o: ValidOptions, link: LinkSpec): LinkSpec {
  return link.kind === "vhost-user" || link.kind === "attach" ? { mtu: o.mtu, ...link } : link;
}

/**
 * Keep serving until the guest's TCP connections have finished, or have moved no data for
 * `graceMs` (the whole wait is capped at EXIT_GRACE_TOTAL_FACTOR grace periods). Resolves with
 * the number of connections still open (they are cut, as resets, when the engine stops).
 * `engine()`: the engine while it serves.
 */
export async function drainFlows(engine: () => EngineHost | undefined, graceMs: number, abort?: AbortSignal): Promise<number> {
  const open = () => engine()?.flowStats().tcp ?? 0;
  if (!engine() || graceMs <= 0 || open() === 0) return open();
  const progress = () => {
    const c = engine()?.counters() ?? {};
    return (c.TCP_BYTES_TO_HOST ?? 0) + (c.TCP_BYTES_TO_GUEST ?? 0) + (c.TCP_FLOWS_CLOSED ?? 0);
  };
  const start = Date.now();
  let last = progress();
  let lastMoved = start;
  while (open() > 0 && !abort?.aborted) {
    const t = Date.now();
    if (t - lastMoved >= graceMs || t - start >= graceMs * EXIT_GRACE_TOTAL_FACTOR) break;
    await new Promise((r) => setTimeout(r, 20));
    const p = progress();
    if (p !== last) { last = p; lastMoved = Date.now(); }
  }
  return open();
}
