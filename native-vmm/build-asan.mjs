#!/usr/bin/env node
// build-asan.mjs — native-vmm built with AddressSanitizer and UndefinedBehaviorSanitizer, in its
// own directory (native-vmm/build-asan; the release build in native-vmm/build is not touched),
// and tests run against it.
//
//   node native-vmm/build-asan.mjs                 build native-vmm/build-asan/build/Release/moat_native.node
//   node native-vmm/build-asan.mjs test FILE...    build, then `node --test` FILE... with it loaded
//
// The addon's gyp file is derived from native-vmm/binding.gyp (same sources, so a new link file is
// sanitized too) with -fsanitize=address,undefined. An ASan addon cannot be loaded into a Node
// that is not built with ASan unless the ASan runtime comes first: the tests run with LD_PRELOAD of
// the compiler's libasan (and libubsan), MOAT_NATIVE_ADDON pointing at the sanitized addon
// (orchestrator/src/native.ts), leak detection off (Node's own allocations at exit are not
// ours), and any error fatal: a sanitizer report fails the test that caused it.
import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = dirname(here);
const dir = join(here, "build-asan");
export const ASAN_ADDON = join(dir, "build", "Release", "moat_native.node");

function build() {
  const gyp = JSON.parse(readFileSync(join(here, "binding.gyp"), "utf8"));
  const addon = gyp.targets.find((t) => t.target_name === "moat_native");
  const san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"];
  const target = {
    ...addon,
    sources: addon.sources.map((s) => `../${s}`),
    cflags_cc: [...addon.cflags_cc.filter((f) => !/^-O/.test(f)), "-O1", ...san],
    ldflags: [...(addon.ldflags ?? []), "-fsanitize=address,undefined"],
  };
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "binding.gyp"), JSON.stringify({ targets: [target] }, null, 2) + "\n");
  execFileSync(process.execPath, [join(here, "gen-layout.mjs")], { stdio: "inherit" });
  execFileSync("npx", ["node-gyp", "rebuild", "--directory", dir, "--silent"], { stdio: "inherit", cwd: root });
}

function runtime(name) {
  const p = execFileSync(process.env.CXX ?? "g++", [`-print-file-name=${name}`], { encoding: "utf8" }).trim();
  if (!p.startsWith("/")) throw new Error(`the compiler has no ${name} (install the gcc sanitizer runtimes: libasan, libubsan)`);
  return p;
}

build();
const [cmd, ...files] = process.argv.slice(2);
if (cmd === "test") {
  const env = {
    ...process.env,
    MOAT_NATIVE_ADDON: ASAN_ADDON,
    LD_PRELOAD: [runtime("libasan.so"), runtime("libubsan.so"), process.env.LD_PRELOAD].filter(Boolean).join(" "),
    ASAN_OPTIONS: "detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_odr_violation=0",
    UBSAN_OPTIONS: "halt_on_error=1:print_stacktrace=1",
  };
  const r = spawnSync(process.execPath, ["--test", "--test-concurrency=1", ...files], { stdio: "inherit", env, cwd: root });
  process.exit(r.status ?? 1);
}
