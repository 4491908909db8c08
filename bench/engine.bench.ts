// engine.bench.ts — microbenchmarks of the engine's per-packet work, each printed next to a
// memcpy reference measured in the same run on the same memory (so the ratio survives a noisy
// or different machine, and a regression shows as a falling ratio).
//
//   node dist/bench/engine.bench.js [--time MS]
//
// - classify: 64-byte UDP frames through engineRun: Ethernet/IPv4/UDP parse, header and UDP
//   checksum verification, flow lookup in the 16k-flow table, host-op queueing. Reported in
//   Mframes/s, with memory.copy of the same 64-byte frames as the reference.
// - checksum: the SIMD Internet checksum at 64 B, 1500 B and 64 KiB, in GB/s, against
//   memory.copy of the same length.
import { Bench } from "tinybench";
import { createEngineMemory, instantiateEngine } from "../orchestrator/src/engine/engine-module.js";
import { writeEngineConfig } from "../orchestrator/src/engine/engine-config.js";
import { layout as L, counterIndex } from "../orchestrator/src/engine/layout.js";
import { testConfig } from "../test/helpers/engine-harness.js";
import * as F from "../test/helpers/frames.js";
import { benchArgs, option } from "./harness.js";

benchArgs(["time"]);

const timeMs = Number(option("time", "700")) || 700;
const memory = createEngineMemory();
const mem = new Uint8Array(memory.buffer);
const dv = new DataView(memory.buffer);
const engine = instantiateEngine(memory);
writeEngineConfig(mem, testConfig);
engine.engineInit();

const BATCH = L.RX_SLOTS;
// 14 + 20 + 8 + 22 = 64 bytes
const frame = F.eth(testConfig.gatewayMac, testConfig.guestMac, 0x0800,
  F.ipv4(testConfig.guestIp4, "203.0.113.10", 17, F.udp(testConfig.guestIp4, "203.0.113.10", 40000, 7, new Array(22).fill(0x61))));
if (frame.length !== 64) throw new Error(`frame is ${frame.length} bytes`);
for (let i = 0; i < BATCH; i++) {
  mem.set(frame, L.RX_BUF_BASE + i * L.SLOT_BYTES);
  dv.setUint32(L.RX_DESC_BASE + i * L.DESC_BYTES + L.DESC_LEN, frame.length, true);
}
function runBatch(): void {
  const tail = dv.getUint32(L.RX_CTRL + L.RING_CTRL_TAIL, true);
  dv.setUint32(L.RX_CTRL + L.RING_CTRL_TAIL, (tail + BATCH) >>> 0, true);
  engine.engineRun(1);
  engine.engineDiscardOps();
  engine.engineReleaseRx();
}
runBatch(); // creates the flow; every later frame is a lookup hit
const frameCopyDst = L.BENCH_BASE;
function copyBatch(): void {
  engine.benchCopy(frameCopyDst, L.RX_BUF_BASE, 64, BATCH);
}

const sizes = [64, 1500, 65536];
const src = L.BENCH_BASE;
const dst = L.BENCH_BASE + 131072 + 64;
for (let i = 0; i < 131072; i++) mem[src + i] = (i * 7919) & 255;
const iters = (len: number) => Math.max(1, Math.floor(262144 / len));

const bench = new Bench({ time: timeMs, warmupTime: 200 });
bench.add("classify 64B x256", runBatch);
bench.add("memcpy 64B x256", copyBatch);
for (const n of sizes) {
  bench.add(`checksum ${n}B`, () => { engine.benchChecksum(src, n, iters(n)); });
  bench.add(`memcpy ${n}B`, () => { engine.benchCopy(dst, src, n, iters(n)); });
}
await bench.run();

const hz = (name: string) => bench.tasks.find((t) => t.name === name)!.result!.throughput.mean;
const rows: string[][] = [["benchmark", "figure", "memcpy reference", "ratio to memcpy"]];
const fps = hz("classify 64B x256") * BATCH;
const cps = hz("memcpy 64B x256") * BATCH;
rows.push(["parse+checksum+flow lookup, 64 B frames", `${(fps / 1e6).toFixed(2)} Mframes/s`, `${(cps / 1e6).toFixed(2)} Mframes/s`, (fps / cps).toFixed(3)]);
for (const n of sizes) {
  const gbs = (hz(`checksum ${n}B`) * iters(n) * n) / 1e9;
  const cgbs = (hz(`memcpy ${n}B`) * iters(n) * n) / 1e9;
  rows.push([`internet checksum, ${n} B`, `${gbs.toFixed(2)} GB/s`, `${cgbs.toFixed(2)} GB/s`, (gbs / cgbs).toFixed(3)]);
}
const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
for (const r of rows) console.log(r.map((cell, c) => cell.padEnd(widths[c]!)).join("  "));
const drops = Number(dv.getBigUint64(L.COUNTERS_BASE + 8 * counterIndex.DROP_HOST_OPS_FULL, true));
if (drops) console.log(`(host-op drops during the run: ${drops})`);
