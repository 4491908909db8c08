// layers.test.ts — the orchestrator's floors (docs/ARCHITECTURE.md, "The layers"): every import
// of orchestrator/src points down a floor or stays on its own, but for the few named here, and no
// module imports itself back through others.
//
//   node dist/test/unit/layers.test.js --list    prints every import that points up, and the cycles
//
// Imports are read from the sources (static, `export ... from`, type-only and dynamic `import()`
// alike: each is a dependency of the design, whatever the compiler keeps of it).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";

const SRC = resolve(new URL("../../../orchestrator/src/", import.meta.url).pathname);

/** The floors, bottom up: a file's floor is that of its directory (or, at the top, its own). */
const FLOORS: readonly (readonly string[])[] = [
  ["errors.ts", "model/"], // ground: pure vocabulary, no imports from the rest
  ["dns/"], // the DNS interceptor and resolver, which engine workers host
  ["native.ts", "links/", "engine/"], // the engine pool, its workers, links, the memory's tables
  ["policy/", "tls/", "secrets/"], // the services a gateway runs
  ["gateway/"], // one guest's network
  ["sandbox/", "vm/"], // the guests: namespace sandboxes, VMs, a VMM someone else runs
  ["cli/", "control/", "builder.ts", "index.ts"], // the command, the control socket, the library's front
];

/**
 * The imports allowed to point up, and why. The DNS-over-TCP server (main thread) is one of the
 * engine's redirect receivers (engine/redirect.ts: the preamble the engine writes, and the
 * listener every receiver shares), while the engine's worker hosts the DNS interceptor below it.
 */
const ALLOWED_UP = new Set(["dns/tcp-proxy.ts -> engine/redirect.ts"]);
const MAX_UP = 2;

function floorOf(file: string): number {
  const i = FLOORS.findIndex((f) => f.some((p) => (p.endsWith("/") ? file.startsWith(p) : file === p)));
  if (i < 0) throw new Error(`${file} is on no floor: add it (or its directory) to FLOORS`);
  return i;
}

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    if (statSync(p).isDirectory()) return sources(p);
    return f.endsWith(".ts") && !f.endsWith(".d.ts") ? [p] : [];
  });
}

/** Every relative import of every source file: [from, to], paths relative to orchestrator/src. */
export function imports(): [string, string][] {
  const out: [string, string][] = [];
  const spec = /(?:\bfrom\s*|\bimport\s*\(?\s*)"(\.\.?\/[^"]+)"/g;
  for (const file of sources(SRC)) {
    const from = relative(SRC, file);
    for (const m of readFileSync(file, "utf8").matchAll(spec)) {
      const target = relative(SRC, resolve(dirname(file), m[1]!.replace(/\.js$/, ".ts")));
      if (target.startsWith("..")) continue; // engine-wasm's constants: below every floor
      out.push([from, target]);
    }
  }
  return out;
}

/** Imports to a higher floor than their own. */
export function upward(edges: [string, string][]): string[] {
  return edges.filter(([a, b]) => floorOf(b) > floorOf(a)).map(([a, b]) => `${a} -> ${b}`);
}

/** The import cycles: each strongly connected set of modules (Tarjan), largest first. */
export function cycles(edges: [string, string][]): string[][] {
  const next = new Map<string, string[]>();
  for (const [a, b] of edges) next.set(a, [...(next.get(a) ?? []), b]);
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const on = new Set<string>();
  const out: string[][] = [];
  const visit = (v: string): void => {
    index.set(v, index.size);
    low.set(v, index.get(v)!);
    stack.push(v);
    on.add(v);
    for (const w of next.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (on.has(w)) {
        low.set(v, Math.min(low.get(v)!, index.get(w)!));
      }
    }
    if (low.get(v) === index.get(v)) {
      const scc: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        on.delete(w);
        scc.push(w);
      } while (w !== v);
      if (scc.length > 1 || next.get(v)?.includes(v)) out.push(scc.sort());
    }
  };
  for (const v of next.keys()) if (!index.has(v)) visit(v);
  return out.sort((a, b) => b.length - a.length);
}

if (process.argv.includes("--list")) {
  const edges = imports();
  const up = upward(edges);
  console.log(`${edges.length} imports, ${up.length} pointing up:`);
  for (const e of up) console.log(`  ${e}`);
  for (const c of cycles(edges)) console.log(`cycle: ${c.join(" <-> ")}`);
}

test(`at most ${MAX_UP} imports point up a floor, each one named`, () => {
  const up = upward(imports());
  assert.deepEqual(up.filter((e) => !ALLOWED_UP.has(e)), [], "imports that point up a floor");
  assert.ok(up.length <= MAX_UP);
});

test("no import cycle", () => {
  assert.deepEqual(cycles(imports()), []);
});
