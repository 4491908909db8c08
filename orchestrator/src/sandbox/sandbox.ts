// sandbox.ts — what every kind of sandbox offers, whatever its guest is (DESIGN §9, §13).
//
// A sandbox is a guest (a network namespace, a QEMU microVM) plus the Gateway that serves its
// link. Everything about the network — policy, DNS, audit, TLS, secrets, published ports,
// counters — is the gateway's, reached through these methods, so nothing a policy or DNS test
// checks depends on the kind of sandbox. The kinds implement only the guest: creating it,
// running commands in it, stopping it.
import type { Gateway } from "../gateway/gateway.js";
import type { GatewayEvent } from "../gateway/events.js";
import type { GatewaySample } from "../gateway/metrics.js";
import type { NetworkPolicyShape } from "../model/policy.js";
import type { DenyResponse } from "../model/policy.js";
import type { EngineCounters } from "../engine/engine-config.js";
import type { PortSpec, PublishedPort, PortProtocol } from "../gateway/ports.js";
import type { SandboxAddresses } from "../gateway/addressing.js";
import type { TlsProxy } from "../tls/proxy.js";
import type { RateLimits, ValidLimits } from "../gateway/limits.js";
import type { Readable, Writable } from "node:stream";
import { constants as osConstants } from "node:os";
import { MoatError } from "../errors.js";

/** How run() runs a command, in every kind of sandbox. */
export interface RunOptions {
  /** Streamed to the command's stdin, then EOF; null or absent: its stdin is empty. */
  stdin?: Readable | null;
  /** Where its stdout goes (default: this process's stdout; the stream is not ended). */
  stdout?: Writable;
  /** Where its stderr goes (default: this process's stderr; the stream is not ended). */
  stderr?: Writable;
  /**
   * Variables added to the command's clean environment (GuestSandbox.commandEnv: PATH, HOME,
   * TERM, LANG and moat's own variables; secrets' placeholders always win).
   */
  env?: Record<string, string | undefined>;
  /** Its working directory (default: in a namespace, this process's; in a VM, /). */
  cwd?: string;
  /**
   * Aborted: the command is hung up on (SIGHUP, as a terminal that goes away does), then killed
   * (SIGKILL) if it is still running HANGUP_GRACE_MS later; run() resolves with its status.
   */
  signal?: AbortSignal;
}

/** How long a command hung up on (RunOptions.signal) has to end before it is killed. */
export const HANGUP_GRACE_MS = 2000;

/**
 * Hang up on a running command when `signal` aborts (then kill it after HANGUP_GRACE_MS): `deliver`
 * sends a signal to it. Returns what to call once it has ended (the listener and timer go).
 */
export function hangUpOnAbort(signal: AbortSignal | undefined, deliver: (signo: number) => void): () => void {
  if (!signal) return () => {};
  let timer: NodeJS.Timeout | undefined;
  const hangUp = () => {
    deliver(osConstants.signals.SIGHUP);
    timer = setTimeout(() => deliver(osConstants.signals.SIGKILL), HANGUP_GRACE_MS);
    timer.unref();
  };
  if (signal.aborted) hangUp();
  else signal.addEventListener("abort", hangUp, { once: true });
  return () => {
    signal.removeEventListener("abort", hangUp);
    clearTimeout(timer);
  };
}

/** What a command's environment takes from moat's, besides the PATH and HOME of its kind. */
const PASSED_THROUGH = ["TERM", "LANG"] as const;

// Sandboxes not yet destroyed, removed synchronously if the process exits first: one `exit`
// listener for all of them (a listener each would trip Node's MaxListeners warning at 11).
const liveSandboxes = new Set<GuestSandbox>();
let exitHookInstalled = false;

export abstract class GuestSandbox {
  /** Set once the gateway serves the guest's link (create() does it). */
  protected gateway: Gateway | undefined;
  private destroyed = false;
  private destroying: Promise<void> | undefined;

  protected constructor(readonly name: string, readonly addresses: SandboxAddresses, readonly mtu: number,
    private readonly exitGraceMs: number, private readonly releaseSlot: () => void) {
    if (!exitHookInstalled) {
      exitHookInstalled = true;
      process.on("exit", () => { for (const x of [...liveSandboxes]) x.destroySync(); });
    }
    liveSandboxes.add(this);
  }

  private get gw(): Gateway {
    if (!this.gateway) throw new MoatError("ERR_ENGINE", `sandbox ${this.name} has no gateway (not started, or destroyed)`);
    return this.gateway;
  }

  /** True when the sandbox has no network interface (NetworkPolicy.none()). */
  get offline(): boolean {
    return this.gw.offline;
  }

  /**
   * Subscribe to the sandbox's events (gateway/events.ts: flow denied, DNS blocked, TLS refused,
   * secret violation, ports, lifecycle, limits), in the audit log's shape; returns an unsubscribe.
   * Events from creation on: the onEvent option.
   */
  on(name: "event", fn: (event: GatewayEvent) => void): () => void {
    return this.gw.on(name, fn);
  }

  off(name: "event", fn: (event: GatewayEvent) => void): void {
    this.gateway?.off(name, fn);
  }

  /** The policy in force (Gateway.policyInForce). */
  policyInForce(): { defaultAction: string; rules: string[]; denyResponse: string; offline: boolean } {
    return this.gw.policyInForce();
  }

  /** Replace the policy of the running sandbox: new flows see it at once, live ones stay. */
  setPolicy(policy: NetworkPolicyShape, denyResponse?: DenyResponse): void {
    this.gw.setPolicy(policy, denyResponse);
  }

  /** The rate limits in force (Gateway.limits). */
  get limits(): ValidLimits {
    return this.gw.limits;
  }

  /** Change the rate limits of the running sandbox (Gateway.setLimits): null removes one, a key left out keeps it. */
  setLimits(change: RateLimits): Promise<ValidLimits> {
    return this.gw.setLimits(change);
  }

  /** The ports being served (host ports as bound: a requested 0 shows the port chosen). */
  get ports(): PublishedPort[] {
    return this.gateway?.ports ?? [];
  }

  /** Publish a port on the running sandbox (Gateway.publish). */
  publish(spec: PortSpec | number, guest?: number, protocol?: PortProtocol): Promise<PublishedPort> {
    return this.gw.publish(spec, guest, protocol);
  }

  /** Withdraw a published port (Gateway.unpublish). */
  unpublish(hostPort: number, protocol?: PortProtocol): Promise<void> {
    return this.gw.unpublish(hostPort, protocol);
  }

  /** What the TLS proxy has done (zeros without interception). */
  tlsStats(): TlsProxy["stats"] {
    return this.gw.tlsStats();
  }

  /** The CA certificate (PEM) guests must trust, when TLS is intercepted. */
  get tlsCaCert(): string | undefined {
    return this.gateway?.tlsCaCert;
  }

  /** The placeholders the command sees, by variable name. */
  get placeholders(): Record<string, string> {
    return this.gateway?.placeholders ?? {};
  }

  /**
   * A command's environment, as docker gives one: PATH and HOME (`base`: the host's for a
   * namespace, the guest's own for a VM), TERM and LANG from this process, then `env` (what the
   * caller asked for: -e, --env-file, the API's env), then moat's own variables (the secrets'
   * placeholders, where the trust bundle is), which win. Nothing else of this process's
   * environment goes in, and no variable that holds a secret's value.
   */
  protected commandEnv(env: Record<string, string | undefined>, base: { PATH: string; HOME: string }): Record<string, string> {
    const out: Record<string, string> = { ...base };
    for (const k of PASSED_THROUGH) if (process.env[k] !== undefined) out[k] = process.env[k]!;
    for (const [k, v] of Object.entries(env)) if (v !== undefined) out[k] = v;
    return (this.gateway ? this.gateway.commandEnv(out) : out) as Record<string, string>;
  }

  /** Why the sandbox was terminated by a secret violation (block-and-terminate), if it was. */
  get terminatedBy(): string | undefined {
    return this.gateway?.terminatedBy;
  }

  /** Flows the policy allowed and denied so far. */
  flowDecisions(): { allowed: number; denied: number } {
    return this.gateway?.flowDecisions() ?? { allowed: 0, denied: 0 };
  }

  /** The sandbox's metrics in the Prometheus text exposition format (Gateway.metrics). */
  metrics(): Promise<string> {
    return this.gw.metrics();
  }

  /** What metrics and --stats report, sampled now (Gateway.sample). */
  sample(): Promise<GatewaySample> {
    return this.gw.sample();
  }

  counters(nonZero = false): EngineCounters {
    return this.gateway?.counters(nonZero) ?? {};
  }

  flowStats(): { flows: number; udp: number; tcp: number } {
    return this.gateway?.flowStats() ?? { flows: 0, udp: 0, tcp: 0 };
  }

  async liveSockets(): Promise<number> {
    return this.gateway ? this.gateway.liveSockets() : 0;
  }

  /** Keep serving until the guest's TCP connections finished or went idle (Gateway.drain). */
  drain(graceMs?: number, abort?: AbortSignal): Promise<number> {
    return this.gateway ? this.gateway.drain(graceMs, abort) : Promise.resolve(0);
  }

  /**
   * Stop the guest and its gateway and remove everything the sandbox created. Idempotent. First
   * the guest's connections get their grace (drain(), `graceMs` default: the exitGraceMs option);
   * whatever is still open after it is cut with resets.
   */
  destroy(options: { graceMs?: number } = {}): Promise<void> {
    // Once begun, every caller waits for the same teardown (a secret violation may start it
    // while the command's own exit path does too).
    return (this.destroying ??= this.teardown(options));
  }

  private async teardown(options: { graceMs?: number }): Promise<void> {
    if (this.destroyed) return;
    try {
      await this.drain(options.graceMs ?? this.exitGraceMs);
      if (this.destroyed) return;
      await this.stopGuest();
      await this.gateway?.stop();
    } finally {
      this.destroySync(); // whatever failed above, nothing is left behind
    }
  }

  /** @internal Remove everything at once (also from the process's exit hook). */
  destroySync(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    liveSandboxes.delete(this);
    this.gateway?.stopSync();
    this.removeGuest();
    this.releaseSlot();
  }

  /**
   * Run `command` in the guest; resolves with its exit status: the command's own, 128+N if signal
   * N killed it, 127 if it was not found and 126 if it could not be executed (both said on stderr).
   */
  abstract run(command: string[], options?: RunOptions): Promise<number>;
  /** Deliver signal `signo` to the running command(s). */
  abstract signal(signo: number): void;

  /** Let the guest end in order (a VM powers off), before its gateway stops. */
  protected abstract stopGuest(): Promise<void>;
  /** Remove the guest at once (synchronously: this also runs from the process's exit hook). */
  protected abstract removeGuest(): void;
}
