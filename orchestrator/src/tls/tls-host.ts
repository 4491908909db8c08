// tls-host.ts — the main thread's side of the TLS workers (tls-worker.ts): a pool of worker
// threads (as many as the engine's: engineThreads()), each serving the TLS proxies of the
// sandboxes assigned to it (the least busy at a sandbox's start). The main thread keeps only what
// is a sandbox's as a whole: its DNS (DoT queries come here), its events and secret violations,
// the authoritative name table and pins, and the minting pool for a burst's leaves (piscina).
//
// A proxy's stats are counted on its worker into a SharedArrayBuffer read here as it is. A worker
// that fails takes its proxies' listeners with it: each of its sandboxes hears it (onFailure) and
// its network goes down (fail closed), said on stderr.
import { MessageChannel } from "node:worker_threads";
import * as Comlink from "comlink";
import nodeEndpoint from "comlink/dist/esm/node-adapter.mjs";
import { PoolWorker, leastBusy, spawnWorker } from "../engine/engine-host.js";
import { MoatError } from "../errors.js";
import { mintPool, type CertificateAuthority } from "./ca.js";
import { TLS_STAT_NAMES, tlsStatsOver, type TlsProxyStats } from "./proxy.js";
import type { TlsCalls, TlsMint, TlsMintMessage, TlsOpenMessage, TlsProxySetup, TlsWorkerControl } from "./tls-worker.js";

const OPEN_TIMEOUT_MS = 15_000;
const CLOSE_TIMEOUT_MS = 5_000;


const workers: PoolWorker[] = [];

function acquire(): PoolWorker {
  return leastBusy(workers, () => {
    const w = new PoolWorker(spawnWorker(new URL("./tls-worker.js", import.meta.url)), "TLS worker");
    // The worker's channel to this process's minting pool, for every CA it serves.
    const ch = new MessageChannel();
    Comlink.expose({ mint: (task) => mintPool().run(task) } satisfies TlsMint, nodeEndpoint(ch.port1));
    ch.port1.unref();
    w.worker.postMessage({ mint: ch.port2 } satisfies TlsMintMessage, [ch.port2]);
    w.worker.once("exit", () => ch.port1.close());
    return w;
  }, (w) => w.served);
}

/** The TLS workers now: their thread ids and how many proxies each serves. */
export function tlsWorkers(): { threadId: number; proxies: number }[] {
  return workers.filter((w) => !w.exited).map((w) => ({ threadId: w.worker.threadId, proxies: w.served }));
}

export interface RemoteTlsOptions extends Omit<TlsProxySetup, "ca" | "token"> {
  token: Buffer;
  ca: CertificateAuthority;
  /** What the worker asks of the sandbox. */
  calls: TlsCalls;
}

/** A sandbox's TLS proxy, served on a TLS worker. */
export class RemoteTlsProxy {
  private closing: Promise<void> | undefined;
  /** Told if the proxy's worker ends while it serves (its listener is gone with it). */
  onFailure: ((reason: string) => void) | undefined;

  private constructor(
    private readonly w: PoolWorker,
    private readonly control: Comlink.Remote<TlsWorkerControl>,
    private readonly ports: { close(): void }[],
    private readonly listening: { address: string; port: number },
    /** What the proxy has done, read from the worker's counters as they are. */
    readonly stats: TlsProxyStats,
    private readonly onExit: (reason: string) => void,
  ) {}

  static async open(o: RemoteTlsOptions): Promise<RemoteTlsProxy> {
    const { calls, ca, token, ...rest } = o;
    const w = acquire();
    const control = new MessageChannel();
    const back = new MessageChannel();
    const stats = new SharedArrayBuffer(8 * TLS_STAT_NAMES.length);
    Comlink.expose(calls, nodeEndpoint(back.port1));
    const setup: TlsProxySetup = { ...rest, token: new Uint8Array(token), ca: ca.share() };
    w.worker.postMessage({ open: { setup, stats, control: control.port2, calls: back.port2 } } satisfies TlsOpenMessage, [control.port2, back.port2]);
    w.take();
    const remote = Comlink.wrap<TlsWorkerControl>(nodeEndpoint(control.port1));
    let onExit!: (reason: string) => void;
    let opened: RemoteTlsProxy | undefined;
    const exited = new Promise<never>((_, reject) => {
      onExit = (reason) => {
        if (opened) opened.onFailure?.(reason);
        else reject(new MoatError("ERR_ENGINE", `${reason} while a TLS proxy started`));
      };
      w.onExit.add(onExit);
    });
    exited.catch(() => {}); // (raced below while opening; after that, onFailure says it)
    let timer: NodeJS.Timeout | undefined;
    const ports = [control.port1, back.port1];
    try {
      const address = await Promise.race([
        remote.address(),
        exited,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new MoatError("ERR_ENGINE", `the TLS proxy did not start within ${OPEN_TIMEOUT_MS / 1000} s`)), OPEN_TIMEOUT_MS);
        }),
      ]);
      return (opened = new RemoteTlsProxy(w, remote, ports, address, tlsStatsOver(stats), onExit));
    } catch (e) {
      w.onExit.delete(onExit);
      w.release();
      for (const p of ports) p.close();
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Where the engine sends intercepted connections. */
  address(): { address: string; port: number } {
    return this.listening;
  }

  private pending: { ip: string; name: string; ttlMs: number }[] = [];

  /**
   * Names this sandbox's DNS answered with an address (the replica's pins): sent once per turn of
   * the event loop, however many answers came in it (a guest's DNS flood costs a message a turn).
   */
  pins(list: { ip: string; name: string; ttlMs: number }[]): void {
    if (!list.length || this.closing) return;
    if (this.pending.length === 0) {
      setImmediate(() => {
        const batch = this.pending;
        this.pending = [];
        if (!this.closing) this.control.pins(batch).catch(() => {});
      });
    }
    for (const p of list) this.pending.push(p);
  }

  /** The gateway's name table and the policy's rules (described), after a policy change. */
  policy(names: string[], rules: string[]): void {
    if (!this.closing) this.control.policy(names, rules).catch(() => {});
  }

  close(): Promise<void> {
    return (this.closing ??= (async () => {
      let timer: NodeJS.Timeout | undefined;
      try {
        if (!this.w.exited) {
          await Promise.race([
            this.control.close().catch(() => {}),
            new Promise<void>((resolve) => { timer = setTimeout(resolve, CLOSE_TIMEOUT_MS); }),
          ]);
        }
      } finally {
        clearTimeout(timer);
        this.w.onExit.delete(this.onExit);
        this.w.release();
        for (const p of this.ports) p.close();
      }
    })());
  }
}
