// engine-worker.ts — the body of an engine worker thread, which serves the links of many
// sandboxes (engine-host.ts keeps a pool of these, one per core by default).
//
// Each sandbox served is an EngineInstance: its own WebAssembly instance on its own shared memory
// (flow table, policy, pins, rings, counters), its own native data path (link, host sockets,
// epoll set), its own DNS interceptor and upstream sockets. Nothing of one sandbox's engine is
// reachable from another's: a malformed frame, a full table or a trap in one stops that sandbox
// alone (it reports `failed` and its network is down), never its neighbours. Per sandbox, the
// loop runs whenever native-vmm reports its link or a host socket readable:
//   pump (fds -> rings) -> engineRun (rings -> TX ring + host ops) -> flush (ops, TX -> link)
// repeated until a round moves nothing, at most MAX_ROUNDS_PER_WAKEUP rounds, so one busy
// sandbox yields to the others' wake-ups (libuv serves ready data paths round-robin).
// Each sandbox's control channel is comlink over a MessagePort of its own.
//
// Guest DNS over UDP is answered here, in the worker that owns the sandbox's engine: the DNS
// interceptor (orchestrator/src/dns/interceptor.ts) runs on this thread, reads queries straight
// from the engine's DNS ring, asks the upstreams and injects the answer and its pins, with no hop
// to the main thread on the way (each hop costs a thread wake-up both ways; the main thread is
// shared by every sandbox of the process). The main thread sends policy-dependent inputs (domain
// rule names, deny names, Group Host addresses) when they change, and hears of DNS events for
// the audit log.
import { parentPort, type MessagePort } from "node:worker_threads";
import { performance } from "node:perf_hooks";
import * as Comlink from "comlink";
import nodeEndpoint from "comlink/dist/esm/node-adapter.mjs";
import { instantiateEngine, type EngineExports } from "./engine-module.js";
import { writeEngineConfig, readCounters, type EngineConfig } from "./engine-config.js";
import { layout, wire } from "./layout.js";
import { loadNative } from "../native.js";
import { openLink, type LinkSpec } from "../links/link.js";
import { applyMiddleware, type LinkMiddleware } from "../links/middleware.js";
import { DnsInterceptor, type DnsSettings, type DnsOutcome } from "../dns/interceptor.js";
import { SandboxDnsHooks, type DnsInputs } from "../dns/hooks.js";
import { DnsStats, type DnsStatsSnapshot } from "../dns/dns-stats.js";
import { UpstreamResolver, dgramTransport, type Nameserver, type DatagramChannel, type DatagramTransport } from "../dns/upstream.js";
import { getSystemErrorName } from "node:util";
import { close as fsClose } from "node:fs";
import { enginePins, addr16 } from "./engine-config.js";
import { isIPv4 } from "node:net";
import ipaddr from "ipaddr.js";

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
  /** The sandbox's control channel (comlink: EngineControl). */
  controlPort: MessagePort;
  /** Told `{ failed: reason }` if this sandbox's engine stops on its own (a trap, a link error). */
  statusPort: MessagePort;
}

/** From the pool (engine-host.ts) to a worker: serve one more sandbox. */
export interface AddSandboxMessage { add: EngineWorkerData }

/** From an instance to its host (statusPort). */
export interface InstanceStatus { failed: string }

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

/** Policy-dependent inputs of the interceptor (dns/hooks.ts), sent again whenever they change. */
export interface DnsUpdate extends DnsInputs {
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
/**
 * Rounds per wake-up while the thread serves other sandboxes too: a busy sandbox gives the thread
 * back after this many (its data path is still readable, so libuv calls it again after the
 * others' ready callbacks: round-robin), and a quiet neighbour's packet waits for at most one
 * such turn.
 */
const SHARED_ROUNDS_PER_WAKEUP = 8; // bench:fleet, 8 sandboxes on one thread: ~9 Gbit/s for a lone busy one (10 at 256 rounds, 2.3 at 1)
const TICK_INTERVAL_MS = 100;
const TICK_SCAN_BUDGET = layout.FLOW_CAPACITY; // every flow, every tick: timers need 100 ms resolution
const DNS_TAKE_BYTES = 576 * 1024; // > native's staging bound: one take empties it

const native = loadNative();
/** Shared by every instance of this thread (only one runs at a time): upstream answers, copied out. */
const dnsTakeBuf = new Uint8Array(DNS_TAKE_BYTES);

function socketError(errno: number): Error {
  let name: string;
  try { name = getSystemErrorName(-errno); } catch { name = `errno ${errno}`; }
  return Object.assign(new Error(`upstream socket: ${name}`), { code: name });
}

/** One sandbox's engine, served by this thread. */
class EngineInstance {
  private readonly engine: EngineExports;
  private readonly mem: Uint8Array;
  private readonly dv: DataView;
  private readonly datapath: InstanceType<ReturnType<typeof loadNative>["Datapath"]>;
  private readonly auditTail: Int32Array;
  private auditSeen: number;
  private readonly dnsCtrl: Int32Array;
  private stopped = false;
  private readonly readyPromise: Promise<void>;

  constructor(private readonly data: EngineWorkerData) {
    this.engine = instantiateEngine(data.memory);
    this.mem = new Uint8Array(data.memory.buffer);
    this.dv = new DataView(data.memory.buffer);
    writeEngineConfig(this.mem, data.config);
    this.engine.engineInit();
    this.setLimits(data.config.limits ?? []);
    this.datapath = new native.Datapath(this.mem);
    this.auditTail = new Int32Array(data.memory.buffer, layout.AUDIT_CTRL + layout.RING_CTRL_TAIL, 1);
    this.auditSeen = Atomics.load(this.auditTail, 0);
    this.dnsCtrl = new Int32Array(data.memory.buffer, layout.DNS_CTRL, layout.RING_CTRL_BYTES / 4);
    const dns = data.dns;
    const hooks = new SandboxDnsHooks(dns?.update ?? {}, dns?.placeholders ?? [], dns?.reportAnswers === true,
      () => this.engine.engineDnsAdmit(performance.now()) === 1);
    this.interceptor = dns && new DnsInterceptor(dns.settings, new UpstreamResolver(dns.upstreams, dns.settings.queryTimeoutMs, { transport: this.transport }), hooks);
    data.dnsPort.on("message", (m: DnsUpdate) => {
      if (this.stopped) return;
      hooks.update(m);
      if (m.pins?.length) this.guard(() => this.applyPins(m.pins!));
    });
    const dp = this.datapath;
    this.readyPromise = (async () => {
      const link = await openLink(data.link, native);
      if (this.stopped) {
        // Stopped while the link was opening: the data path takes it only to close it.
        link.attach(dp);
        for (const fd of dp.close()) fsClose(fd, () => {});
        return;
      }
      link.attach(dp);
      applyMiddleware(dp, data.middleware);
      dp.start(() => this.guard(() => this.serve()));
    })();
    // Report a failed link through ready(), not as an unhandled rejection.
    this.readyPromise.catch(() => {});
    Comlink.expose(this.control, nodeEndpoint(data.controlPort));
  }

  /**
   * Run `f` for this sandbox; if it throws (a trap in the engine, a bug), this sandbox stops and
   * says why, and the thread goes on serving the others.
   */
  guard(f: () => void): void {
    if (this.stopped) return;
    try {
      f();
    } catch (e) {
      this.fail(`the engine stopped: ${(e as Error).message}`);
    }
  }

  private fail(reason: string): void {
    if (this.stopped) return;
    this.data.statusPort.postMessage({ failed: reason } satisfies InstanceStatus);
    this.stop();
  }

  private serve(): void {
    const now = performance.now();
    const { datapath, engine } = this;
    const rounds = instances.size > 1 ? SHARED_ROUNDS_PER_WAKEUP : MAX_ROUNDS_PER_WAKEUP;
    for (let round = 0; round < rounds; round++) {
      const got = datapath.pump();
      const done = engine.engineRun(now);
      // Guest DNS goes upstream before anything else is written: a query's latency is the
      // gateway's whole contribution to a lookup.
      if (round === 0) this.drainDnsQueries();
      const wrote = datapath.flush();
      if (got === 0 && done === 0 && wrote === 0) break;
    }
    this.ackDeadline.arm();
    this.limitDeadline.arm();
    const t = Atomics.load(this.auditTail, 0);
    if (t !== this.auditSeen) {
      this.auditSeen = t;
      this.data.auditPort.postMessage(0);
    }
    this.drainDnsQueries();
    this.takeDnsAnswers();
  }

  /** The thread's ticker, every TICK_INTERVAL_MS: flow timers (an idle sandbox returns at once). */
  tick(): void {
    this.guard(() => {
      if (this.engine.engineTick(performance.now(), TICK_SCAN_BUDGET) > 0) this.datapath.flush();
      this.serve();
    });
  }

  // Delayed ACKs (flow/tcp.ts): the engine leaves the earliest deadline at ST_ACK_DUE; a timer set
  // for it sends them, unless the segments that carry them went first.
  private readonly ackDeadline = new EngineDeadline(this, layout.ST_ACK_DUE, (now) => {
    if (this.engine.engineFlushAcks(now) > 0) this.datapath.flush();
  });
  // Rate limits (limits.ts): what a limit held back — a window, peek credit, a SYN — goes on when
  // the tokens come (ST_LIMIT_DUE), with or without a packet to carry it; serve() reads what the
  // credit and the dials bring.
  private readonly limitDeadline = new EngineDeadline(this, layout.ST_LIMIT_DUE, (now) => {
    this.engine.engineLimitWake(now);
    this.serve();
  });

  private setLimits(limits: [number, number][]): void {
    const now = performance.now();
    for (let i = 0; i < 4; i++) this.engine.engineSetLimit(i, limits[i]?.[0] ?? 0, limits[i]?.[1] ?? 0, now);
  }

  /** The engine's f64 at `at` (its deadlines). */
  readF64(at: number): number {
    return this.dv.getFloat64(at, true);
  }

  get isStopped(): boolean {
    return this.stopped;
  }

  // ---- DNS: the interceptor's upstream sockets are native-vmm's, in this sandbox's epoll set ----
  private readonly dnsChannels = new Map<number, { onMessage: (m: Buffer) => void; onError: (e: Error) => void }>();

  /** Upstream DNS sockets in this sandbox's data path (answered within its own wake-ups). */
  private readonly transport: DatagramTransport = { open: (server, onMessage, onError) => this.openDns(server, onMessage, onError) };

  private openDns(server: Nameserver, onMessage: (m: Buffer) => void, onError: (e: Error) => void): DatagramChannel {
    {
      if (server.ip.includes("%")) return dgramTransport.open(server, onMessage, onError); // a zone: Node's sockets know it
      const id = this.stopped ? -9 /* EBADF */ : this.datapath.dnsOpen(isIPv4(server.ip) ? 4 : 6, addr16(server.ip), server.port);
      let open = id >= 0;
      const fail = (errno: number) => queueMicrotask(() => onError(socketError(errno)));
      if (open) this.dnsChannels.set(id, { onMessage, onError });
      else fail(-id);
      const self = this;
      return {
        isReady: open,
        ready: Promise.resolve(),
        send(m: Buffer): void {
          const r = open && !self.stopped ? self.datapath.dnsSend(id, m) : 0;
          if (r < 0) fail(-r);
        },
        close(): void {
          if (!open) return;
          open = false;
          self.dnsChannels.delete(id);
          if (!self.stopped) self.datapath.dnsClose(id);
        },
      };
    }
  }

  /** Upstream answers (and socket errors) read by this wake-up's pumps, to their pool sockets. */
  private takeDnsAnswers(): void {
    for (;;) {
      const n = this.datapath.dnsTake(dnsTakeBuf);
      if (n === 0) return;
      for (let at = 0; at < n;) {
        const id = dnsTakeBuf[at]! | dnsTakeBuf[at + 1]! << 8;
        const len = dnsTakeBuf[at + 2]! | dnsTakeBuf[at + 3]! << 8;
        const ch = this.dnsChannels.get(id); // gone: a socket closed with datagrams still staged
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
  private readonly interceptor: DnsInterceptor | undefined;
  private readonly dnsStats = new DnsStats();

  // Queries taken from the ring and not yet answered. Past DNS_SLOTS the ring is left to fill, and
  // the engine drops further queries (DROP_DNS_OVERLOAD): what a guest can keep in flight stays
  // bounded end to end, however slow the upstreams.
  private dnsOutstanding = 0;

  private drainDnsQueries(): void {
    const { dnsCtrl, dv, mem } = this;
    let head = Atomics.load(dnsCtrl, layout.RING_CTRL_HEAD / 4) >>> 0;
    const tail = Atomics.load(dnsCtrl, layout.RING_CTRL_TAIL / 4) >>> 0;
    if (head === tail) return;
    while (head !== tail && this.dnsOutstanding < layout.DNS_SLOTS) {
      this.dnsOutstanding++;
      const q = layout.DNS_BASE + (head & (layout.DNS_SLOTS - 1)) * layout.DNS_SLOT_BYTES;
      const len = dv.getUint32(q + layout.DQ_LEN, true);
      // Copies: the slot is reused once the head moves on, and the answer comes later.
      void this.answerQuery(mem.slice(q, q + layout.DQ_PAYLOAD), Buffer.from(mem.subarray(q + layout.DQ_PAYLOAD, q + layout.DQ_PAYLOAD + len)));
      head = (head + 1) >>> 0;
    }
    Atomics.store(dnsCtrl, layout.RING_CTRL_HEAD / 4, head | 0);
  }

  private async answerQuery(header: Uint8Array, query: Buffer): Promise<void> {
    let out: DnsOutcome | null = null;
    const started = performance.now();
    const interceptor = this.interceptor;
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
    if (interceptor) this.dnsStats.record("udp", (performance.now() - started) / 1000, out);
    this.dnsOutstanding--;
    if (this.stopped) return;
    this.guard(() => this.answered(header, out));
  }

  private answered(header: Uint8Array, out: DnsOutcome | null): void {
    const { mem, dv, engine, datapath } = this;
    // Pins first: the guest may connect the moment it reads the answer.
    if (out?.pins.length) {
      this.applyPins(enginePins(out.pins));
      if (this.data.dns?.reportAnswers) this.data.dnsPort.postMessage({ answered: out.pins.map((p) => ({ ip: p.ip, name: p.name, ttlMs: p.ttlSec * 1000 })) } satisfies DnsEventMessage);
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
      if (this.dnsOutstanding === 0) datapath.flush();
      else this.flushSoon();
    }
    if (out?.event) this.data.dnsPort.postMessage({ event: out.event } satisfies DnsEventMessage);
    this.drainDnsQueries(); // room again: queries may be waiting in the ring
  }

  // Answers that arrive in one turn of the event loop (a burst of upstream datagrams) go to the
  // link in one flush, after the turn: a write per answer would cost a wake-up of the guest each.
  private flushPending = false;
  private flushSoon(): void {
    if (this.flushPending) return;
    this.flushPending = true;
    setImmediate(() => {
      this.flushPending = false;
      this.guard(() => this.datapath.flush());
    });
  }

  private applyPins(pins: DnsAnswerMessage["pins"]): void {
    const now = performance.now();
    for (const p of pins) {
      this.mem.set(p.addr, layout.PIN_SCRATCH);
      this.engine.dnsPin(p.nameId, p.ttlMs, now);
    }
  }

  private stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    instances.delete(this);
    this.ackDeadline.clear();
    this.limitDeadline.clear();
    // (a TAP's close waits out the kernel's unregistering of its device: on libuv's pool)
    for (const fd of this.datapath.close()) fsClose(fd, () => {});
    this.data.auditPort.close();
    this.data.dnsPort.close();
    this.data.statusPort.close();
    // (after comlink's answer to stop() has gone)
    setImmediate(() => this.data.controlPort.close());
  }

  private readonly control: EngineControl = {
    ready: () => this.readyPromise,
    liveSockets: () => this.datapath.liveSockets(),
    counters: () => readCounters(this.mem, true),
    dnsStats: () => this.dnsStats.snapshot(),
    listen: (id, protocol, family, addr, port, guestPort, dualStack) => {
      const { mem, dv } = this;
      // The entry first: a peer accepted the moment the socket listens is judged against it.
      const e = layout.PUB_BASE + id * layout.PUB_ENTRY_BYTES;
      dv.setUint16(e + layout.PUB_GUEST_PORT, guestPort, true);
      mem[e + layout.PUB_PROTO] = protocol === "tcp" ? wire.PROTO_TCP : wire.PROTO_UDP;
      const r = this.datapath.listen(id, protocol, family, addr, port, dualStack);
      if (r < 0) mem[e + layout.PUB_PROTO] = 0;
      return r;
    },
    unlisten: (id) => {
      // The entry first: a peer that raced the withdrawal is refused by the engine.
      this.mem[layout.PUB_BASE + id * layout.PUB_ENTRY_BYTES + layout.PUB_PROTO] = 0;
      this.datapath.unlisten(id);
      this.flushSoon(); // refusals queued meanwhile go out
    },
    setLimits: (limits) => {
      this.guard(() => {
        this.setLimits(limits);
        this.serve(); // what was released: dials, credit, window updates
      });
    },
    dnsAdmit: () => this.stopped || this.engine.engineDnsAdmit(performance.now()) === 1,
    stop: () => this.stop(),
  };
}

/**
 * A timer for a deadline an instance's engine leaves in its memory at `dueAt` (an f64 of engine
 * time, 0 = none): `fire` runs when it comes, unless the engine did the work first.
 */
class EngineDeadline {
  private timer: NodeJS.Timeout | undefined;
  private at = 0;
  constructor(private readonly inst: EngineInstance, private readonly dueAt: number, private readonly fire: (now: number) => void) {}

  /** Set (or bring forward) the timer for the deadline the engine left. */
  arm(): void {
    const due = this.inst.readF64(this.dueAt);
    if (due === 0 || this.inst.isStopped || (this.timer && this.at <= due)) return;
    clearTimeout(this.timer);
    this.at = due;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.inst.guard(() => {
        this.fire(performance.now());
        this.arm();
      });
    }, Math.max(0, due - performance.now()));
  }

  clear(): void {
    clearTimeout(this.timer);
  }
}

const instances = new Set<EngineInstance>();

// One ticker for the thread: an idle sandbox's tick returns at once (engine.ts, engineTick).
setInterval(() => {
  for (const i of instances) i.tick();
}, TICK_INTERVAL_MS);

parentPort!.on("message", (m: AddSandboxMessage) => {
  if (!m.add) return;
  let inst: EngineInstance;
  try {
    inst = new EngineInstance(m.add);
  } catch (e) {
    // (its control port answers nothing: the host hears why on the status port)
    m.add.statusPort.postMessage({ failed: `the engine could not start: ${(e as Error).message}` } satisfies InstanceStatus);
    for (const port of [m.add.statusPort, m.add.auditPort, m.add.dnsPort, m.add.controlPort]) port.close();
    return;
  }
  instances.add(inst);
});
