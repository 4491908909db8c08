// engine-host.ts — starting, observing and stopping one engine worker from the orchestrator.
import { Worker, MessageChannel } from "node:worker_threads";
import * as Comlink from "comlink";
import nodeEndpoint from "comlink/dist/esm/node-adapter.mjs";
import { createEngineMemory } from "./engine-module.js";
import { readCounters, readFlowStats, type EngineConfig, type EngineCounters } from "./engine-config.js";
import type { EngineControl, EngineWorkerData, DnsAnswerMessage, DnsWorkerSetup, DnsUpdate, DnsEventMessage } from "./engine-worker.js";
import type { LinkSpec } from "../links/link.js";
import type { LinkMiddleware } from "../links/middleware.js";
import { MoatError } from "../errors.js";
import { DnsStats, type DnsStatsSnapshot } from "../dns/dns-stats.js";


export class EngineHost {
  private exited = false;
  private stopping = false;
  /** Called if the worker dies while serving (not through stop()): the sandbox has lost its network. */
  onFailure: ((reason: string) => void) | undefined;
  private constructor(
    readonly memory: WebAssembly.Memory,
    private readonly worker: Worker,
    private readonly control: Comlink.Remote<EngineControl>,
    private readonly exitPromise: Promise<number>,
    private readonly dnsPort: import("node:worker_threads").MessagePort,
  ) {
    void exitPromise.then((code) => {
      this.exited = true;
      if (!this.stopping) this.onFailure?.(`the engine worker exited with code ${code}`);
    });
  }

  /**
   * Spawn a worker serving `link` with `config`; resolves once frames are being served.
   * `prepare` runs on the fresh memory before the engine starts (the policy is installed there,
   * so no frame is ever judged by an empty table); `onAudit` is called when denials are waiting
   * in the audit ring.
   */
  static async start(config: EngineConfig, link: LinkSpec, hooks: {
    prepare?: (mem: Uint8Array) => void;
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
    hooks.prepare?.(new Uint8Array(memory.buffer));
    const audit = new MessageChannel();
    audit.port1.on("message", () => hooks.onAudit?.());
    audit.port1.unref();
    const dns = new MessageChannel();
    dns.port1.on("message", (m: DnsEventMessage) => {
      if (m.event) hooks.onDnsEvent?.(m.event);
      if (m.answered) hooks.onDnsAnswered?.(m.answered);
    });
    dns.port1.unref();
    const workerData: EngineWorkerData = { memory, config, link, auditPort: audit.port2, dnsPort: dns.port2, dns: hooks.dns, middleware: hooks.middleware };
    // The worker takes this process's Node options, but those that only a main script may have
    // (`node --input-type=module -e ...` would otherwise fail every sandbox of that process).
    const execArgv = process.execArgv.filter((a, i, all) => !/^--input-type\b|^(-e|--eval|-p|--print)$/.test(a) && !/^(-e|--eval|-p|--print)$/.test(all[i - 1] ?? ""));
    const workerUrl = new URL("./engine-worker.js", import.meta.url);
    let worker: Worker;
    try {
      worker = new Worker(workerUrl, { workerData, transferList: [audit.port2, dns.port2], execArgv });
    } catch (e) {
      // V8 and process-wide options (--expose-gc, --max-old-space-size, ...) are refused in a
      // worker's execArgv, and Node names them: the worker goes without those (they are the
      // process's already).
      const m = /invalid execArgv flags: (.*)$/m.exec((e as Error).message);
      if ((e as NodeJS.ErrnoException).code !== "ERR_WORKER_INVALID_EXEC_ARGV" || !m) throw e;
      const refused = new Set(m[1]!.split(/,\s*/).map((f) => f.trim()));
      worker = new Worker(workerUrl, { workerData, transferList: [audit.port2, dns.port2], execArgv: execArgv.filter((a) => !refused.has(a) && !refused.has(a.split("=")[0]!)) });
    }
    let failure: Error | undefined;
    const exitPromise = new Promise<number>((resolve) => {
      worker.once("error", (err) => { failure = err; });
      worker.once("exit", resolve);
    });
    const control = Comlink.wrap<EngineControl>(nodeEndpoint(worker));
    const host = new EngineHost(memory, worker, control, exitPromise, dns.port1);
    try {
      await Promise.race([
        control.ready(),
        exitPromise.then((code) => {
          throw failure ?? new MoatError("ERR_ENGINE", `engine worker exited with code ${code} during start`);
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
    return this.control.liveSockets();
  }

  /** Listener `id` on (addr, port) toward `guestPort` (engine-worker.ts, listen): the port bound, or -errno. */
  async listen(id: number, protocol: "tcp" | "udp", family: 4 | 6, addr: Uint8Array, port: number, guestPort: number, dualStack = false): Promise<number> {
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

  /** Stop the worker (closing its link and host sockets); idempotent. */
  async stop(): Promise<void> {
    this.stopping = true;
    if (this.exited) return;
    try {
      await within(this.control.stop(), 1000);
    } catch {
      // the worker may already be gone
    }
    await within(this.exitPromise, 1000);
    if (!this.exited) await this.worker.terminate();
    this.control[Comlink.releaseProxy]();
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
