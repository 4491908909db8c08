#!/usr/bin/env node
// install.mjs — the package's `install` script: make sure the native addon (moat_native.node),
// moat-helper and moat-sandbox work on this machine.
//
// The package ships both prebuilt for linux-x64 (built by `npm pack` from a checkout, Node-API 9:
// one build serves every Node version moat supports) and their sources. If the prebuilt ones load
// and run here, nothing is built: no compiler needed, installs are fast and offline. Otherwise (an
// other architecture, an older C library, MOAT_BUILD_FROM_SOURCE=1) they are built with node-gyp,
// which needs g++, make and python3: a missing one is named, with how to install it.
//
// In a checkout (engine-wasm/assembly is there) this does nothing: `npm run build` (prepare) builds.
import { execFileSync } from "node:child_process";
import { accessSync, constants, existsSync } from "node:fs";
import { createRequire } from "node:module";
import { delimiter, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const release = join(root, "native-vmm", "build", "Release");
const addon = join(release, "moat_native.node");
const helper = join(release, "moat-helper");
const sandboxHelper = join(release, "moat-sandbox");

if (existsSync(join(root, "engine-wasm", "assembly"))) process.exit(0);

function works() {
  try {
    createRequire(import.meta.url)(addon);
    execFileSync(helper, ["--version"], { stdio: "ignore" });
    accessSync(sandboxHelper, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function inPath(tool) {
  return (process.env.PATH ?? "").split(delimiter).some((d) => {
    try { accessSync(join(d, tool), constants.X_OK); return true; } catch { return false; }
  });
}

if (process.env.MOAT_BUILD_FROM_SOURCE !== "1" && works()) process.exit(0);
if (process.platform !== "linux") {
  console.error(`moat: moat runs on Linux only (this is ${process.platform})`);
  process.exit(1);
}
const missing = ["g++", "make", "python3"].filter((t) => !inPath(t));
if (missing.length) {
  console.error(`moat: the native addon must be built for this machine (${process.arch}), and ${missing.join(", ")} ${missing.length > 1 ? "are" : "is"} missing`);
  console.error("moat: hint: install them (Debian/Ubuntu: `apt-get install g++ make python3`; Fedora: `dnf install gcc-c++ make python3`), then `npm rebuild moat`");
  process.exit(1);
}
console.error(`moat: building the native addon for ${process.platform}-${process.arch} with node-gyp`);
// npm gives lifecycle scripts its own node-gyp (npm_config_node_gyp); else one on PATH.
const gyp = process.env.npm_config_node_gyp;
const [cmd, args] = gyp ? [process.execPath, [gyp]] : ["node-gyp", []];
try {
  execFileSync(cmd, [...args, "rebuild", "--directory", join(root, "native-vmm")], { stdio: "inherit" });
} catch {
  console.error("moat: building the native addon failed (see above)");
  console.error("moat: hint: node-gyp needs Node's headers: they come with Node's own installation, or are downloaded");
  process.exit(1);
}
if (!works()) {
  console.error("moat: the native addon was built but does not load");
  process.exit(1);
}
