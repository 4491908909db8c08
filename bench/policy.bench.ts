// policy.bench.ts — new-flow policy evaluations per second (engine-wasm/assembly/policy/match.ts)
// with 1, 32 and 1024 rules, printed next to two references measured in the same run: an empty
// JS loop of the same iteration count, and a no-op WebAssembly function with the same signature
// (the JS -> WASM call overhead alone).
//
//   node dist/bench/policy.bench.js [--time MS]
//
// The N-rule policy is N-1 CIDR rules that never match (deny 10.(i>>8).(i&255).0/24) followed
// by allow group:public, and the evaluated address is public (8.8.8.8, TCP 443, outbound), so
// every rule is scanned and the last one decides. Each task iteration calls policyEvaluate
// CALLS times from a JS loop: the figures include one JS -> WASM call per evaluation, which is
// what the no-op row measures. In the engine itself evaluation is a direct WASM call once per new
// flow (admit.ts), without that overhead.
import { Bench } from "tinybench";
import ipaddr from "ipaddr.js";
import { createEngineMemory, instantiateEngine } from "../orchestrator/src/engine/engine-module.js";
import { writeEngineConfig } from "../orchestrator/src/engine/engine-config.js";
import { layout as L, wire } from "../orchestrator/src/engine/layout.js";
import { installPolicy, NameTable } from "../orchestrator/src/engine/policy-table.js";
import { NetworkPolicy, Rule, Destination } from "../orchestrator/src/model/policy.js";
import { testConfig } from "../test/helpers/engine-harness.js";
import { benchArgs, option } from "./harness.js";

benchArgs(["time"]);

type Evaluate = (proto: number, addr: number, port: number, direction: number) => number;

const timeMs = Number(option("time", "700")) || 700;
const CALLS = 1000;
const RULE_COUNTS = [1, 32, L.POLICY_MAX_RULES];
const PORT = 443;
const ADDR = L.BENCH_BASE;

function policyOf(n: number): NetworkPolicy {
  const rules: Rule[] = [];
  for (let i = 0; i < n - 1; i++) rules.push(Rule.denyOutbound(Destination.cidr(`10.${i >> 8}.${i & 255}.0/24`)));
  rules.push(Rule.allowOutbound(Destination.group("public")));
  return new NetworkPolicy("deny", rules);
}

/** One engine per policy (each on its own memory), so no task swaps the policy in force. */
function engineWith(n: number): Evaluate {
  const memory = createEngineMemory();
  const mem = new Uint8Array(memory.buffer);
  const engine = instantiateEngine(memory);
  writeEngineConfig(mem, testConfig);
  installPolicy(mem, policyOf(n), "drop", new NameTable(), true);
  engine.engineInit();
  mem.set(ipaddr.IPv4.parse("8.8.8.8").toIPv4MappedAddress().toByteArray(), ADDR);
  const evaluate = (engine as unknown as { policyEvaluate: Evaluate }).policyEvaluate;
  // allow (bit 0 clear) by the last rule: ((n - 1) + 1) << 1
  const got = evaluate(wire.PROTO_TCP, ADDR, PORT, L.DIR_OUTBOUND);
  if (got !== n << 1) throw new Error(`${n} rules: policyEvaluate returned ${got}, expected ${n << 1} (allow by rule ${n - 1})`);
  return evaluate;
}

/** (i32, i32, i32, i32) -> i32 returning its first argument: the cost of a call and nothing else. */
function noopWasm(): Evaluate {
  const bytes = new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
    0x01, 0x09, 0x01, 0x60, 0x04, 0x7f, 0x7f, 0x7f, 0x7f, 0x01, 0x7f, // type: (i32 x4) -> i32
    0x03, 0x02, 0x01, 0x00, // function 0 has type 0
    0x07, 0x05, 0x01, 0x01, 0x66, 0x00, 0x00, // export "f" = function 0
    0x0a, 0x06, 0x01, 0x04, 0x00, 0x20, 0x00, 0x0b, // body: local.get 0
  ]);
  const instance = new WebAssembly.Instance(new WebAssembly.Module(bytes));
  return instance.exports.f as Evaluate;
}

// Results are folded into a sink that is checked at the end, so no loop is dead code.
let sink = 0;
function loopOf(evaluate: Evaluate): () => void {
  return () => {
    let acc = 0;
    for (let i = 0; i < CALLS; i++) acc = (acc + evaluate(wire.PROTO_TCP, ADDR, PORT, L.DIR_OUTBOUND)) | 0;
    sink = (sink + acc) | 0;
  };
}
function emptyLoop(): void {
  let acc = 0;
  for (let i = 0; i < CALLS; i++) acc = (acc + i) | 0;
  sink = (sink + acc) | 0;
}

const evaluators = new Map(RULE_COUNTS.map((n) => [n, engineWith(n)] as const));
const noop = noopWasm();

const name = (n: number) => `policyEvaluate ${n} rule${n === 1 ? "" : "s"} x${CALLS}`;
const bench = new Bench({ time: timeMs, warmupTime: 200 });
bench.add(`empty JS loop x${CALLS}`, emptyLoop);
bench.add(`no-op wasm call x${CALLS}`, loopOf(noop));
for (const n of RULE_COUNTS) bench.add(name(n), loopOf(evaluators.get(n)!));
await bench.run();

const task = (t: string) => bench.tasks.find((x) => x.name === t)!.result!;
/** Per-call rate (calls/s) and its relative margin of error (%). */
const rate = (t: string) => ({ perSec: task(t).throughput.mean * CALLS, rme: task(t).throughput.rme });
const empty = rate(`empty JS loop x${CALLS}`);
const call = rate(`no-op wasm call x${CALLS}`);
const one = rate(name(1));
const ns = (perSec: number) => 1e9 / perSec;
const fmtRate = (perSec: number) => perSec >= 1e9 ? `${(perSec / 1e9).toFixed(2)} G/s` : `${(perSec / 1e6).toFixed(2)} M/s`;

const rows: string[][] = [["case", "flows/s", "±%", "ns/flow", "ns/flow minus call", "ratio to 1 rule", "time vs empty loop"]];
rows.push([`empty JS loop (baseline), ${CALLS} iterations`, fmtRate(empty.perSec), empty.rme.toFixed(1), ns(empty.perSec).toFixed(2), "-", "-", "1.0x"]);
rows.push([`no-op wasm call, ${CALLS} calls`, fmtRate(call.perSec), call.rme.toFixed(1), ns(call.perSec).toFixed(2), "0", (call.perSec / one.perSec).toFixed(3), `${(empty.perSec / call.perSec).toFixed(1)}x`]);
for (const n of RULE_COUNTS) {
  const r = rate(name(n));
  rows.push([
    `policyEvaluate, ${n} rule${n === 1 ? "" : "s"}`, fmtRate(r.perSec), r.rme.toFixed(1), ns(r.perSec).toFixed(2),
    (ns(r.perSec) - ns(call.perSec)).toFixed(2), (r.perSec / one.perSec).toFixed(3), `${(empty.perSec / r.perSec).toFixed(1)}x`,
  ]);
}
const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
for (const r of rows) console.log(r.map((cell, c) => cell.padEnd(widths[c]!)).join("  "));
const last = RULE_COUNTS[RULE_COUNTS.length - 1]!;
const perRule = (ns(rate(name(last)).perSec) - ns(one.perSec)) / (last - 1);
console.log(`scan cost: ${perRule.toFixed(2)} ns per non-matching CIDR rule (${last} vs 1 rule); flows/s includes one JS -> WASM call per evaluation`);
if (sink === 0x7fffffff) console.log(""); // keeps the loops' results observable
