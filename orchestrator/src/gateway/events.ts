// events.ts — one event type for everything a gateway judges or does (DESIGN §13: "one typed
// event union and one sink").
//
// Every event has the same envelope — { v, time, sandbox, kind } — and kind-specific fields.
// The audit log writes them as they are (one JSON line each, aggregated: policy/audit.ts), the
// library's listeners (GatewayOptions.onEvent, gateway.on("event")) get the same objects, and the
// control socket streams them as NDJSON (GET /events). `v` is the version of this shape: a field
// removed or changing meaning bumps it; a field or a kind added does not.
//
// A gateway's parts emit through GatewayEvents (its one sink): each source — the engine's
// denials (policy.ts), DNS (dns.ts), TLS (tls.ts), secrets (secrets.ts), ports, lifecycle, limits —
// gives the event's own fields, typed; the envelope is filled in here.
//
// Invariants: an event never carries a secret's value (only its name); `time` is ISO 8601 UTC.
import { EventEmitter } from "node:events";
import type { TlsEvent } from "../tls/proxy.js";
import { AuditLog, type AuditLogOptions } from "../policy/audit.js";
import { ConfigError } from "../errors.js";
import type { SandboxAddresses } from "./addressing.js";

/** The version of the event shape (the `v` field). */
export const EVENT_VERSION = 1;

interface Envelope {
  v: typeof EVENT_VERSION;
  /** ISO 8601, UTC. */
  time: string;
  /** The sandbox's name. */
  sandbox: string;
}

/** A flow the policy (or a fixed rule: multicast, QUIC) denied; from the engine's audit ring. */
export interface FlowDeniedEvent extends Envelope {
  kind: "flow-denied";
  direction: "outbound" | "inbound";
  protocol: "tcp" | "udp" | "icmpv4" | "icmpv6" | string;
  /** ip:port ([v6]:port) */
  source: string;
  destination: string;
  port: number;
  /** "rules[3] deny:egress@group:private", "default", or a fixed reason ("not-routed: ...", "quic: ..."). */
  rule: string;
  action: "deny";
}

/** What DNS interception refused or rewrote (dns/interceptor.ts DnsEventKind, prefixed "dns-"). */
export interface DnsEvent extends Envelope {
  kind: "dns-blocked" | "dns-rebinding" | "dns-upstream-failed" | "dns-formerr" | "dns-denied-resolver" | "dns-overloaded";
  /** The query name, when there was one. */
  name?: string;
  detail?: string;
}

/** A TLS connection or an HTTP request over it that the TLS proxy refused, and why. */
export interface TlsRefusedEvent extends Envelope {
  kind: TlsEvent["kind"];
  /** The SNI, when the client sent one. */
  name?: string;
  /** ip:port */
  destination: string;
  /** "<destination>: <why>" */
  detail: string;
}

/** A secret's placeholder headed where it may not go (never the value). */
export interface SecretViolationGatewayEvent extends Envelope {
  kind: "secret-violation";
  /** The secret's name (its variable). */
  name: string;
  destination: string;
  /** Where the placeholder was: "header x-k", "a TCP stream", "the query name ...". */
  where: string;
  /** raw, base64, percent-encoded, JSON-escaped, ... */
  form: string;
  action: "block" | "block-and-log" | "block-and-terminate";
  detail: string;
}

/** A port published on, or withdrawn from, the sandbox. */
export interface PortEvent extends Envelope {
  kind: "port-published" | "port-unpublished";
  bind: string;
  host: number;
  guest: number;
  protocol: "tcp" | "udp";
}

/** The sandbox's gateway started serving, or stopped. */
export interface LifecycleEvent extends Envelope {
  kind: "sandbox-created" | "sandbox-destroyed";
  /** sandbox-created: the guest's and gateway's addresses. */
  guest?: { ipv4: string; ipv6: string };
  gateway?: { ipv4: string; ipv6: string };
}

/**
 * A limit was hit: new flows refused (max connections, flow table), DNS queries dropped, or a
 * rate limit (--limit-*) dropped, refused or held back traffic. At most one a second per limit.
 */
export interface LimitEvent extends Envelope {
  kind: "limit-hit";
  /** "max-connections", "flow-table", "dns-in-flight", "egress-rate", "ingress-rate", "conn-rate", "dns-rate" */
  limit: string;
  /** How many were refused or dropped since the previous limit-hit event of this limit. */
  count: number;
  /**
   * The rate limits that hold traffic back instead (egress-rate, ingress-rate: times a TCP flow
   * was held back; conn-rate: connections held until the rate allowed them), since the previous.
   */
  delayed?: number;
  detail: string;
}

export type GatewayEvent = FlowDeniedEvent | DnsEvent | TlsRefusedEvent | SecretViolationGatewayEvent | PortEvent | LifecycleEvent | LimitEvent;
export type GatewayEventKind = GatewayEvent["kind"];

/** An event's own fields (and, if it knows better than now, its time): what its source gives. */
export type EventFields<E> = E extends Envelope ? Omit<E, keyof Envelope> & { time?: string } : never;

/** How a gateway's parts emit an event: the gateway fills in the envelope. */
export type Emit = <E extends GatewayEvent>(fields: EventFields<E>) => E;

/** An event with its envelope filled in. */
export function makeEvent<E extends GatewayEvent>(sandbox: string, fields: EventFields<E>): E {
  const { time, ...rest } = fields as { time?: string };
  return { v: EVENT_VERSION, time: time ?? new Date().toISOString(), sandbox, ...rest } as unknown as E;
}

/**
 * The sink: whoever wants a gateway's events subscribes here (the audit log, the library's
 * listener, metrics, the control socket). A listener that throws does not stop the others, nor
 * the gateway: its error is reported once on stderr.
 */
export class EventSink {
  private readonly emitter = new EventEmitter();
  constructor() {
    this.emitter.setMaxListeners(0); // one per control-socket client: no arbitrary cap
  }

  on(fn: (e: GatewayEvent) => void): () => void {
    this.emitter.on("event", fn);
    return () => this.emitter.off("event", fn);
  }

  off(fn: (e: GatewayEvent) => void): void {
    this.emitter.off("event", fn);
  }

  emit(e: GatewayEvent): void {
    for (const fn of this.emitter.listeners("event") as ((e: GatewayEvent) => void)[]) {
      try {
        fn(e);
      } catch (err) {
        process.stderr.write(`moat: an event listener threw on a ${e.kind} event: ${(err as Error)?.message ?? String(err)}\n`);
      }
    }
  }
}

/**
 * A gateway's events: one sink, which the audit log (if asked for), the onEvent option and the
 * gateway's subscribers hear, and each kind counted (secret violations also by action) for metrics.
 */
export class GatewayEvents {
  private readonly sink = new EventSink();
  private readonly auditLog: AuditLog | undefined;
  private wasCreated = false;
  /** Events emitted so far, by kind (secret violations also by action): what metrics report. */
  readonly counts = new Map<string, number>();

  constructor(private readonly sandbox: string, o: { auditLog?: string; auditLogOptions?: AuditLogOptions; onEvent?: (e: GatewayEvent) => void }) {
    const auditLog = (this.auditLog = o.auditLog ? new AuditLog(o.auditLog, o.auditLogOptions) : undefined); // a bad path fails here, before anything runs
    // A violation whose action is "block" is the request's business alone: the audit log has it
    // only with block-and-log or block-and-terminate (listeners and metrics see every one).
    if (auditLog) this.sink.on((e) => { if (!(e.kind === "secret-violation" && e.action === "block")) auditLog.write([e]); });
    this.sink.on((e) => this.count(e));
    if (o.onEvent) this.sink.on(o.onEvent);
  }

  /** The events are written to an audit file. */
  get logged(): boolean {
    return this.auditLog !== undefined;
  }

  /** Subscribe to every event (`name`: "event", the one type); returns an unsubscribe. */
  on(name: "event", fn: (e: GatewayEvent) => void): () => void {
    if (name !== "event") throw new ConfigError(`unknown gateway event "${String(name)}"`, `subscribe with on("event", fn): one event type, told apart by its kind`);
    return this.sink.on(fn);
  }

  off(fn: (e: GatewayEvent) => void): void {
    this.sink.off(fn);
  }

  readonly emit: Emit = <E extends GatewayEvent>(fields: EventFields<E>): E => {
    const e = makeEvent<E>(this.sandbox, fields);
    this.sink.emit(e);
    return e;
  };

  /** The gateway started serving (`a`: the guest's addresses; none: it has no interface). */
  created(a: SandboxAddresses | undefined): void {
    this.wasCreated = true;
    this.emit<LifecycleEvent>({ kind: "sandbox-created", ...(a ? { guest: { ipv4: a.guestIp4, ipv6: a.guestIp6 }, gateway: { ipv4: a.gatewayIp4, ipv6: a.gatewayLl6 } } : {}) });
  }

  /** The gateway stopped: sandbox-destroyed, if it was ever created; the audit log flushed. */
  destroyed(): void {
    if (this.wasCreated) this.emit<LifecycleEvent>({ kind: "sandbox-destroyed" });
    this.auditLog?.close(); // pending summaries of repeated events are written now
  }

  private count(e: GatewayEvent): void {
    const key = e.kind === "secret-violation" ? `secret-violation:${e.action}` : e.kind;
    this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
  }
}
