// serve.ts — a gateway for a guest moat does not run (`moat serve`, DESIGN §9 "Embedding"): the
// caller's VMM connects to the link (vhost-user or stream socket) or owns the TAP device, and the
// guest configures itself by DHCP from the gateway. moat owns only the address lease.
import { leaseSlot, addressesFor, claimName, type SlotLease } from "../sandbox/addressing.js";
import { Gateway, validateOptions, type GatewayOptions } from "./gateway.js";
import type { LinkSpec } from "../links/link.js";
import { ConfigError } from "../errors.js";

export interface ServedGateway {
  gateway: Gateway;
  /** Drain (the exitGraceMs option, or `graceMs`), stop the gateway, release the address lease. Idempotent. */
  stop(options?: { graceMs?: number }): Promise<void>;
  /** Resolves with the reason if a secret violation (block-and-terminate) cut the guest off. */
  terminated: Promise<string>;
}

/** Serve `link` with a gateway built from `options` until stop(). */
export async function serveGateway(options: GatewayOptions, link: LinkSpec): Promise<ServedGateway> {
  const o = validateOptions(options);
  if (o.policy.offline) throw new ConfigError("NetworkPolicy.none() has no interface, so there is nothing to serve", "choose another policy");
  const releaseName = options.name !== undefined ? claimName(options.name) : () => {};
  let lease: SlotLease;
  try {
    lease = leaseSlot(o.ipv4Pool, { name: options.name });
  } catch (e) {
    releaseName();
    throw e;
  }
  const { slot } = lease;
  const release = () => { lease.release(); releaseName(); };
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
