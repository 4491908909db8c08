// hooks.ts — the one set of hooks (interceptor.ts, DnsHooks) a sandbox's two DNS interceptors
// read: the engine worker's, for guest DNS over UDP (engine/engine-worker.ts), and the gateway's,
// for DNS over TCP and DoT (gateway/dns.ts). Both are made from the same inputs and kept current
// by the same updates (the domain rules' names, the deny names, Group Host), so a name gets the
// same answer over either transport; only the DNS rate's bucket is reached differently (`admit`).
import { classifyAddress, type HostSet } from "../model/groups.js";
import { placeholderInName } from "../model/placeholders.js";
import type { AddressClass, DnsHooks } from "./interceptor.js";

/** The hooks' policy-dependent inputs, sent again whenever they change (structured-clonable). */
export interface DnsInputs {
  /** NameTable.names (id = index + 1). */
  names?: string[];
  /** Names covered by Deny domain rules. */
  deny?: { domains: string[]; suffixes: string[] };
  /** Group Host addresses, normalised (model/groups.ts, hostSet). */
  host?: string[];
}

export class SandboxDnsHooks implements DnsHooks {
  private names: readonly string[] = [];
  private deny: { domains: string[]; suffixes: string[] } = { domains: [], suffixes: [] };
  private host: HostSet = new Set();

  /**
   * `placeholders`: the secrets' (a query name carrying one is refused); `reportAnswers`: every
   * answered (name, address) is reported, not only domain rules' (TLS interception holds SNIs to
   * them); `admit`: the DNS rate (the engine's bucket).
   */
  constructor(
    inputs: DnsInputs,
    private readonly placeholders: readonly { env: string; placeholder: string }[],
    private readonly reportAnswers: boolean,
    readonly admit: () => boolean | Promise<boolean>,
  ) {
    this.update(inputs);
  }

  update(u: DnsInputs): void {
    if (u.names) this.names = u.names;
    if (u.deny) this.deny = u.deny;
    if (u.host) this.host = new Set(u.host);
  }

  nameIds(): readonly string[] {
    return this.names;
  }

  denyNames(): { domains: string[]; suffixes: string[] } {
    return this.deny;
  }

  /** The engine judged the resolver by policy before it handed the query over. */
  resolverAllowed(): boolean {
    return true;
  }

  classify(ip: string): AddressClass {
    return classifyAddress(ip, this.host);
  }

  secretIn(name: string, query: Uint8Array): string | undefined {
    return placeholderInName(this.placeholders, name, query);
  }

  recordAnswers(): boolean {
    return this.reportAnswers;
  }
}
