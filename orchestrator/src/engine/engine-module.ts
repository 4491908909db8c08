// engine-module.ts — compiling engine-wasm once and instantiating it on an engine's memory.
//
// The module imports its memory (shared, fixed-size: initial == maximum) and nothing else of
// consequence. It has no data segments and keeps no state in globals, so any number of
// instances — one per thread that needs to call in — can share one memory (DESIGN §2).
import { readFileSync } from "node:fs";
import { layout } from "./layout.js";
import { MoatError } from "../errors.js";

/** The engine's exports (engine-wasm/assembly/engine.ts). Pointers are byte offsets. */
export interface EngineExports {
  engineInit(): void;
  engineRun(nowMs: number): number;
  engineTick(nowMs: number, budget: number): number;
  engineReleaseRx(): void;
  engineDiscardOps(): void;
  processFrame(frame: number, len: number): void;
  internetChecksum(p: number, len: number): number;
  benchChecksum(p: number, len: number, iterations: number): number;
  benchCopy(dst: number, src: number, len: number, iterations: number): void;
  policyEvaluate(proto: number, addr: number, port: number, direction: number): number;
  policyClassify(addr: number): number;
  /** Inject the DNS answer left at DNS_ANSWER_BASE; 0 when the TX ring is full. */
  dnsAnswer(): number;
  /** Pin the address at PIN_SCRATCH under a rule name id. */
  dnsPin(nameId: number, ttlMs: number, nowMs: number): void;
  /** Tests: a TCP flow's state (flow/tcp.ts, tcpInspect). */
  tcpInspect(idx: number, what: number): number;
  /** Send the delayed ACKs due by nowMs (flow/tcp.ts); the next deadline is at layout.ST_ACK_DUE. */
  engineFlushAcks(nowMs: number): number;
  /** Rate limit `which` (0 egress, 1 ingress, 2 conn, 3 dns) to `ratePerMs` tokens per ms in a bucket of `burst` (rate 0: none); returns what moved. */
  engineSetLimit(which: number, ratePerMs: number, burst: number, nowMs: number): number;
  /** What a rate limit held back and may go on by nowMs does (limits.ts); the next deadline is at layout.ST_LIMIT_DUE. */
  engineLimitWake(nowMs: number): number;
  /** The DNS rate: 1 = answer the guest's next query, 0 = refuse it (counted as DNS_RATE_REFUSED). */
  engineDnsAdmit(nowMs: number): number;
}

/** Pages of the engine memory; the module was compiled for exactly this (asconfig.json). */
export const ENGINE_MEMORY_PAGES = 1024;

const wasmPath = new URL("../../../../build/engine.wasm", import.meta.url).pathname;
let compiled: WebAssembly.Module | undefined;

export function engineModule(): WebAssembly.Module {
  if (compiled) return compiled;
  let bytes: Buffer;
  try {
    bytes = readFileSync(wasmPath);
  } catch (cause) {
    throw new MoatError("ERR_ENGINE", `engine module not found at ${wasmPath}`,
      "run `npm install` (or `npm run build:wasm`) in the moat checkout", { cause });
  }
  compiled = new WebAssembly.Module(bytes);
  return compiled;
}

export function createEngineMemory(): WebAssembly.Memory {
  if (layout.MEMORY_PAGES > ENGINE_MEMORY_PAGES) {
    throw new MoatError("ERR_ENGINE", `layout needs ${layout.MEMORY_PAGES} pages, the module is built for ${ENGINE_MEMORY_PAGES}`);
  }
  return new WebAssembly.Memory({ initial: ENGINE_MEMORY_PAGES, maximum: ENGINE_MEMORY_PAGES, shared: true });
}

export function instantiateEngine(memory: WebAssembly.Memory, module: WebAssembly.Module = engineModule()): EngineExports {
  const instance = new WebAssembly.Instance(module, {
    env: {
      memory,
      abort(_msg: number, _file: number, line: number, col: number) {
        throw new MoatError("ERR_ENGINE", `engine aborted at ${line}:${col}`);
      },
    },
  });
  return instance.exports as unknown as EngineExports;
}
