// interceptor.ts — what moat does with a guest's DNS query (DESIGN §7). The slow path: clarity
// over speed. One call to handle() per query; the caller (the engine wiring) delivers the answer.
//
//  1. Malformed: shorter than a header → dropped. A response (QR=1) → dropped (never answer an
//     answer). Opcode other than QUERY → NOTIMP. Anything dns-packet cannot decode, no question,
//     more than one question, more than one OPT → FORMERR (echoing the ID). Never forwarded.
//     Over the sandbox's DNS rate (hooks.admit(): the engine's bucket, --limit-dns-rate) →
//     REFUSED, and nothing more is done with it (the engine counts it; no event of its own).
//  2. Blocked: the name is on the block list (exact, or equal to or under a blocked suffix), or is
//     covered by a Deny domain/suffix rule of the policy in force (hooks.denyNames()) → answered
//     here, REFUSED (or NXDOMAIN by setting), never sent upstream. Zone transfers (AXFR/IXFR) are
//     refused too.
//  3. Resolver: a query to the gateway goes to the configured upstreams; a query to another
//     resolver goes to that resolver, only if hooks.resolverAllowed() says policy allows it
//     (else REFUSED).
//  4. At most `maxInFlight` queries are upstream at once; one more → SERVFAIL ("overloaded").
//     Locally answered queries (1-3) do not count and are answered even then.
//  5. Upstream failure (all servers timed out / refused, or an undecodable answer) → SERVFAIL.
//  6. The answer: a CNAME chain from the queried name through a blocked name → answered as
//     blocked. Rebinding protection: an A/AAAA record (answer or additional section) whose
//     address classifies as host, metadata, loopback, private or link-local → REFUSED.
//  7. UDP: an answer longer than the guest accepts (EDNS payload size, 512..65535; 512 without
//     EDNS; and no more than ctx.maxUdpSize when given) → header and question only (plus OPT),
//     TC=1. The guest retries over TCP.
//  8. Pins: the A/AAAA records the guest receives for the queried name — directly or at the end of
//     a CNAME chain from it — are reported with the ids of every domain rule name that matches the
//     QUERIED name, TTL floored at 1 s. Records with no matching id are not reported. Only answers
//     from the sandbox's own upstreams (queries to the gateway) pin: the reference forwards a
//     query aimed at another resolver "to that resolver directly", and so does moat, but what that
//     resolver says is the guest's choice, so it can never widen what a domain rule reaches.
//
// Name matching: a Domain key "example.com" matches only example.com; a DomainSuffix key
// ".example.com" (and a blocked suffix "example.com") matches example.com itself AND every name
// under it. The reference (".tracking.com blocks a.tracking.com, b.c.tracking.com") is silent on
// the apex; moat's config documents suffixes as "names and subdomains", and blocking a suffix
// while letting its apex resolve is what nobody means. Matching is on whole labels of the
// canonical name (wire.ts), case-insensitive.
import ipaddr from "ipaddr.js";
import { carriedIPv4 } from "../model/groups.js";
import dnsPacket from "dns-packet";
import { ConfigError } from "../errors.js";
import { UpstreamResolver } from "./upstream.js";
import { RCODE, TYPE, displayName, localAnswer, readHeader, readQuestion, scanAnswer, truncatedAnswer, type QuestionInfo, type ScannedRecord } from "./wire.js";

export interface DnsSettings {
  /** Exact names to block: lower case, no final dot. */
  blockDomains: string[];
  /** Suffixes to block (the name itself and everything under it): lower case, no "." / "*." prefix. */
  blockDomainSuffixes: string[];
  /** The answer to a blocked name; default "refused". */
  blockedResponse: "refused" | "nxdomain";
  /** Refuse answers that point at internal addresses; default true. */
  rebindProtection: boolean;
  /** Per upstream attempt; default 5000. */
  queryTimeoutMs: number;
  /** Queries upstream at once; default 64. */
  maxInFlight: number;
}

export const DEFAULT_DNS_SETTINGS: Readonly<DnsSettings> = Object.freeze({
  blockDomains: [],
  blockDomainSuffixes: [],
  blockedResponse: "refused",
  rebindProtection: true,
  queryTimeoutMs: 5000,
  maxInFlight: 64,
});

export interface DnsQueryContext {
  protocol: "udp" | "tcp";
  /** Addressed to the sandbox's gateway (use the upstreams) or to another resolver. */
  toGateway: boolean;
  /** The resolver the guest addressed. */
  dest: { ip: string; port: number };
  /**
   * UDP only: a cap on the answer size (e.g. what the link can carry). The interceptor reads the
   * guest's EDNS size from the query itself; the smaller of the two applies, never below 512.
   */
  maxUdpSize?: number;
}

export type DnsEventKind = "blocked" | "rebinding" | "upstream-failed" | "formerr" | "denied-resolver" | "overloaded" | "secret-violation";

export interface DnsPin {
  ip: string;
  /** The name the guest asked for (lower case): what a TLS SNI to `ip` may be. */
  name: string;
  nameIds: number[];
  ttlSec: number;
}

export interface DnsOutcome {
  /** The answer to send to the guest; null = send nothing. */
  answer: Buffer | null;
  /** What the guest was told, for domain rules. */
  pins: DnsPin[];
  /** `secret`: with a secret-violation, the secret's name (its variable; never the value). */
  event?: { kind: DnsEventKind; name?: string; detail?: string; secret?: string };
}

export type AddressClass = "host" | "metadata" | "loopback" | "private" | "link-local" | "multicast" | "public";

export interface DnsHooks {
  /** NameTable.names at call time (id = index + 1): "example.com" exact, ".example.com" suffix. */
  nameIds(): ReadonlyArray<string>;
  /** Names covered by Deny domain/suffix rules of the policy in force. */
  denyNames(): { domains: string[]; suffixes: string[] };
  /** Policy check for a query aimed at a resolver other than the gateway. */
  resolverAllowed(ip: string, port: number, protocol: "udp" | "tcp"): boolean;
  classify(ip: string): AddressClass;
  /** The secret (its variable name) whose placeholder the name carries, if any: never sent upstream. */
  /** The secret whose placeholder a query carries: in its name (also split over labels) or anywhere in its bytes (EDNS options, extra records). */
  secretIn?(name: string, query: Uint8Array): string | undefined;
  /** Report every answered (name, address), not only those of domain rules (as pins without ids): TLS interception holds SNIs to them. */
  recordAnswers?(): boolean;
  /** The DNS rate: may this query be answered? false: REFUSED. Absent: always. */
  admit?(): boolean | Promise<boolean>;
}

/** Address classes an answer must not carry under rebinding protection. */
const REBIND_CLASSES: ReadonlySet<AddressClass> = new Set<AddressClass>(["host", "metadata", "loopback", "private", "link-local"]);
const MAX_CNAME_HOPS = 16;

/** The canonical queried name of `query` (lower case, no final dot, "" for the root), or null. */
export function decodeName(query: Buffer): string | null {
  const h = readHeader(query);
  if (!h || h.qdcount < 1) return null;
  try {
    return readQuestion(query).name;
  } catch {
    return null;
  }
}

/** Does a name-table key ("a.b" exact, ".a.b" suffix) match canonical `name`? */
export function keyMatches(key: string, name: string): boolean {
  return key.startsWith(".") ? underSuffix(name, key.slice(1)) : name === key;
}

/** `name` equals `suffix` or lies under it (whole labels). */
export function underSuffix(name: string, suffix: string): boolean {
  return name === suffix || (name.length > suffix.length && name.endsWith(suffix) && name[name.length - suffix.length - 1] === ".");
}

/** Normalize a configured name or suffix: lower case, no final dot, no leading "." or "*.". */
function normalize(name: string, suffix: boolean): string {
  let n = name.trim().toLowerCase().replace(/\.$/, "");
  if (suffix) n = n.replace(/^\*?\./, "");
  return n;
}

export class DnsInterceptor {
  readonly settings: Readonly<DnsSettings>;
  private readonly blockExact: ReadonlySet<string>;
  private readonly blockSuffixes: readonly string[];
  private inFlight = 0;

  constructor(settings: Partial<DnsSettings>, private readonly upstream: UpstreamResolver, private readonly hooks: DnsHooks) {
    const s: DnsSettings = { ...DEFAULT_DNS_SETTINGS, ...dropUndefined(settings) };
    if (s.blockedResponse !== "refused" && s.blockedResponse !== "nxdomain") {
      throw new ConfigError(`blocked DNS response "${String(s.blockedResponse)}" is not "refused" or "nxdomain"`);
    }
    if (!Number.isFinite(s.queryTimeoutMs) || s.queryTimeoutMs <= 0) {
      throw new ConfigError(`DNS query timeout ${s.queryTimeoutMs} ms is not a positive number`, "e.g. 5000");
    }
    if (!Number.isInteger(s.maxInFlight) || s.maxInFlight < 1) {
      throw new ConfigError(`DNS maxInFlight ${s.maxInFlight} is not a positive integer`, "e.g. 64");
    }
    this.settings = Object.freeze({ ...s, blockDomains: [...s.blockDomains], blockDomainSuffixes: [...s.blockDomainSuffixes] });
    this.blockExact = new Set(s.blockDomains.map((d) => normalize(d, false)));
    this.blockSuffixes = s.blockDomainSuffixes.map((d) => normalize(d, true));
  }

  /** Queries currently upstream. */
  get pending(): number {
    return this.inFlight;
  }

  async handle(query: Buffer, ctx: DnsQueryContext): Promise<DnsOutcome> {
    // 1. Is it a query we can read?
    const h = readHeader(query);
    if (!h) return { answer: null, pins: [], event: { kind: "formerr", detail: `${query.length}-byte message, shorter than a DNS header` } };
    if (h.qr) return { answer: null, pins: [], event: { kind: "formerr", detail: "a response (QR=1), not a query" } };
    if (h.opcode !== 0) {
      return { answer: localAnswer(query, null, RCODE.NOTIMP), pins: [], event: { kind: "formerr", detail: `opcode ${h.opcode} is not supported` } };
    }
    const formerr = (detail: string): DnsOutcome => ({ answer: localAnswer(query, null, RCODE.FORMERR), pins: [], event: { kind: "formerr", detail } });
    if (h.qdcount !== 1) return formerr(`${h.qdcount} questions (exactly one is supported)`);
    let q: QuestionInfo;
    let opts: ScannedRecord[] = []; // OPT records (EDNS): the class is the guest's UDP payload size
    try {
      q = readQuestion(query);
      // A plain query (one question, nothing else) needs nothing more read.
      if (h.ancount !== 0 || h.nscount !== 0 || h.arcount !== 0 || q.end !== query.length) {
        opts = scanAnswer(query).records.filter((r) => r.type === TYPE.OPT);
      }
    } catch (e) {
      return formerr(`undecodable query: ${(e as Error).message}`);
    }
    if (opts.length > 1) return formerr("more than one OPT record");
    if (this.hooks.admit) {
      // (awaited only when it is a promise: a plain answer lets the query go upstream in this
      // turn, from inside the engine worker's wake-up, not after it)
      const admitted = this.hooks.admit();
      if (!(typeof admitted === "boolean" ? admitted : await admitted)) return { answer: localAnswer(query, q, RCODE.REFUSED), pins: [] };
    }
    const name = q.name;
    const shown = displayName(name);
    const refuse = (kind: DnsEventKind, detail: string, rcode: number = RCODE.REFUSED): DnsOutcome =>
      ({ answer: localAnswer(query, q, rcode), pins: [], event: { kind, name: shown, detail } });
    const blockedRcode = this.settings.blockedResponse === "nxdomain" ? RCODE.NXDOMAIN : RCODE.REFUSED;

    // 2. A secret's placeholder in the name (exfiltration through DNS), blocked names, zone transfers.
    const secret = this.hooks.secretIn?.(name, query);
    if (secret) {
      const out = refuse("secret-violation", `the name carries the placeholder of secret ${secret}`);
      return { ...out, event: { ...out.event!, secret } };
    }
    const why = this.blockedBecause(name);
    if (why) return refuse("blocked", why, blockedRcode);
    if (q.type === TYPE.AXFR || q.type === TYPE.IXFR) return refuse("blocked", "zone transfers are not forwarded");

    // 3. Which resolver.
    let resolver = this.upstream;
    if (!ctx.toGateway) {
      if (!this.hooks.resolverAllowed(ctx.dest.ip, ctx.dest.port, ctx.protocol)) {
        return refuse("denied-resolver", `resolver ${ctx.dest.ip} port ${ctx.dest.port}/${ctx.protocol} is not allowed by policy`);
      }
      resolver = new UpstreamResolver([{ ip: ctx.dest.ip, port: ctx.dest.port }], this.settings.queryTimeoutMs, { pooled: false, transport: this.upstream.transport });
    }

    // 4-5. Ask, within the in-flight bound.
    if (this.inFlight >= this.settings.maxInFlight) {
      return refuse("overloaded", `${this.inFlight} queries already upstream`, RCODE.SERVFAIL);
    }
    let raw: Buffer;
    this.inFlight++;
    try {
      raw = await resolver.query(query, q);
    } catch (e) {
      return refuse("upstream-failed", (e as Error).message, RCODE.SERVFAIL);
    } finally {
      this.inFlight--;
    }
    let scan: ReturnType<typeof scanAnswer>;
    try {
      scan = scanAnswer(raw);
    } catch (e) {
      return refuse("upstream-failed", `undecodable answer: ${(e as Error).message}`, RCODE.SERVFAIL);
    }

    // 6. What the answer says (names in canonical text throughout: wire.ts).
    const records = scan.records.filter((r) => r.section === 1);
    const chain = cnameChain(name, records);
    for (const target of chain) {
      if (target === name) continue;
      const via = this.blockedBecause(target);
      if (via) return refuse("blocked", `CNAME to ${displayName(target)} (${via})`, blockedRcode);
    }
    if (this.settings.rebindProtection) {
      for (const rr of scan.records) {
        if (rr.section === 2) continue; // authority: names of servers, not answers
        const ip = addressOf(rr);
        if (ip === null) continue;
        for (const form of [ip, ip.includes(":") ? embeddedIPv4(ip) : null]) {
          const cls = form === null ? null : this.hooks.classify(form);
          if (cls !== null && REBIND_CLASSES.has(cls)) return refuse("rebinding", `${displayName(rr.name)} is ${ip} (${cls})`);
        }
      }
    }

    // 7. Fit it to the guest.
    const final = raw; // the upstream resolver gives it back under the guest's ID
    if (ctx.protocol === "udp") {
      let limit = opts.length ? clampUdp(opts[0]!.klass) : 512;
      if (ctx.maxUdpSize !== undefined) limit = Math.min(limit, Math.max(512, ctx.maxUdpSize));
      if (final.length > limit) {
        // Rare: the OPT record is taken from a full decode.
        const opt = (dnsPacket.decode(raw).additionals ?? []).find((r) => r.type === "OPT");
        const optBytes = opts.length && opt ? dnsPacket.answer.encode({ ...opt, options: [] }) : null;
        return { answer: truncatedAnswer(query, q, final, optBytes), pins: [] };
      }
    }

    // 8. Pins: only from the sandbox's own upstreams. An answer from a resolver the guest chose
    // is delivered (judged above like any other) but pins nothing: otherwise any resolver the
    // policy lets the guest reach could point an allowed name at any address it likes.
    const pins = scan.rcode === RCODE.NOERROR && ctx.toGateway ? this.pinsFor(name, chain, records) : [];
    return { answer: final, pins };
  }

  /** Why `name` must not be resolved, or null. */
  private blockedBecause(name: string): string | null {
    if (this.blockExact.has(name)) return "on the block list";
    for (const s of this.blockSuffixes) if (underSuffix(name, s)) return `under blocked suffix ${s}`;
    const deny = this.denyNormalized();
    for (const [d, n] of deny.domains) if (name === n) return `denied by policy rule for ${d}`;
    for (const n of deny.suffixes) if (underSuffix(name, n)) return `denied by policy rule for *.${n}`;
    return null;
  }

  /** The policy's deny names, normalized once per policy (not once per query). */
  private denyNormalized(): { domains: [string, string][]; suffixes: string[] } {
    const deny = this.hooks.denyNames();
    if (deny !== this.denySeen) {
      this.denySeen = deny;
      this.denyCache = { domains: deny.domains.map((d) => [d, normalize(d, false)]), suffixes: deny.suffixes.map((s) => normalize(s, true)) };
    }
    return this.denyCache;
  }

  private denySeen: { domains: string[]; suffixes: string[] } | undefined;
  private denyCache: { domains: [string, string][]; suffixes: string[] } = { domains: [], suffixes: [] };

  private pinsFor(name: string, chain: ReadonlySet<string>, records: readonly ScannedRecord[]): DnsPin[] {
    const keys = this.hooks.nameIds();
    const ids: number[] = [];
    keys.forEach((k, i) => {
      if (keyMatches(k, name)) ids.push(i + 1);
    });
    if (ids.length === 0 && !this.hooks.recordAnswers?.()) return [];
    const ttl = new Map<string, number>();
    for (const rr of records) {
      const ip = addressOf(rr);
      if (ip === null || !chain.has(rr.name)) continue;
      ttl.set(ip, Math.max(ttl.get(ip) ?? 0, rr.ttl ?? 0));
    }
    return [...ttl].map(([ip, t]) => ({ ip, name, nameIds: [...ids], ttlSec: Math.max(1, t) }));
  }
}

/** The names reachable from `qname` through CNAME records (qname included), canonical. */
function cnameChain(qname: string, records: readonly ScannedRecord[]): Set<string> {
  const chain = new Set([qname]);
  for (let hop = 0; hop < MAX_CNAME_HOPS; hop++) {
    let grew = false;
    for (const rr of records) {
      if (rr.type !== TYPE.CNAME || rr.data === null || !chain.has(rr.name)) continue;
      if (!chain.has(rr.data)) {
        chain.add(rr.data);
        grew = true;
      }
    }
    if (!grew) break;
  }
  return chain;
}

/** The address of an IN A/AAAA record (dotted quad, RFC 5952 IPv6); else null. */
function addressOf(rr: ScannedRecord): string | null {
  return (rr.type === TYPE.A || rr.type === TYPE.AAAA) && rr.klass === 1 ? rr.data : null;
}

/**
 * The IPv4 address an IPv6 address carries (mapped ::ffff:0:0/96, compatible ::/96 other than
 * :: and ::1, NAT64 64:ff9b::/96), so rebinding protection judges it as that IPv4 address even if
 * the classify hook does not; else null.
 */
/** The IPv4 address an IPv6 answer carries (every form model/groups.ts knows), as text. */
function embeddedIPv4(ip: string): string | null {
  const a = ipaddr.parse(ip);
  if (a.kind() !== "ipv6") return null;
  const v4 = carriedIPv4((a as ipaddr.IPv6).toByteArray());
  return v4 ? v4.join(".") : null;
}

function clampUdp(size: number): number {
  return Math.min(65535, Math.max(512, size));
}

function dropUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
