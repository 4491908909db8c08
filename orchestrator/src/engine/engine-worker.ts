// engine-worker.ts — the body of one engine worker thread.
//
// It instantiates engine-wasm on the shared memory it was given, opens its link, and runs the
// data-path loop whenever native-vmm reports the link or a host socket readable:
//   pump (fds -> rings) -> engineRun (rings -> TX ring + host ops) -> flush (ops, TX -> link)
// repeated until a round moves nothing (bounded, so timers and control calls still run).
// The control channel to the orchestrator is comlink over the worker's parentPort.
import { parentPort, workerData, type MessagePort } from "node:worker_threads";
import { performance } from "node:perf_hooks";
import * as Comlink from "comlink";
import nodeEndpoint from "comlink/dist/esm/node-adapter.mjs";
import { instantiateEngine } from "./engine-module.js";
import { writeEngineConfig, readCounters, type EngineConfig } from "./engine-config.js";
import { nativeLayout, layout } from "./layout.js";
import { loadNative } from "../native.js";
import { openLink, type LinkSpec } from "../links/link.js";

export interface EngineWorkerData {
  memory: WebAssembly.Memory;
  config: EngineConfig;
  link: LinkSpec;
  /** Told (an empty message) when the engine has recorded denials in the audit ring. */
  auditPort: MessagePort;
  /** Guest DNS queries go out on it (DnsQueryMessage) and answers come back (DnsAnswerMessage). */
  dnsPort: MessagePort;
}

/** A guest query: the DQ_* header of its DNS ring slot (64 bytes) and its payload. */
export interface DnsQueryMessage { header: Uint8Array; query: Uint8Array }
/** The interceptor's answer to a query: its header back, the payload, and the pins to set first. */
export interface DnsAnswerMessage { header: Uint8Array; answer: Uint8Array | null; pins: { addr: Uint8Array; nameId: number; ttlMs: number }[] }

/** What the orchestrator can ask of a running engine (through comlink). */
export interface EngineControl {
  /** Resolves once the link is attached and frames are being served. */
  ready(): Promise<void>;
  liveSockets(): number;
  /** The engine's counters by name (also readable straight from the shared memory). */
  counters(): Record<string, number>;
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
const datapath = new native.Datapath(mem, nativeLayout());

const auditTail = new Int32Array(data.memory.buffer, layout.AUDIT_CTRL + layout.RING_CTRL_TAIL, 1);
let auditSeen = Atomics.load(auditTail, 0);

function serve(): void {
  const now = performance.now();
  for (let round = 0; round < MAX_ROUNDS_PER_WAKEUP; round++) {
    const got = datapath.pump();
    const done = engine.engineRun(now);
    const wrote = datapath.flush();
    if (got === 0 && done === 0 && wrote === 0) break;
  }
  const t = Atomics.load(auditTail, 0);
  if (t !== auditSeen) {
    auditSeen = t;
    data.auditPort.postMessage(0);
  }
  drainDnsQueries();
}

// ---- DNS: queries to the orchestrator's interceptor, answers back into the engine -----------------
const dnsCtrl = new Int32Array(data.memory.buffer, layout.DNS_CTRL, layout.RING_CTRL_BYTES / 4);
const dv = new DataView(data.memory.buffer);

// Queries handed to the orchestrator and not yet answered. Past DNS_SLOTS the ring is left to
// fill, and the engine drops further queries (DROP_DNS_OVERLOAD): what a guest can keep in
// flight stays bounded end to end, however slow the upstreams.
let dnsOutstanding = 0;

function drainDnsQueries(): void {
  let head = Atomics.load(dnsCtrl, layout.RING_CTRL_HEAD / 4) >>> 0;
  const tail = Atomics.load(dnsCtrl, layout.RING_CTRL_TAIL / 4) >>> 0;
  if (head === tail) return;
  while (head !== tail && dnsOutstanding < layout.DNS_SLOTS) {
    dnsOutstanding++;
    const q = layout.DNS_BASE + (head & (layout.DNS_SLOTS - 1)) * layout.DNS_SLOT_BYTES;
    const len = dv.getUint32(q + layout.DQ_LEN, true);
    const msg: DnsQueryMessage = { header: mem.slice(q, q + layout.DQ_PAYLOAD), query: mem.slice(q + layout.DQ_PAYLOAD, q + layout.DQ_PAYLOAD + len) };
    data.dnsPort.postMessage(msg);
    head = (head + 1) >>> 0;
  }
  Atomics.store(dnsCtrl, layout.RING_CTRL_HEAD / 4, head | 0);
}

data.dnsPort.on("message", (m: DnsAnswerMessage) => {
  if (stopped) return;
  if (m.header.length) dnsOutstanding--; // an answer (or a refusal to answer) to a query we posted
  const now = performance.now();
  // Pins first: the guest may connect the moment it reads the answer.
  for (const p of m.pins) {
    mem.set(p.addr, layout.PIN_SCRATCH);
    engine.dnsPin(p.nameId, p.ttlMs, now);
  }
  if (m.answer) {
    mem.set(m.header, layout.DNS_ANSWER_BASE);
    dv.setUint32(layout.DNS_ANSWER_BASE + layout.DQ_LEN, m.answer.length, true);
    mem.set(m.answer, layout.DNS_ANSWER_BASE + layout.DQ_PAYLOAD);
    if (!engine.dnsAnswer()) {
      datapath.flush(); // the TX ring was full: drain it to the link and try once more
      engine.dnsAnswer();
    }
  }
  datapath.flush();
  drainDnsQueries(); // room again: queries may be waiting in the ring
});

let stopped = false;
const readyPromise = (async () => {
  const link = await openLink(data.link, native);
  link.attach(datapath);
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
  stop() {
    if (stopped) return;
    stopped = true;
    clearInterval(ticker);
    datapath.close();
    data.auditPort.close();
    data.dnsPort.close();
    setImmediate(() => parentPort?.close());
  },
};

Comlink.expose(control, nodeEndpoint(parentPort!));
