// limits.ts — a sandbox's rate limits (--limit-egress, --limit-ingress, --limit-conn-rate,
// --limit-dns-rate; the config file's network.limits; the API's limits and setLimits()): one
// grammar, one validation, and the values the engine's token buckets take
// (engine-wasm/assembly/limits.ts, which says how each limit holds traffic back).
//
// Grammar, the same for flags, config file, control socket and API strings:
//   bandwidth  RATE[:BURST]  RATE: a number and a unit of bits per second as tc writes them,
//                            bit, kbit, mbit or gbit (×1000): 10mbit, 1.5gbit, 500kbit.
//                            BURST: bytes, a whole number or with k, m or g (×1024): 512k, 4m.
//   rate       N[:BURST]     N a second (20, 0.5); BURST how many at once, a whole number.
//   none                     no limit (removes one from a running sandbox).
// Bandwidth counts payload: TCP stream bytes and UDP/ICMP datagram payloads, as iperf3 does.
//
// Defaults. A bandwidth burst is 100 ms of the rate, at least 256 KiB, and may not be under
// 64 KiB: a paced TCP flow is offered a window only once the tokens cover a segment, and a
// segment on a 64 KiB link must fit in the bucket. A connection burst is a tenth of a second's
// worth (at least 1): connections over the rate wait rather than fail, so a small burst costs only
// delay, and a client connecting as fast as it can gets the rate from the first second on. A DNS
// burst is a second's worth (at least 1): queries over the rate are refused, and a page load asks
// for many names at once.
//
// A gateway's limits in force, changed live, and the limits hit (GatewayLimits): read from the
// engine's counters once a second, one limit-hit event per limit that moved (gateway/events.ts).
import { ConfigError } from "../errors.js";
import type { EngineHost } from "../engine/engine-host.js";
import type { Emit, LimitEvent } from "./events.js";
import { option } from "./schema.js";

/** Bandwidth: bits per second (×1000 units, as tc), and the bucket in bytes. */
export interface BandwidthLimit { bitsPerSecond: number; burstBytes?: number }
/** Events (connections, DNS queries) per second, and how many may come at once. */
export interface EventRateLimit { perSecond: number; burst?: number }

/**
 * A sandbox's rate limits. Each is a string of the grammar above, a number (rates), an object,
 * or null (none). In setLimits(), a key left out keeps its limit and null removes it.
 */
export interface RateLimits {
  /** Guest to world: "50mbit", "50mbit:512k", { bitsPerSecond: 5e7 }. */
  egress?: BandwidthLimit | string | null;
  /** World to guest, the same forms. */
  ingress?: BandwidthLimit | string | null;
  /** New connections (TCP, UDP and ICMP flows the guest opens) per second: 20, "20:5", { perSecond: 20 }. */
  connRate?: EventRateLimit | number | string | null;
  /** DNS queries per second (UDP, TCP and DoT), the same forms. */
  dnsRate?: EventRateLimit | number | string | null;
}

/** Limits as they are in force: every key present, null where there is none. */
export interface ValidLimits {
  egress: Required<BandwidthLimit> | null;
  ingress: Required<BandwidthLimit> | null;
  connRate: Required<EventRateLimit> | null;
  dnsRate: Required<EventRateLimit> | null;
}

export const LIMIT_KEYS = ["egress", "ingress", "connRate", "dnsRate"] as const;
export type LimitKey = typeof LIMIT_KEYS[number];
/** The command line's name of each limit (the flag of its schema entry, api "limits.KEY"). */
export const LIMIT_FLAGS = Object.fromEntries(LIMIT_KEYS.map((k) => [k, `--${option({ api: `limits.${k}` }).flag}`])) as Readonly<Record<LimitKey, string>>;
export const NO_LIMITS: ValidLimits = Object.freeze({ egress: null, ingress: null, connRate: null, dnsRate: null });

const BIT_UNITS: Readonly<Record<string, number>> = { bit: 1, kbit: 1e3, mbit: 1e6, gbit: 1e9 };
const BYTE_UNITS: Readonly<Record<string, number>> = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 };
const MIN_BURST_BYTES = 64 * 1024;
const DEFAULT_MIN_BURST_BYTES = 256 * 1024;
const MAX_BITS = 1e12;
const MAX_BURST_BYTES = 2 ** 36;
const MAX_PER_SECOND = 1e6;

const BANDWIDTH_FORMS = "RATE[:BURST]: RATE a number with bit, kbit, mbit or gbit (bits per second, ×1000, as tc), e.g. 10mbit or 1.5gbit; BURST bytes, a whole number or with k, m or g (×1024), at least 64k, e.g. 10mbit:512k; or none";
const rateForms = (what: string) => `N[:BURST]: N ${what} a second (e.g. 20 or 0.5), BURST how many at once (a whole number, e.g. 20:5); or none`;

/** `text` as a bandwidth (null for "none"); `what` names where it was written, for the error. */
export function parseBandwidth(text: string, what: string): Required<BandwidthLimit> | null {
  const t = text.trim().toLowerCase();
  if (t === "none") return null;
  const bad = (why = ""): never => { throw new ConfigError(`${what} "${text}" is not a bandwidth${why}`, `give ${BANDWIDTH_FORMS}`); };
  const m = /^(\d+(?:\.\d+)?)([a-z]*)(?::(\d+)([a-z]*))?$/.exec(t);
  if (!m) return bad();
  const unit = BIT_UNITS[m[2]!];
  if (unit === undefined) {
    if (m[2] === "") return bad(": RATE needs a unit");
    if (/bps$|^[kmg]?b$/.test(m[2]!)) return bad(`: moat's rates are bits per second (tc's "${m[2]}" would be bytes): e.g. 80mbit for 10 MB/s`);
    return bad(`: "${m[2]}" is not a unit`);
  }
  let burstBytes: number | undefined;
  if (m[3] !== undefined) {
    const scale = BYTE_UNITS[m[4]!];
    if (scale === undefined) return bad(`: "${m[4]}" is not a unit of BURST (bytes: k, m or g)`);
    burstBytes = Number(m[3]) * scale;
  }
  return bandwidth({ bitsPerSecond: Number(m[1]) * unit, burstBytes }, what, text);
}

/** `text` (or a number) as an event rate (null for "none"); `unit` says what is counted ("connections"). */
export function parseEventRate(text: string | number, what: string, unit: string, defaultBurst: (perSecond: number) => number): Required<EventRateLimit> | null {
  if (typeof text === "number") return eventRate({ perSecond: text }, what, unit, defaultBurst, String(text));
  const t = text.trim().toLowerCase();
  if (t === "none") return null;
  const m = /^(\d+(?:\.\d+)?)(?::(\d+))?$/.exec(t);
  if (!m) throw new ConfigError(`${what} "${text}" is not a rate`, `give ${rateForms(unit)}`);
  return eventRate({ perSecond: Number(m[1]), burst: m[2] === undefined ? undefined : Number(m[2]) }, what, unit, defaultBurst, text);
}

function bandwidth(b: BandwidthLimit, what: string, shown: string): Required<BandwidthLimit> {
  const fail = (why: string): never => { throw new ConfigError(`${what} "${shown}" is not a bandwidth moat takes: ${why}`, `give ${BANDWIDTH_FORMS}`); };
  const bits = b.bitsPerSecond;
  if (typeof bits !== "number" || !Number.isFinite(bits) || bits < 8 || bits > MAX_BITS) fail("the rate must be from 8bit (a byte a second) to 1000gbit");
  const burst = b.burstBytes ?? Math.max(DEFAULT_MIN_BURST_BYTES, Math.round(bits / 8 / 10));
  if (typeof burst !== "number" || !Number.isInteger(burst) || burst < MIN_BURST_BYTES || burst > MAX_BURST_BYTES) {
    fail("BURST must be a whole number of bytes from 64k (a segment on a 64 KiB link must fit) to 64g");
  }
  return { bitsPerSecond: bits, burstBytes: burst };
}

function eventRate(r: EventRateLimit, what: string, unit: string, defaultBurst: (perSecond: number) => number, shown: string): Required<EventRateLimit> {
  const fail = (why: string): never => { throw new ConfigError(`${what} "${shown}" is not a rate moat takes: ${why}`, `give ${rateForms(unit)}`); };
  const n = r.perSecond;
  if (typeof n !== "number" || !Number.isFinite(n) || n <= 0 || n > MAX_PER_SECOND) fail(`N must be above 0 and at most ${MAX_PER_SECOND}`);
  const burst = r.burst ?? defaultBurst(n);
  if (typeof burst !== "number" || !Number.isInteger(burst) || burst < 1 || burst > MAX_PER_SECOND) fail(`BURST must be a whole number from 1 to ${MAX_PER_SECOND}`);
  return { perSecond: n, burst };
}

const connBurst = (n: number) => Math.max(1, Math.ceil(n / 10));
const dnsBurst = (n: number) => Math.max(1, Math.ceil(n));

/** One limit in any of its forms, checked; `what` names where it was written (an option, a config path). */
export function validateLimit(key: LimitKey, value: unknown, what: string): ValidLimits[LimitKey] {
  if (value === null) return null;
  const bytes = key === "egress" || key === "ingress";
  const unit = key === "connRate" ? "connections" : "DNS queries";
  const forms = bytes ? BANDWIDTH_FORMS : rateForms(unit);
  const fields = bytes ? ["bitsPerSecond", "burstBytes"] : ["perSecond", "burst"];
  if (typeof value === "object" && !Array.isArray(value)) {
    const extra = Object.keys(value).find((f) => !fields.includes(f));
    if (extra !== undefined) throw new ConfigError(`${what} has an unknown field "${extra}"`, `give { ${fields[0]}, ${fields[1]}? } or ${forms}`);
    const shown = JSON.stringify(value);
    return bytes ? bandwidth(value as BandwidthLimit, what, shown) : eventRate(value as EventRateLimit, what, unit, key === "connRate" ? connBurst : dnsBurst, shown);
  }
  if (typeof value === "string" && bytes) return parseBandwidth(value, what);
  if ((typeof value === "string" || typeof value === "number") && !bytes) return parseEventRate(value, what, unit, key === "connRate" ? connBurst : dnsBurst);
  throw new ConfigError(`${what} is ${JSON.stringify(value)}, not a limit`, `give ${forms}`);
}

/**
 * `change` applied to `current`: a key left out keeps its limit, null removes it. Unknown keys
 * are refused. `where(key)` names each for errors (default: the command line's option).
 */
export function applyLimits(current: ValidLimits, change: RateLimits, where: (key: LimitKey) => string = (k) => LIMIT_FLAGS[k]): ValidLimits {
  if (typeof change !== "object" || change === null || Array.isArray(change)) throw new ConfigError(`limits must be an object, not ${JSON.stringify(change)}`, `e.g. { "egress": "50mbit", "connRate": 20 }`);
  for (const k of Object.keys(change)) {
    if (!(LIMIT_KEYS as readonly string[]).includes(k)) throw new ConfigError(`unknown limit "${k}"`, `the limits are ${LIMIT_KEYS.join(", ")}`);
  }
  const out: ValidLimits = { ...current };
  for (const k of LIMIT_KEYS) {
    const v = (change as Record<string, unknown>)[k];
    if (v !== undefined) (out as Record<LimitKey, unknown>)[k] = validateLimit(k, v, where(k));
  }
  return out;
}

/** A limit as the grammar writes it ("50mbit:655360", "20:2"), or "none". */
export function formatLimit(v: ValidLimits[LimitKey]): string {
  if (!v) return "none";
  if ("bitsPerSecond" in v) {
    const [unit, scale] = Object.entries(BIT_UNITS).reverse().find(([, s]) => v.bitsPerSecond % s === 0 && v.bitsPerSecond >= s) ?? ["bit", 1];
    const [bunit, bscale] = Object.entries(BYTE_UNITS).reverse().find(([, s]) => v.burstBytes % s === 0) ?? ["", 1];
    return `${v.bitsPerSecond / scale}${unit}:${v.burstBytes / bscale}${bunit}`;
  }
  return `${v.perSecond}:${v.burst}`;
}

/** The engine's buckets (engine-wasm/assembly/limits.ts, order egress, ingress, conn, dns): tokens per ms and size; [0, 0] = none. */
export function engineLimits(v: ValidLimits): [ratePerMs: number, burst: number][] {
  const bytes = (b: Required<BandwidthLimit> | null): [number, number] => (b ? [b.bitsPerSecond / 8 / 1000, b.burstBytes] : [0, 0]);
  const events = (r: Required<EventRateLimit> | null): [number, number] => (r ? [r.perSecond / 1000, r.burst] : [0, 0]);
  return [bytes(v.egress), bytes(v.ingress), events(v.connRate), events(v.dnsRate)];
}

/** What a gateway's rate limits need of it. */
export interface LimitWiring {
  engine(): EngineHost | undefined;
  readonly emit: Emit;
}

/**
 * A gateway's rate limits: those in force, changed live (set), and the limits hit — read from
 * the engine's counters once a second (watch) and at stop (check): one limit-hit event per limit
 * that moved, with what was refused or dropped (`count`) and, for the rate limits that hold
 * traffic back rather than refuse it, how often they did (`delayed`).
 */
export class GatewayLimits {
  private timer: NodeJS.Timeout | undefined;
  private lastLimits: Record<string, number> = {};

  constructor(private now: ValidLimits, private readonly maxConnections: number, private readonly gw: LimitWiring) {}

  /** The rate limits in force (null: none). */
  get limits(): ValidLimits {
    return { ...this.now };
  }

  /** A DNS rate is in force. */
  get dnsRated(): boolean {
    return this.now.dnsRate !== null;
  }

  /**
   * Change the rate limits of the running sandbox: a key given sets that limit ("50mbit", 20,
   * { bitsPerSecond, burstBytes }, ...), null removes it, a key left out keeps it. In force for
   * the flows already open too (a window, a credit, a held SYN) once this resolves; a new limit
   * starts with a full bucket. Resolves with the limits in force.
   */
  async set(change: RateLimits): Promise<ValidLimits> {
    const next = applyLimits(this.now, change, (k) => `limits.${k}`);
    this.now = next; // (a change made before this one resolves builds on it)
    const engine = this.gw.engine();
    if (engine) await engine.setLimits(engineLimits(next));
    return this.limits;
  }

  /** Look for limits hit once a second from now on, until stop(). */
  watch(): void {
    this.timer = setInterval(() => this.check(), 1000);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** Limits hit since the last look (engine counters): their events. */
  check(): void {
    const engine = this.gw.engine();
    if (!engine) return;
    const c = engine.counters();
    const l = this.now;
    const limits: [limit: string, refused: string, delayed: string | undefined, detail: string][] = [
      ["max-connections", "DROP_FLOW_LIMIT", undefined, `new flows refused: the sandbox holds its most connections (${this.maxConnections}, --max-connections)`],
      ["flow-table", "DROP_FLOW_TABLE_FULL", undefined, "new flows refused: the flow table is full"],
      ["dns-in-flight", "DROP_DNS_OVERLOAD", undefined, "DNS queries dropped: too many in flight"],
      ["egress-rate", "DROP_RATE_EGRESS", "RATE_EGRESS_PACED", `traffic from the guest held to ${formatLimit(l.egress)} (--limit-egress): UDP/ICMP datagrams dropped (count), TCP windows held back (delayed)`],
      ["ingress-rate", "DROP_RATE_INGRESS", "RATE_INGRESS_PACED", `traffic to the guest held to ${formatLimit(l.ingress)} (--limit-ingress): UDP/ICMP datagrams dropped (count), TCP reads held back (delayed)`],
      ["conn-rate", "DROP_RATE_CONN", "RATE_CONN_DELAYED", `new connections held to ${formatLimit(l.connRate)} a second (--limit-conn-rate): UDP/ICMP flows dropped or TCP reset with the queue full (count), TCP connections held until the rate allowed (delayed)`],
      ["dns-rate", "DNS_RATE_REFUSED", undefined, `DNS queries held to ${formatLimit(l.dnsRate)} a second (--limit-dns-rate): answered REFUSED`],
    ];
    const moved = (counter: string): number => {
      const now = c[counter] ?? 0;
      const delta = now - (this.lastLimits[counter] ?? 0);
      this.lastLimits[counter] = now;
      return delta;
    };
    for (const [limit, refused, delayedBy, detail] of limits) {
      const count = moved(refused);
      const delayed = delayedBy ? moved(delayedBy) : 0;
      if (count > 0 || delayed > 0) this.gw.emit<LimitEvent>({ kind: "limit-hit", limit, count, ...(delayedBy ? { delayed } : {}), detail });
    }
  }
}
