// bench-args.test.ts — every benchmark answers --help with its own header comment before it sets
// anything up, and refuses an option it does not take (a typo would otherwise run it for minutes
// with its defaults).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";

const BENCHES = ["engine.bench", "policy.bench", "peers", "dns", "tls", "vm", "fleet", "metrics"];
const dir = new URL("../../bench/", import.meta.url).pathname;

test("every bench: --help prints its usage and exits 0; an unknown option or a missing value exits 2 and says which", () => {
  for (const b of BENCHES) {
    const help = spawnSync(process.execPath, [`${dir}${b}.js`, "--help"], { encoding: "utf8", timeout: 20000 });
    assert.equal(help.status, 0, `${b} --help: ${help.stderr}`);
    assert.match(help.stdout, new RegExp(`^${b.replace(".", "\\.")}\\.ts — `), `${b} --help prints its header`);
    assert.match(help.stdout, new RegExp(`node dist/bench/${b.replace(".", "\\.")}\\.js`), `${b} --help shows how to run it`);
    const bad = spawnSync(process.execPath, [`${dir}${b}.js`, "--no-such-option", "1"], { encoding: "utf8", timeout: 20000 });
    assert.equal(bad.status, 2, `${b} --no-such-option: ${bad.stdout}${bad.stderr}`);
    assert.match(bad.stderr, /unknown option "--no-such-option".*see --help/, b);
  }
  const noValue = spawnSync(process.execPath, [`${dir}tls.js`, "--requests"], { encoding: "utf8", timeout: 20000 });
  assert.equal(noValue.status, 2);
  assert.match(noValue.stderr, /--requests needs a value/);
});
