// engine-host.ts — the pool of engine worker threads, and one sandbox's engine on it.
//
// The pool starts a worker for each of the first `threads` sandboxes (default: one per core,
// setEngineThreads / MOAT_ENGINE_THREADS), then gives each new sandbox to the worker serving the
// fewest: a sandbox's create costs no thread and no isolate once the pool is up. A worker holds
// the process open only while it serves a sandbox. If a worker dies, every sandbox it served
// loses its network (onFailure); a sandbox whose own engine fails stops alone.
import { Worker, MessageChannel, type MessagePort } from "node:worker_threads";
import { availableParallelism } from "node:os";
import * as Comlink from "comlink";
import nodeEndpoint from "comlink/dist/esm/node-adapter.mjs";
import { createEngineMemory } from "./engine-module.js";
import { readCounters, readFlowStats, type EngineConfig, type EngineCounters } from "./engine-config.js";
import { EngineTables } from "./tables.js";
import type { EngineControl, EngineWorkerData, DnsAnswerMessage, DnsWorkerSetup, DnsUpdate, DnsEventMessage, AddSandboxMessage, InstanceStatus } from "./engine-worker.js";
import type { LinkSpec } from "../links/link.js";
import type { LinkMiddleware } from "../links/middleware.js";
import { MoatError, ConfigError } from "../errors.js";
import { DnsStats, type DnsStatsSnapshot } from "../dns/dns-stats.js";

/** The most engine threads a process may be given. */
export const MAX_ENGINE_THREADS = 256;
/** A sandbox's engine that is not serving by then has failed to start. */
const START_TIMEOUT_MS = 15_000;

/** One worker thread of the pool. */
/** A thread of one of this process's pools (engine or TLS): what it serves, and why it ended. */
export class PoolWorker {
  /** Sandboxes (or their TLS proxies) it serves. */
  served = 0;
  exited = false;
  failure: Error | undefined;
  /** Why it ended, for each sandbox it serves (a set, so a stopped sandbox's host is let go). */
  readonly onExit = new Set<(reason: string) => void>();

  /** `what`: the worker's name in a reason ("the engine worker failed: ..."). */
  constructor(readonly worker: Worker, what: string) {
    worker.once("error", (err) => { this.failure = err; });
    worker.once("exit", (code) => {
      this.exited = true;
      const reason = this.failure ? `the ${what} failed: ${this.failure.message}` : `the ${what} exited with code ${code}`;
      for (const f of this.onExit) f(reason);
      this.onExit.clear();
    });
    worker.unref(); // held open only while it serves (take/release)
  }

  /**
   * A worker that stopped answering (a stop not acknowledged in time): out of `pool`, ended.
   * Every sandbox it served hears that it is gone (their networks are down: fail closed).
   */
  terminate(pool: PoolWorker[]): void {
    const i = pool.indexOf(this);
    if (i >= 0) pool.splice(i, 1);
    void this.worker.terminate();
  }

  take(): void {
    if (this.served++ === 0) this.worker.ref();
  }

  release(): void {
    if (--this.served === 0) this.worker.unref();
  }
}

function threadsFromEnv(): number {
  const v = process.env.MOAT_ENGINE_THREADS;
  if (v === undefined || v === "") return availableParallelism();
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > MAX_ENGINE_THREADS) {
    throw new ConfigError(`MOAT_ENGINE_THREADS=${JSON.stringify(v)} is not a whole number from 1 to ${MAX_ENGINE_THREADS}`, "unset it for one engine thread per core");
  }
  return n;
}

const pool: PoolWorker[] = [];
let poolThreads: number | undefined;

/**
 * How many engine worker threads serve this process's sandboxes, and how many TLS worker threads
 * their interception (default: one per core, or MOAT_ENGINE_THREADS). Applies to sandboxes
 * created from now on; workers already running go on serving theirs.
 */
export function setEngineThreads(n: number): void {
  if (!Number.isInteger(n) || n < 1 || n > MAX_ENGINE_THREADS) {
    throw new ConfigError(`engine threads ${n} is not a whole number from 1 to ${MAX_ENGINE_THREADS}`, "e.g. 2 (the default is one per core)");
  }
  poolThreads = n;
}

/** The pool's workers now: their thread ids and how many sandboxes each serves. */
export function engineWorkers(): { threadId: number; sandboxes: number }[] {
  return pool.filter((w) => !w.exited).map((w) => ({ threadId: w.worker.threadId, sandboxes: w.served }));
}

/** How many threads serve each of this process's pools (engine, TLS): setEngineThreads, else MOAT_ENGINE_THREADS, else one per core. */
export function engineThreads(): number {
  return (poolThreads ??= threadsFromEnv());
}

/**
 * From `workers` (those exited dropped): a new one (`make`) while it is short of engineThreads(),
 * else the one serving least (`load`).
 */
export function leastBusy<W extends { exited: boolean }>(workers: W[], make: () => W, load: (w: W) => number): W {
  for (let i = workers.length - 1; i >= 0; i--) if (workers[i]!.exited) workers.splice(i, 1);
  if (workers.length < engineThreads()) {
    const w = make();
    workers.push(w);
    return w;
  }
  return workers.reduce((a, b) => (load(b) < load(a) ? b : a));
}

/** The worker for a new sandbox. */
function acquireWorker(): PoolWorker {
  return leastBusy(pool, () => new PoolWorker(spawnWorker(new URL("./engine-worker.js", import.meta.url)), "engine worker"), (w) => w.served);
}

/** A worker thread running `workerUrl`, with this process's Node options where a worker may have them. */
export function spawnWorker(workerUrl: URL): Worker {
  // The worker takes this process's Node options, but those that only a main script may have
  // (`node --input-type=module -e ...` would otherwise fail every sandbox of that process).
  const execArgv = process.execArgv.filter((a, i, all) => !/^--input-type\b|^(-e|--eval|-p|--print)$/.test(a) && !/^(-e|--eval|-p|--print)$/.test(all[i - 1] ?? ""));
  // (fds the worker closes with fs.close were opened by native code: not Node's to track)
  const base = { trackUnmanagedFds: false };
  try {
    return new Worker(workerUrl, { ...base, execArgv });
  } catch (e) {
    // V8 and process-wide options (--expose-gc, --max-old-space-size, ...) are refused in a
    // worker's execArgv, and Node names them: the worker goes without those (they are the
    // process's already).
    const m = /invalid execArgv flags: (.*)$/m.exec((e as Error).message);
    if ((e as NodeJS.ErrnoException).code !== "ERR_WORKER_INVALID_EXEC_ARGV" || !m) throw e;
    const refused = new Set(m[1]!.split(/,\s*/).map((f) => f.trim()));
    return new Worker(workerUrl, { ...base, execArgv: execArgv.filter((a) => !refused.has(a) && !refused.has(a.split("=")[0]!)) });
  }
}

export class EngineHost {
  private exited = false;
  private stopping = false;
  /** Called if the engine stops while serving (not through stop()): the sandbox has lost its network. */
  onFailure: ((reason: string) => void) | undefined;
  private constructor(
    readonly memory: WebAssembly.Memory,
    /**
     * What the orchestrator writes into the memory (the policy, the host's addresses) and reads
     * back (denials), typed (tables.ts): the same tables `prepare` was given.
     */
    readonly tables: EngineTables,
    private readonly pw: PoolWorker,
    private readonly control: Comlink.Remote<EngineControl>,
    private readonly controlPort: MessagePort,
    exitPromise: Promise<string>,
    private readonly dnsPort: MessagePort,
    /** Let go of the worker's and the ports' hold on this host (its memory, its gateway). */
    private readonly detach: () => void,
  ) {
    void exitPromise.then((reason) => {
      this.exited = true;
      if (!this.stopping) this.onFailure?.(reason);
    });
  }

  /** The thread serving this sandbox's engine. */
  get threadId(): number {
    return this.pw.worker.threadId;
  }

  /**
   * Serve `link` with `config` on a worker of the pool; resolves once frames are being served.
   * `prepare` is given the fresh memory's tables before the engine starts (the policy is
   * installed there, so no frame is ever judged by an empty table); `onAudit` is called when
   * denials are waiting in the audit ring.
   */
  static async start(config: EngineConfig, link: LinkSpec, hooks: {
    prepare?: (tables: EngineTables) => void;
    onAudit?: () => void;
    /** The DNS interceptor the worker runs for guest DNS over UDP; without it, queries get no answer. */
    dns?: DnsWorkerSetup;
    /** DNS events (blocked names, rebinding, ...) for the audit log. */
    onDnsEvent?: (e: NonNullable<DnsEventMessage["event"]>) => void;
    /** Names pinned to addresses by the worker's interceptor (with DnsWorkerSetup.reportAnswers). */
    onDnsAnswered?: (a: NonNullable<DnsEventMessage["answered"]>) => void;
    /** Decorators on the link (pcap, faults). */
    middleware?: LinkMiddleware;
  } = {}): Promise<EngineHost> {
    const memory = createEngineMemory();
    const tables = new EngineTables(new Uint8Array(memory.buffer));
    hooks.prepare?.(tables);
    const audit = new MessageChannel();
    audit.port1.on("message", () => hooks.onAudit?.());
    audit.port1.unref();
    const dns = new MessageChannel();
    dns.port1.on("message", (m: DnsEventMessage) => {
      if (m.event) hooks.onDnsEvent?.(m.event);
      if (m.answered) hooks.onDnsAnswered?.(m.answered);
    });
    dns.port1.unref();
    const ctl = new MessageChannel();
    const status = new MessageChannel();
    const pw = acquireWorker();
    // This sandbox's engine ends when it fails on its own or when its worker dies.
    let onExit: ((reason: string) => void) | undefined;
    const exitPromise = new Promise<string>((resolve) => {
      status.port1.on("message", (m: InstanceStatus) => resolve(m.failed));
      status.port1.unref();
      onExit = resolve;
      pw.onExit.add(resolve);
    });
    const add: EngineWorkerData = { memory, config, link, auditPort: audit.port2, dnsPort: dns.port2, dns: hooks.dns, middleware: hooks.middleware, controlPort: ctl.port2, statusPort: status.port2 };
    pw.worker.postMessage({ add } satisfies AddSandboxMessage, [audit.port2, dns.port2, ctl.port2, status.port2]);
    pw.take();
    const control = Comlink.wrap<EngineControl>(nodeEndpoint(ctl.port1));
    const host = new EngineHost(memory, tables, pw, control, ctl.port1, exitPromise, dns.port1, () => {
      pw.onExit.delete(onExit!);
      status.port1.close();
      audit.port1.close();
    });
    try {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        control.ready().finally(() => clearTimeout(timer)),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new MoatError("ERR_ENGINE", `the engine did not start within ${START_TIMEOUT_MS / 1000} s`)), START_TIMEOUT_MS);
          timer.unref();
        }),
        // The worker's own error (a MoatError's code and hint survive as its properties), else why.
        exitPromise.then((reason) => {
          throw pw.exited && pw.failure ? pw.failure : new MoatError("ERR_ENGINE", `${reason} during start`);
        }),
      ]);
    } catch (err) {
      await host.stop();
      if (err instanceof MoatError) throw err;
      // An error thrown in the worker arrives as a plain Error: a MoatError's code and hint are
      // its own properties still, and are kept.
      const e = err as Error & { hint?: unknown };
      throw new MoatError("ERR_ENGINE", `engine failed to start: ${e.message}`, typeof e.hint === "string" ? e.hint : undefined, { cause: err });
    }
    return host;
  }

  counters(nonZero = false): EngineCounters {
    return readCounters(new Uint8Array(this.memory.buffer), nonZero);
  }

  flowStats(): { flows: number; udp: number; tcp: number } {
    return readFlowStats(new Uint8Array(this.memory.buffer));
  }

  /** Pins from an answer that did not pass through the worker (DNS over TCP). */
  installPins(pins: DnsAnswerMessage["pins"]): void {
    this.updateDns({ pins });
  }

  /** New inputs for the worker's DNS interceptor (after a policy or host address change). */
  updateDns(update: DnsUpdate): void {
    if (!this.exited) this.dnsPort.postMessage(update);
  }

  /** What the worker's DNS interceptor (guest DNS over UDP) answered. */
  async dnsStats(): Promise<DnsStatsSnapshot> {
    if (this.exited || this.stopping) return DnsStats.empty();
    // A worker that is going away may never answer: a scrape must not hang on it.
    let got: DnsStatsSnapshot | undefined;
    await within(this.control.dnsStats().then((s) => { got = s; }), 1000);
    return got ?? DnsStats.empty();
  }

  async liveSockets(): Promise<number> {
    return this.exited || this.stopping ? 0 : this.control.liveSockets();
  }

  /** Listener `id` on (addr, port) toward `guestPort` (engine-worker.ts, listen): the port bound, or -errno. */
  async listen(id: number, protocol: "tcp" | "udp", family: 4 | 6, addr: Uint8Array, port: number, guestPort: number, dualStack = false): Promise<number> {
    if (this.exited || this.stopping) return -5; // EIO: no engine to listen for
    return this.control.listen(id, protocol, family, addr, port, guestPort, dualStack);
  }

  async unlisten(id: number): Promise<void> {
    if (!this.exited) await this.control.unlisten(id);
  }

  /** Set the rate limits (EngineConfig.limits' form); resolves once they are in force. */
  async setLimits(limits: [ratePerMs: number, burst: number][]): Promise<void> {
    if (!this.exited) await this.control.setLimits(limits);
  }

  /** May the guest's next DNS query be answered (the DNS rate; engine-wasm/assembly/limits.ts)? */
  async dnsAdmit(): Promise<boolean> {
    return this.exited || this.stopping ? true : this.control.dnsAdmit();
  }

  /** Stop this sandbox's engine (closing its link and host sockets) and leave the worker; idempotent. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    if (!this.exited) {
      let answered = false;
      try {
        await within(this.control.stop().then(() => { answered = true; }), 1000);
      } catch {
        answered = true; // the worker is gone: nothing left to stop
      }
      // A worker that does not answer is stuck, for every sandbox on it: ended, not handed more.
      if (!answered && !this.pw.exited) this.pw.terminate(pool);
    }
    this.control[Comlink.releaseProxy]();
    this.controlPort.close();
    this.dnsPort.close();
    this.detach();
    this.pw.release();
  }
}

/** `p`, or nothing after `ms`: the timer is cleared either way, so it never holds the process open. */
async function within(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([p, new Promise((r) => { timer = setTimeout(r, ms); })]);
  } finally {
    clearTimeout(timer);
  }
}
