// package.test.ts — the npm package works (issue 20, item 4): `npm pack` from this checkout, then
// `npm install ./moat-*.tgz` into an empty project: `npx moat run` and `import { Sandbox } from
// "moat"` run sandboxes; the tarball holds what `files` names and nothing of the checkout's
// sources or tests. The dependencies come from the npm cache or registry (--prefer-offline).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { World, systemTestSkipReason, hasTool } from "../testbed/world.js";

const repo = new URL("../../../", import.meta.url).pathname;
const skip = systemTestSkipReason() ?? (hasTool("npm", "--version") ? undefined : "npm is not installed");
let world: World;
let dir: string;
let project: string;

before(() => {
  if (skip) return;
  world = World.create();
  dir = mkdtempSync("/tmp/moat-package-");
  project = join(dir, "project");
});
after(() => {
  world?.teardown();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** `sh -c SCRIPT` in the project directory, inside the test world's host namespace. */
function inProject(script: string, timeoutMs = 120000): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync("ip", ["netns", "exec", world.host, "sh", "-c", `cd ${project} && ${script}`], { encoding: "utf8", timeout: timeoutMs });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test("npm pack: the tarball holds the compiled library, engine.wasm, the native addon and helper (prebuilt, and their sources), nothing else", { skip, timeout: 300000 }, () => {
  // --ignore-scripts: what this checkout has built already (a release's `npm pack` builds first: prepare).
  const out = execFileSync("npm", ["pack", "--ignore-scripts", "--json", "--pack-destination", dir], { cwd: repo, encoding: "utf8" });
  const files = (JSON.parse(out) as { files: { path: string }[] }[])[0]!.files.map((f) => f.path);
  for (const f of ["package.json", "README.md", "bin/moat.js", "build/engine.wasm", "dist/orchestrator/src/index.js", "dist/orchestrator/src/index.d.ts",
    "dist/orchestrator/src/cli/main.js", "dist/engine-wasm/assembly/layout.js", "native-vmm/build/Release/moat_native.node",
    "native-vmm/build/Release/moat-helper", "native-vmm/binding.gyp", "native-vmm/install.mjs", "native-vmm/src/helper.c",
    "native-vmm/src/layout.gen.h", "native-vmm/guest/agent.c", "native-vmm/guest/udhcpc.sh"]) {
    assert.ok(files.includes(f), `${f} is in the tarball`);
  }
  const stray = files.filter((f) => /^(test|bench|orchestrator|engine-wasm|dist\/test|dist\/bench)\//.test(f) || f.endsWith(".map") || f.includes("obj.target"));
  assert.deepEqual(stray, [], "no sources, tests or build intermediates");
});

test("npm install ./moat-*.tgz into an empty project: npx moat run and import { Sandbox } from \"moat\" work", { skip, timeout: 600000 }, () => {
  const tgz = readdirSync(dir).find((f) => /^moat-.*\.tgz$/.test(f));
  assert.ok(tgz, "the tarball of the test before");
  execFileSync("mkdir", ["-p", project]);
  writeFileSync(join(project, "package.json"), JSON.stringify({ name: "moat-package-test", private: true, type: "module" }));
  const install = spawnSync("npm", ["install", join(dir, tgz!), "--prefer-offline", "--no-audit", "--no-fund"], { cwd: project, encoding: "utf8", timeout: 540000 });
  assert.equal(install.status, 0, install.stdout + install.stderr);

  const cli = inProject("npx --no-install moat run -- sh -c 'echo hello from the sandbox; exit 4'");
  assert.equal(cli.status, 4, cli.stderr);
  assert.equal(cli.stdout, "hello from the sandbox\n");
  assert.equal(inProject("npx --no-install moat run -- true").status, 0);

  const lib = inProject(`node --input-type=module -e '
    import { Sandbox } from "moat";
    const s = await Sandbox.builder("package-test").create();
    const status = await s.run(["sh", "-c", "ip -o -4 addr show dev eth0 | grep -c inet"]);
    await s.destroy();
    process.stdout.write("status " + status + "\\n");'`);
  assert.equal(lib.status, 0, lib.stderr);
  assert.equal(lib.stdout, "1\nstatus 0\n");
});

test("an addon that cannot load: moat exits 125 saying so, with a hint that is one", { skip, timeout: 120000 }, () => {
  rmSync(join(project, "node_modules", "moat", "native-vmm", "build", "Release", "moat_native.node"));
  const r = inProject("npx --no-install moat run -- true");
  assert.equal(r.status, 125, r.stderr);
  assert.match(r.stderr, /cannot load the native addon/);
  assert.match(r.stderr, /hint: build it: `npm rebuild moat`/);
  assert.doesNotMatch(r.stderr, /undefined/);
});
