// policy.ts — a gateway's policy in force (DESIGN §6): compiled into the engine before its first
// frame, replaced while it runs (new flows see the new one at once, live flows stay), with the
// name table its domain rules use (DNS pins answers under the same ids, TLS holds SNIs to them),
// Group Host (the host's own addresses, policy/host-addresses.ts) kept current in the engine and
// in DNS, and the denials the engine audits under it, which become flow-denied events.
import { NameTable } from "../engine/policy-table.js";
import type { EngineHost } from "../engine/engine-host.js";
import type { Denial, EngineTables } from "../engine/tables.js";
import { ConfigError } from "../errors.js";
import { describeRule, validatePolicy, type Action, type DenyResponse, type NetworkPolicy, type NetworkPolicyShape } from "../model/policy.js";
import type { DenyEvent } from "../policy/audit.js";
import { watchHostAddresses } from "../policy/host-addresses.js";
import type { Emit, FlowDeniedEvent } from "./events.js";

/** What a gateway's policy needs of it. */
export interface PolicyWiring {
  engine(): EngineHost | undefined;
  /** What happens to a peer on a published port that no inbound rule matched. */
  readonly defaultIngress: Action;
  /** The deny page is served (it is set up at creation, for deny response "http"). */
  denyPage(): boolean;
  /** A policy was installed in a running engine: DNS answers its names by it. */
  installed(names: readonly string[], policy: NetworkPolicy): void;
  /** The host's own addresses changed: DNS rebinding protection holds answers to them too. */
  hostAddresses(addrs: readonly string[]): void;
  readonly emit: Emit;
  readonly onDeny: ((event: DenyEvent) => void) | undefined;
  /** A denial that is a secret's placeholder in the guest's own TCP or UDP. */
  secretInPayload(e: Denial): void;
}

export class GatewayPolicy {
  readonly names = new NameTable();
  private unwatchHost: (() => void) | undefined;

  constructor(private current: NetworkPolicy, private denyResponse: DenyResponse, private readonly gw: PolicyWiring) {}

  get policy(): NetworkPolicy {
    return this.current;
  }

  /**
   * Into a fresh engine's memory, before it serves a frame (EngineHost.start's prepare), with the
   * host's own addresses: Group Host from the first frame on, and kept current until stop().
   */
  install(tables: EngineTables): void {
    tables.installPolicy(this.current, this.denyResponse, this.names, this.gw.defaultIngress);
    this.unwatchHost = watchHostAddresses((addrs) => {
      tables.setHostAddresses(addrs);
      this.gw.hostAddresses(addrs);
    });
  }

  stop(): void {
    this.unwatchHost?.();
  }

  /** The policy in force: its default, its rules as text (first match wins), the deny response. */
  inForce(): { defaultAction: string; rules: string[]; denyResponse: string; offline: boolean } {
    const p = this.current;
    return { defaultAction: p.defaultAction, rules: p.rules.map((r) => describeRule(r)), denyResponse: this.denyResponse, offline: p.offline };
  }

  /** Replace the policy of the running sandbox: new flows see it at once, live ones stay. */
  set(policy: NetworkPolicyShape, denyResponse: DenyResponse = this.denyResponse): void {
    const p = validatePolicy(policy);
    if (denyResponse === "http" && !this.gw.denyPage()) throw new ConfigError(`deny response "http" needs the deny page, which is set up at creation`, `create the sandbox with denyResponse "http"`);
    if (p.offline !== this.current.offline) {
      throw new ConfigError("a running sandbox cannot switch to or from NetworkPolicy.none()", "none() decides whether the sandbox has an interface at all: choose it at creation");
    }
    this.gw.engine()?.tables.installPolicy(p, denyResponse, this.names, this.gw.defaultIngress);
    this.current = p;
    this.denyResponse = denyResponse;
    this.gw.installed(this.names.names, p);
  }

  /** Denials waiting in the engine's audit ring: to the audit log and the onDeny listener. */
  drainDenials(): void {
    const engine = this.gw.engine();
    if (!engine) return;
    const rules = this.current.rules;
    for (const e of engine.tables.drainDenials((i) => (rules[i] ? describeRule(rules[i]!) : "?"))) {
      // A secret's placeholder in the guest's own TCP or UDP: a violation, not a policy denial.
      if (e.secret !== undefined) {
        this.gw.secretInPayload(e);
        continue;
      }
      const { time, direction, protocol, source, destination, port, rule } = e;
      const event = this.gw.emit<FlowDeniedEvent>({ time, kind: "flow-denied", direction, protocol, source, destination, port, rule, action: "deny" });
      this.gw.onDeny?.(event);
    }
  }
}
