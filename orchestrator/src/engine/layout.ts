// The engine's shared-memory layout, counter indexes and wire numbers, read from the same source
// files the AssemblyScript engine is compiled from (engine-wasm/assembly/layout.ts, counters.ts,
// wire/numbers.ts); native-vmm compiles a header generated from them (native-vmm/gen-layout.mjs
// -> src/layout.gen.h).
import * as layout from "../../../engine-wasm/assembly/layout.js";
import * as counterIndex from "../../../engine-wasm/assembly/counters.js";
import * as wire from "../../../engine-wasm/assembly/wire/numbers.js";

export { layout, counterIndex, wire };


/** Counter names in index order (COUNTER_COUNT excluded). */
export const counterNames: ReadonlyArray<readonly [string, number]> = Object.entries(counterIndex)
  .filter(([name]) => name !== "COUNTER_COUNT")
  .sort((a, b) => a[1] - b[1]);
