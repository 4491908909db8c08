#!/usr/bin/env node
// The test entry point (`npm test`): runs the compiled suites under dist/test with node's test
// runner, one file at a time (system tests create namespaces and must not overlap).
//   node test/run.js                 every suite: unit, engine, system
//   node test/run.js unit engine     just those
import { readdirSync, existsSync } from "node:fs";
import { join } from "node:path";
import { spawnSync } from "node:child_process";

const root = new URL("../dist/test/", import.meta.url).pathname;
const suites = process.argv.slice(2).length ? process.argv.slice(2) : ["unit", "engine", "system"];
const files = [];
for (const s of suites) {
  const dir = join(root, s);
  if (!existsSync(dir)) {
    console.error(`test/run.js: no compiled suite at ${dir} (run npm run build)`);
    process.exit(2);
  }
  for (const f of readdirSync(dir).sort()) if (f.endsWith(".test.js")) files.push(join(dir, f));
}
// One engine thread per process: every process that makes several sandboxes (the library's, the
// daemon's) runs them on a shared worker, as a fleet would.
const env = { ...process.env, MOAT_ENGINE_THREADS: process.env.MOAT_ENGINE_THREADS ?? "1" };
const r = spawnSync(process.execPath, ["--test", "--test-concurrency=1", "--test-reporter=spec", ...files], { stdio: "inherit", env });
process.exit(r.status ?? 1);
