// engine-worker.ts — the body of one engine worker thread.
//
// It instantiates engine-wasm on the shared memory it was given, opens its link, and runs the
// data-path loop whenever native-vmm reports the link or a host socket readable:
//   pump (fds -> rings) -> engineRun (rings -> TX ring + host ops) -> flush (ops, TX -> link)
// repeated until a round moves nothing (bounded, so timers and control calls still run).
// The control channel to the orchestrator is comlink over the worker's parentPort.
//
// Guest DNS over UDP is answered here, in the worker that owns the sandbox's engine: the DNS
// interceptor (orchestrator/src/dns/interceptor.ts) runs on this thread, reads queries straight
// from the engine's DNS ring, asks the upstreams and injects the answer and its pins, with no hop
// to the main thread on the way (each hop costs a thread wake-up both ways; the main thread is
// shared by every sandbox of the process). The main thread sends policy-dependent inputs (domain
// rule names, deny names, Group Host addresses) when they change, and hears of DNS events for
// the audit log.
import { parentPort, workerData, type MessagePort } from "node:worker_threads";
import { performance } from "node:perf_hooks";
import * as Comlink from "comlink";
import nodeEndpoint from "comlink/dist/esm/node-adapter.mjs";
import { instantiateEngine } from "./engine-module.js";
import { writeEngineConfig, readCounters, type EngineConfig } from "./engine-config.js";
import { layout, wire } from "./layout.js";
import { loadNative } from "../native.js";
import { openLink, type LinkSpec } from "../links/link.js";
import { applyMiddleware, type LinkMiddleware } from "../links/middleware.js";
import { DnsInterceptor, type DnsSettings, type DnsOutcome } from "../dns/interceptor.js";
import { DnsStats, type DnsStatsSnapshot } from "../dns/dns-stats.js";
import { UpstreamResolver, setDatagramTransport, dgramTransport, type Nameserver, type DatagramChannel } from "../dns/upstream.js";
import { getSystemErrorName } from "node:util";
import { classifyAddress } from "../policy/groups.js";
import { enginePins, addr16 } from "./engine-config.js";
import { isIPv4 } from "node:net";
import ipaddr from "ipaddr.js";
import { placeholderInName } from "../secrets/secrets.js";

export interface EngineWorkerData {
  memory: WebAssembly.Memory;
  config: EngineConfig;
  link: LinkSpec;
  /** Decorators on the link: pcap capture, fault injection (links/middleware.ts). */
  middleware?: LinkMiddleware;
  /** Told (an empty message) when the engine has recorded denials in the audit ring. */
  auditPort: MessagePort;
  /** DNS: inputs from the main thread (DnsUpdate, pins from DNS over TCP) in, events (DnsEventMessage) out. */
  dnsPort: MessagePort;
  /** The interceptor's setup; without it guest DNS over UDP gets no answer. */
  dns?: DnsWorkerSetup;
}

/** What the worker's DNS interceptor is built from (all of it structured-clonable). */
export interface DnsWorkerSetup {
  settings: DnsSettings;
  upstreams: Nameserver[];
  update: DnsUpdate;
  /** Send the pinned (name, address) pairs of every answer to the main thread (TLS interception). */
  reportAnswers?: boolean;
  /** Secrets' placeholders: a query name carrying one is refused (a secret-violation event). */
  placeholders?: { env: string; placeholder: string }[];
}

/** Policy-dependent inputs of the interceptor, sent again whenever they change. */
export interface DnsUpdate {
  /** NameTable.names (id = index + 1). */
  names?: string[];
  /** Names covered by Deny domain rules. */
  deny?: { domains: string[]; suffixes: string[] };
  /** Group Host addresses, normalised (policy/groups.ts, hostSet). */
  host?: string[];
  /** Pins to set (answers that did not pass through here: DNS over TCP). */
  pins?: DnsAnswerMessage["pins"];
}

/**
 * From the worker's interceptor: a DNS event for the audit log (blocked name, rebinding, ...),
 * or (when the main thread asked for them, DnsWorkerSetup.reportAnswers) the names pinned to
 * addresses, which the TLS proxy holds SNIs to.
 */
export interface DnsEventMessage { event?: NonNullable<DnsOutcome["event"]>; answered?: { ip: string; name: string; ttlMs: number }[] }

/** Pins as the engine takes them: a 16-byte address, a domain rule name id, a lifetime. */
export interface DnsAnswerMessage { pins: { addr: Uint8Array; nameId: number; ttlMs: number }[] }

/** What the orchestrator can ask of a running engine (through comlink). */
export interface EngineControl {
  /** Resolves once the link is attached and frames are being served. */
  ready(): Promise<void>;
  liveSockets(): number;
  /** The engine's counters by name (also readable straight from the shared memory). */
  counters(): Record<string, number>;
  /** What this worker's DNS interceptor (guest DNS over UDP) answered, for metrics. */
  dnsStats(): DnsStatsSnapshot;
  /**
   * Publish a port: listener `id` (< PUB_MAX) on (addr, port), leading to `guestPort`; an IPv6
   * listener takes IPv4 peers too when `dualStack`. Returns the port bound, or -errno.
   */
  listen(id: number, protocol: "tcp" | "udp", family: 4 | 6, addr: Uint8Array, port: number, guestPort: number, dualStack: boolean): number;
  /** Withdraw listener `id`: new peers are refused from now on; connections already made go on. */
  unlisten(id: number): void;
  /** Set the rate limits (EngineConfig.limits' form); what they held and may now go on does. */
  setLimits(limits: [ratePerMs: number, burst: number][]): void;
  /** May the guest's next DNS query be answered (the DNS rate)? false: refuse it (counted). */
  dnsAdmit(): boolean;
  /** Stop serving, close the link and every host socket. */
  stop(): void;
}

const MAX_ROUNDS_PER_WAKEUP = 256;
const TICK_INTERVAL_MS = 100;
const TICK_SCAN_BUDGET = layout.FLOW_CAPACITY; // every flow, every tick: timers need 100 ms resolution

const data = workerData as EngineWorkerData;
const native = loadNative();
const engine = instantiateEngine(data.memory);
const mem = new Uint8Array(data.memory.buffer);
writeEngineConfig(mem, data.config);
engine.engineInit();
setLimits(data.config.limits ?? []);
const datapath = new native.Datapath(mem);

const auditTail = new Int32Array(data.memory.buffer, layout.AUDIT_CTRL + layout.RING_CTRL_TAIL, 1);
let auditSeen = Atomics.load(auditTail, 0);

function serve(): void {
  const now = performance.now();
  for (let round = 0; round < MAX_ROUNDS_PER_WAKEUP; round++) {
    const got = datapath.pump();
    const done = engine.engineRun(now);
    // Guest DNS goes upstream before anything else is written: a query's latency is the
    // gateway's whole contribution to a lookup.
    if (round === 0) drainDnsQueries();
    const wrote = datapath.flush();
    if (got === 0 && done === 0 && wrote === 0) break;
  }
  ackDeadline.arm();
  limitDeadline.arm();
  const t = Atomics.load(auditTail, 0);
  if (t !== auditSeen) {
    auditSeen = t;
    data.auditPort.postMessage(0);
  }
  drainDnsQueries();
  takeDnsAnswers();
}

/**
 * A timer for a deadline the engine leaves in its memory at `dueAt` (an f64 of engine time, 0 =
 * none): `fire` runs when it comes, unless the engine did the work first.
 */
class EngineDeadline {
  private timer: NodeJS.Timeout | undefined;
  private at = 0;
  constructor(private readonly dueAt: number, private readonly fire: (now: number) => void) {}

  /** Set (or bring forward) the timer for the deadline the engine left. */
  arm(): void {
    const due = dv.getFloat64(this.dueAt, true);
    if (due === 0 || stopped || (this.timer && this.at <= due)) return;
    clearTimeout(this.timer);
    this.at = due;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (stopped) return;
      this.fire(performance.now());
      this.arm();
    }, Math.max(0, due - performance.now()));
  }

  clear(): void {
    clearTimeout(this.timer);
  }
}

// Delayed ACKs (flow/tcp.ts): the engine leaves the earliest deadline at ST_ACK_DUE; a timer set
// for it sends them, unless the segments that carry them went first.
const ackDeadline = new EngineDeadline(layout.ST_ACK_DUE, (now) => {
  if (engine.engineFlushAcks(now) > 0) datapath.flush();
});
// Rate limits (limits.ts): what a limit held back — a window, peek credit, a SYN — goes on when
// the tokens come (ST_LIMIT_DUE), with or without a packet to carry it; serve() reads what the
// credit and the dials bring.
const limitDeadline = new EngineDeadline(layout.ST_LIMIT_DUE, (now) => {
  engine.engineLimitWake(now);
  serve();
});

function setLimits(limits: [number, number][]): void {
  const now = performance.now();
  for (let i = 0; i < 4; i++) engine.engineSetLimit(i, limits[i]?.[0] ?? 0, limits[i]?.[1] ?? 0, now);
}

// ---- DNS: the interceptor's upstream sockets are native-vmm's, in this worker's epoll set ----
const dnsChannels = new Map<number, { onMessage: (m: Buffer) => void; onError: (e: Error) => void }>();
const dnsTakeBuf = new Uint8Array(576 * 1024); // > native's staging bound: one take empties it

function socketError(errno: number): Error {
  let name: string;
  try { name = getSystemErrorName(-errno); } catch { name = `errno ${errno}`; }
  return Object.assign(new Error(`upstream socket: ${name}`), { code: name });
}

setDatagramTransport({
  open(server, onMessage, onError): DatagramChannel {
    if (server.ip.includes("%")) return dgramTransport.open(server, onMessage, onError); // a zone: Node's sockets know it
    const id = datapath.dnsOpen(isIPv4(server.ip) ? 4 : 6, addr16(server.ip), server.port);
    let open = id >= 0;
    const fail = (errno: number) => queueMicrotask(() => onError(socketError(errno)));
    if (open) dnsChannels.set(id, { onMessage, onError });
    else fail(-id);
    return {
      isReady: open,
      ready: Promise.resolve(),
      send(m: Buffer): void {
        const r = open ? datapath.dnsSend(id, m) : 0;
        if (r < 0) fail(-r);
      },
      close(): void {
        if (!open) return;
        open = false;
        dnsChannels.delete(id);
        datapath.dnsClose(id);
      },
    };
  },
});

/** Upstream answers (and socket errors) read by this wake-up's pumps, to their pool sockets. */
function takeDnsAnswers(): void {
  for (;;) {
    const n = datapath.dnsTake(dnsTakeBuf);
    if (n === 0) return;
    for (let at = 0; at < n;) {
      const id = dnsTakeBuf[at]! | dnsTakeBuf[at + 1]! << 8;
      const len = dnsTakeBuf[at + 2]! | dnsTakeBuf[at + 3]! << 8;
      const ch = dnsChannels.get(id); // gone: a socket closed with datagrams still staged
      if (len === 0xffff) {
        ch?.onError(socketError(dnsTakeBuf[at + 4]! | dnsTakeBuf[at + 5]! << 8));
        at += 6;
        continue;
      }
      // A copy: the answer outlives this buffer (it is judged after the resolver's promise settles).
      if (ch) ch.onMessage(Buffer.from(dnsTakeBuf.subarray(at + 4, at + 4 + len)));
      at += 4 + len;
    }
  }
}

// ---- DNS: queries from the engine's ring through the interceptor, answers back into the engine ----
const dnsCtrl = new Int32Array(data.memory.buffer, layout.DNS_CTRL, layout.RING_CTRL_BYTES / 4);
const dv = new DataView(data.memory.buffer);

let dnsNames: readonly string[] = data.dns?.update.names ?? [];
let dnsDeny = data.dns?.update.deny ?? { domains: [], suffixes: [] };
let dnsHost: ReadonlySet<string> = new Set(data.dns?.update.host ?? []);
const interceptor = data.dns && new DnsInterceptor(data.dns.settings, new UpstreamResolver(data.dns.upstreams, data.dns.settings.queryTimeoutMs), {
  nameIds: () => dnsNames,
  denyNames: () => dnsDeny,
  resolverAllowed: () => true, // the engine judged the resolver by policy before queueing the query
  classify: (ip) => classifyAddress(ip, dnsHost),
  secretIn: (name, query) => placeholderInName(data.dns?.placeholders ?? [], name, query),
  recordAnswers: () => data.dns?.reportAnswers === true,
  admit: () => engine.engineDnsAdmit(performance.now()) === 1,
});

// Queries taken from the ring and not yet answered. Past DNS_SLOTS the ring is left to fill, and
// the engine drops further queries (DROP_DNS_OVERLOAD): what a guest can keep in flight stays
// bounded end to end, however slow the upstreams.
let dnsOutstanding = 0;

function drainDnsQueries(): void {
  let head = Atomics.load(dnsCtrl, layout.RING_CTRL_HEAD / 4) >>> 0;
  const tail = Atomics.load(dnsCtrl, layout.RING_CTRL_TAIL / 4) >>> 0;
  if (head === tail) return;
  while (head !== tail && dnsOutstanding < layout.DNS_SLOTS) {
    dnsOutstanding++;
    const q = layout.DNS_BASE + (head & (layout.DNS_SLOTS - 1)) * layout.DNS_SLOT_BYTES;
    const len = dv.getUint32(q + layout.DQ_LEN, true);
    // Copies: the slot is reused once the head moves on, and the answer comes later.
    void answerQuery(mem.slice(q, q + layout.DQ_PAYLOAD), Buffer.from(mem.subarray(q + layout.DQ_PAYLOAD, q + layout.DQ_PAYLOAD + len)));
    head = (head + 1) >>> 0;
  }
  Atomics.store(dnsCtrl, layout.RING_CTRL_HEAD / 4, head | 0);
}

const dnsStats = new DnsStats();

async function answerQuery(header: Uint8Array, query: Buffer): Promise<void> {
  let out: DnsOutcome | null = null;
  const started = performance.now();
  try {
    if (interceptor) {
      const u32 = (off: number) => header[off]! | header[off + 1]! << 8 | header[off + 2]! << 16 | header[off + 3]! << 24;
      const a = layout.DQ_DEST_ADDR;
      // (A typed array's join costs more than the rest of this function: the quad is built by hand.)
      const ip = u32(layout.DQ_FAMILY) === 4 ? `${header[a + 12]}.${header[a + 13]}.${header[a + 14]}.${header[a + 15]}`
        : ipaddr.fromByteArray(Array.from(header.subarray(a, a + 16))).toString();
      out = await interceptor.handle(query, { protocol: "udp", toGateway: u32(layout.DQ_TO_GATEWAY) === 1, dest: { ip, port: u32(layout.DQ_DEST_PORT) } });
    }
  } catch {
    out = null; // no answer: the stub retries
  }
  if (interceptor) dnsStats.record("udp", (performance.now() - started) / 1000, out);
  dnsOutstanding--;
  if (stopped) return;
  // Pins first: the guest may connect the moment it reads the answer.
  if (out?.pins.length) {
    applyPins(enginePins(out.pins));
    if (data.dns?.reportAnswers) data.dnsPort.postMessage({ answered: out.pins.map((p) => ({ ip: p.ip, name: p.name, ttlMs: p.ttlSec * 1000 })) } satisfies DnsEventMessage);
  }
  if (out?.answer) {
    mem.set(header, layout.DNS_ANSWER_BASE);
    dv.setUint32(layout.DNS_ANSWER_BASE + layout.DQ_LEN, out.answer.length, true);
    mem.set(out.answer, layout.DNS_ANSWER_BASE + layout.DQ_PAYLOAD);
    if (!engine.dnsAnswer()) {
      datapath.flush(); // the TX ring was full: drain it to the link and try once more
      engine.dnsAnswer();
    }
    // Other answers due soon go out with this one, after the loop's turn; the last one in flight
    // (a lone lookup) goes at once.
    if (dnsOutstanding === 0) datapath.flush();
    else flushSoon();
  }
  if (out?.event) data.dnsPort.postMessage({ event: out.event } satisfies DnsEventMessage);
  drainDnsQueries(); // room again: queries may be waiting in the ring
}

// Answers that arrive in one turn of the event loop (a burst of upstream datagrams) go to the
// link in one flush, after the turn: a write per answer would cost a wake-up of the guest each.
let flushPending = false;
function flushSoon(): void {
  if (flushPending) return;
  flushPending = true;
  setImmediate(() => {
    flushPending = false;
    if (!stopped) datapath.flush();
  });
}

data.dnsPort.on("message", (m: DnsUpdate) => {
  if (stopped) return;
  if (m.names) dnsNames = m.names;
  if (m.deny) dnsDeny = m.deny;
  if (m.host) dnsHost = new Set(m.host);
  if (m.pins?.length) applyPins(m.pins);
});

function applyPins(pins: DnsAnswerMessage["pins"]): void {
  const now = performance.now();
  for (const p of pins) {
    mem.set(p.addr, layout.PIN_SCRATCH);
    engine.dnsPin(p.nameId, p.ttlMs, now);
  }
}

let stopped = false;
const readyPromise = (async () => {
  const link = await openLink(data.link, native);
  link.attach(datapath);
  applyMiddleware(datapath, data.middleware);
  datapath.start(serve);
})();
// Report a failed link through ready(), not as an unhandled rejection.
readyPromise.catch(() => {});

const ticker = setInterval(() => {
  if (engine.engineTick(performance.now(), TICK_SCAN_BUDGET) > 0) datapath.flush();
  serve();
}, TICK_INTERVAL_MS);

const control: EngineControl = {
  ready: () => readyPromise,
  liveSockets: () => datapath.liveSockets(),
  counters: () => readCounters(mem, true),
  dnsStats: () => dnsStats.snapshot(),
  listen(id, protocol, family, addr, port, guestPort, dualStack) {
    // The entry first: a peer accepted the moment the socket listens is judged against it.
    const e = layout.PUB_BASE + id * layout.PUB_ENTRY_BYTES;
    dv.setUint16(e + layout.PUB_GUEST_PORT, guestPort, true);
    mem[e + layout.PUB_PROTO] = protocol === "tcp" ? wire.PROTO_TCP : wire.PROTO_UDP;
    const r = datapath.listen(id, protocol, family, addr, port, dualStack);
    if (r < 0) mem[e + layout.PUB_PROTO] = 0;
    return r;
  },
  unlisten(id) {
    // The entry first: a peer that raced the withdrawal is refused by the engine.
    mem[layout.PUB_BASE + id * layout.PUB_ENTRY_BYTES + layout.PUB_PROTO] = 0;
    datapath.unlisten(id);
    flushSoon(); // refusals queued meanwhile go out
  },
  setLimits(limits) {
    if (stopped) return;
    setLimits(limits);
    serve(); // what was released: dials, credit, window updates
  },
  dnsAdmit: () => engine.engineDnsAdmit(performance.now()) === 1,
  stop() {
    if (stopped) return;
    stopped = true;
    clearInterval(ticker);
    ackDeadline.clear();
    limitDeadline.clear();
    datapath.close();
    data.auditPort.close();
    data.dnsPort.close();
    setImmediate(() => parentPort?.close());
  },
};

Comlink.expose(control, nodeEndpoint(parentPort!));
