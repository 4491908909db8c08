// guard.ts — nothing a sandbox starts or creates outlives moat, however moat ends (destroy(), an
// exit, an uncaught exception, a signal, SIGKILL): the kernel's help through moat-helper
// (native-vmm/src/helper.c), not only exit hooks, which SIGKILL and default signal actions skip.
//
//   diesWithMoat(argv)   a command line that runs argv with PR_SET_PDEATHSIG(SIGKILL) toward this
//                        process (and, with pidns, in a PID namespace whose init dies with it, so
//                        whatever argv starts ends too). Commands in namespaces, QEMU and image
//                        build steps run so.
//   janitor              one helper process per moat process, holding a pipe from it: at end of
//                        file (this process ended) it removes what is still registered (a
//                        namespace, a directory, a lease). register() returns the unregistration
//                        moat calls once it removed the thing itself.
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { accessSync, constants, mkdirSync, writeSync } from "node:fs";
import { MoatError } from "../errors.js";

let cachedHelper: string | undefined;

/** The moat-helper executable (built with the native addon). */
export function helperPath(): string {
  if (cachedHelper) return cachedHelper;
  const path = new URL("../../../../native-vmm/build/Release/moat-helper", import.meta.url).pathname;
  try {
    accessSync(path, constants.X_OK);
  } catch {
    throw new MoatError("ERR_ENGINE", `moat's helper program is missing at ${path}`,
      "it is built with the native addon: `npm run build:native` in a checkout, or reinstall the moat package");
  }
  return (cachedHelper = path);
}

/** argv run so that it dies with this process (and, with pidns, everything it starts with it). */
export function diesWithMoat(argv: string[], options: { pidns?: boolean } = {}): string[] {
  return [helperPath(), "exec", String(process.pid), ...(options.pidns ? ["--pidns"] : []), "--", ...argv];
}

// ---- janitor ------------------------------------------------------------------------------------

let janitor: ChildProcess | undefined;
let janitorPid = 0; // the process that started it (a forked copy of this module must not reuse it)
let janitorBroken = false;
let nextId = 0;

function janitorProcess(): ChildProcess | undefined {
  if (janitorBroken) return undefined;
  if (janitor && janitorPid === process.pid) return janitor;
  try {
    const child = spawn(helperPath(), ["janitor"], { stdio: ["pipe", "ignore", "ignore"], detached: true });
    child.on("error", () => { janitorBroken = true; });
    child.stdin!.on("error", () => { janitorBroken = true; }); // it died: the next moat or `moat cleanup` does its work
    child.unref();
    (child.stdin as unknown as { unref?: () => void }).unref?.();
    janitor = child;
    janitorPid = process.pid;
    return child;
  } catch {
    janitorBroken = true;
    return undefined;
  }
}

type Registration =
  | { kind: "netns"; name: string; lease: string; token: string }
  | { kind: "tree"; path: string }
  | { kind: "owned"; path: string; token: string };

/**
 * Have the janitor remove `r` if this process ends without unregistering it. Returns the
 * unregistration (idempotent). Best effort: without a janitor (no helper), a no-op.
 */
export function register(r: Registration): () => void {
  const fields = r.kind === "netns" ? [r.name, r.lease, r.token] : r.kind === "tree" ? [r.path] : [r.path, r.token];
  if (fields.some((f) => /[\t\n]/.test(f))) return () => {};
  const j = janitorProcess();
  if (!j) return () => {};
  const id = String(++nextId);
  send(j, `+${id}\t${r.kind}\t${fields.join("\t")}\n`);
  let done = false;
  return () => {
    if (done) return;
    done = true;
    if (!janitorBroken && j.stdin!.writable) send(j, `-${id}\n`);
  };
}

/**
 * A new private directory `prefix` + random characters (as mkdtemp names it), registered with the
 * janitor and passed to `before` (a lease records it) before it exists: there is no moment at
 * which this process can die leaving it behind unregistered (a signal's default action between a
 * mkdtemp and the registration did, once). Returns its path and the unregistration.
 */
export function registeredTempDir(prefix: string, before: (path: string) => void = () => {}): { path: string; unregister: () => void } {
  for (let attempt = 0; ; attempt++) {
    const path = prefix + randomBytes(6).toString("base64url");
    before(path);
    try {
      return { path, unregister: registeredDir(path) };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST" || attempt >= 8) throw e;
    }
  }
}

/** Directory `path` (0700), registered with the janitor before it is made; returns the unregistration. */
export function registeredDir(path: string): () => void {
  const unregister = register({ kind: "tree", path });
  try {
    mkdirSync(path, { mode: 0o700 });
    return unregister;
  } catch (e) {
    unregister();
    throw e;
  }
}

/**
 * A line to the janitor, in the pipe before this returns: a stream write is queued for a later
 * turn of the loop, and a process that exits (a signal's default action, process.exit) in between
 * loses it — the janitor would never learn of the lease it must remove.
 */
const pause = new Int32Array(new SharedArrayBuffer(4));

function send(j: ChildProcess, line: string): void {
  const fd = (j.stdin as unknown as { _handle?: { fd?: number } })._handle?.fd;
  let rest = Buffer.from(line);
  if (fd !== undefined && fd >= 0) {
    // A full pipe (EAGAIN) empties as the janitor reads: wait for it a moment rather than queue
    // the line where an exit would lose it.
    for (let waited = 0; rest.length > 0 && waited < 1000;) {
      try {
        rest = rest.subarray(writeSync(fd, rest));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EAGAIN") break;
        Atomics.wait(pause, 0, 0, 1);
        waited++;
      }
    }
    if (rest.length === 0) return;
  }
  j.stdin!.write(rest);
}
