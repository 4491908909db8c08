// rootless.ts — moat run by an ordinary user (DESIGN §9).
//
// A namespace sandbox needs a network namespace, a TAP device in it, and the right to configure
// both. An ordinary user gets them the way pasta and rootless podman do: in a user namespace of
// their own, where they are root over what they create and over nothing else. `moat run` started
// by a user (the *outer* moat) checks what the host allows, then runs moat again (the *inner*)
// under `moat-sandbox rootless` (native-vmm/sandbox/moat-sandbox.c): uid 0 there is the user,
// everything else is the host's — the network above all, so the gateway's sockets are the user's
// own, with the user's limits (no port below 1024, ICMP only where net.ipv4.ping_group_range
// lets the user's group). The inner moat runs as root would, but:
//   - the sandbox's user namespace is nested in moat's, its root the user again (--user cannot
//     name anyone else: a user can map no other uid);
//   - nothing is bound on the host: the sandbox's namespaces are reached through its holder
//     (/proc/PID/ns/net), and die with it, so there is nothing for `moat cleanup` to remove;
//   - address leases and the files each sandbox sees over /etc live in the user's runtime
//     directory ($XDG_RUNTIME_DIR/moat, else /tmp/moat-UID) instead of /run/moat and /etc/netns.
// The outer moat passes signals on and ends as the inner ended; the inner dies with it.
// A VM sandbox (`--vm`) needs none of this: QEMU and vhost-user run as the user as they are.
import { spawn } from "node:child_process";
import { accessSync, constants, lstatSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { HostRequirementError, MoatError } from "../errors.js";
import { helperPath } from "./containment.js";

/** The environment variable by which the outer moat tells the inner who the user is ("UID:GID"). */
const ROOTLESS_ENV = "MOAT_ROOTLESS";

/** The user this moat runs for, when it runs rootless (inside the user namespace the outer made). */
export function rootlessUser(): { uid: number; gid: number } | undefined {
  const m = /^(\d+):(\d+)$/.exec(process.env[ROOTLESS_ENV] ?? "");
  return m && process.getuid?.() === 0 ? { uid: Number(m[1]), gid: Number(m[2]) } : undefined;
}

/** Whether this process is root on the host (not an ordinary user, not root of a user namespace moat made). */
export function hostRoot(): boolean {
  return process.getuid?.() === 0 && !rootlessUser();
}

/**
 * Where moat keeps its address leases and each sandbox's /etc files: /run/moat as root; a
 * rootless moat's in the user's runtime directory ($XDG_RUNTIME_DIR/moat, else /tmp/moat-UID),
 * a directory of the user's own (made 0700; one that is a link or someone else's is refused).
 */
export function runtimeDir(): string {
  if (hostRoot()) return "/run/moat";
  const uid = rootlessUser()?.uid ?? process.getuid?.() ?? 0;
  const xdg = process.env.XDG_RUNTIME_DIR;
  const dir = xdg && xdg.startsWith("/") ? `${xdg}/moat` : `/tmp/moat-${uid}`;
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = lstatSync(dir);
  if (!st.isDirectory() || st.uid !== process.getuid?.() || (st.mode & 0o077) !== 0) {
    throw new MoatError("ERR_BAD_CONFIG", `${dir} is not a private directory of yours (a link, another user's, or open to others)`,
      "remove it, or set XDG_RUNTIME_DIR to a directory of your own (mode 0700)");
  }
  return dir;
}

/** What the kernel says about user namespaces and the TAP device (read from /proc and /dev). */
export interface RootlessHost {
  sysctl(name: string): string | undefined;
  /** Whether /dev/net/tun can be opened for reading and writing by this process, and its mode ("0600"). */
  tun(): { openable: boolean; mode: string };
}

/** This host, as /proc/sys and /dev say. */
export const REAL_HOST: RootlessHost = {
  sysctl(name) {
    try { return readFileSync(`/proc/sys/${name.replace(/\./g, "/")}`, "utf8").trim(); } catch { return undefined; }
  },
  tun() {
    let mode = "absent";
    try { mode = `0${(statSync("/dev/net/tun").mode & 0o777).toString(8)}`; } catch { /* absent */ }
    try { accessSync("/dev/net/tun", constants.R_OK | constants.W_OK); return { openable: true, mode }; } catch { return { openable: false, mode }; }
  },
};

/**
 * What keeps an ordinary user from running a namespace sandbox here, with what to change (as
 * root): unprivileged user namespaces forbidden (Debian's kernel.unprivileged_userns_clone,
 * user.max_user_namespaces, Ubuntu's AppArmor restriction) or /dev/net/tun not openable by the
 * user (mode 0600 on some hosts; Debian's default is 0666). Undefined when nothing does.
 */
export function rootlessProblem(host: RootlessHost = REAL_HOST): HostRequirementError | undefined {
  if (host.sysctl("kernel.unprivileged_userns_clone") === "0") {
    return new HostRequirementError("ERR_NO_USERNS", "this host forbids unprivileged user namespaces (kernel.unprivileged_userns_clone = 0), which moat needs without root",
      "as root: sysctl -w kernel.unprivileged_userns_clone=1 (persistently: a line in /etc/sysctl.d/), or run moat as root");
  }
  if (host.sysctl("user.max_user_namespaces") === "0") {
    return new HostRequirementError("ERR_NO_USERNS", "this host allows no user namespaces (user.max_user_namespaces = 0), which moat needs without root",
      "as root: sysctl -w user.max_user_namespaces=15000 (persistently: a line in /etc/sysctl.d/), or run moat as root");
  }
  if (host.sysctl("kernel.apparmor_restrict_unprivileged_userns") === "1") {
    return new HostRequirementError("ERR_NO_USERNS", "AppArmor restricts unprivileged user namespaces here (kernel.apparmor_restrict_unprivileged_userns = 1), which moat needs without root",
      `as root: an AppArmor profile allowing "userns," for ${helperPath()}, or sysctl -w kernel.apparmor_restrict_unprivileged_userns=0; or run moat as root`);
  }
  const tun = host.tun();
  if (tun.mode === "absent") {
    return new HostRequirementError("ERR_NO_TUN", "/dev/net/tun does not exist, and a sandbox's network is a TAP device",
      "as root: modprobe tun; in a container, pass the device (--device /dev/net/tun)");
  }
  if (!tun.openable) {
    return new HostRequirementError("ERR_NO_TUN", `/dev/net/tun cannot be opened by you (mode ${tun.mode} here), and a sandbox's network is a TAP device`,
      `as root: chmod 0666 /dev/net/tun (Debian's default; persistently, a udev rule: KERNEL=="tun", MODE="0666"), or run moat as root (or with --vm)`);
  }
  return undefined;
}

/**
 * Run this moat command again inside a user namespace of the user's own (moat-sandbox rootless),
 * with the same stdio; signals this process gets are passed on; resolves with the inner moat's
 * exit status (a death by signal is repeated on this process).
 */
export async function reexecRootless(argv: string[]): Promise<number> {
  const problem = rootlessProblem();
  if (problem) throw problem;
  const moat = fileURLToPath(new URL("../../../../bin/moat.js", import.meta.url));
  const uid = process.getuid!();
  const gid = process.getgid!();
  // A session of its own: a terminal's Ctrl-C reaches this process alone, which passes it on once.
  const inner = spawn(helperPath(), ["rootless", "--ppid", String(process.pid), "--", process.execPath, "--", moat, ...argv],
    { stdio: "inherit", detached: true, env: { ...process.env, [ROOTLESS_ENV]: `${uid}:${gid}` } });
  const sigs: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];
  const forward = (sig: NodeJS.Signals) => inner.kill(sig);
  for (const s of sigs) process.on(s, forward);
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
    inner.once("error", reject);
    inner.once("exit", (c, s) => resolve([c, s]));
  });
  for (const s of sigs) process.removeListener(s, forward);
  if (signal) {
    process.kill(process.pid, signal);
    return 128;
  }
  return code ?? 1;
}
