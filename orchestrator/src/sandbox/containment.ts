// containment.ts — what a namespace sandbox's commands are confined in (DESIGN §9).
//
// The namespaces and the mounts are made by native-vmm/sandbox/moat-sandbox.c (its header is the
// theory of operation): a holder process, PID 1 of the sandbox, keeps a user namespace whose root
// is one unprivileged host uid, and the network, mount, PID, IPC, UTS and cgroup namespaces it
// owns. Every command joins them through `moat-sandbox exec`, which to its parent is the command
// itself (stdio, exit status, death by a signal, signals passed on). Here: which host uid the
// sandbox's root is, starting the holder, and the argv that runs a command in it.
//
// Who is who, for a sandbox started by root:
//   moat, the engine, `ip`, the gateway's sockets   host root, in the host's namespaces
//   the supervisor (moat-sandbox create)           host root, waits; dies with moat
//   the holder, PID 1 inside                       uid 0 inside = SandboxUser outside, no capability
//   each command                                   uid 0 inside = SandboxUser outside, Docker's
//                                                  default capabilities within its namespaces only
import { spawn, type ChildProcess, type StdioOptions } from "node:child_process";
import { closeSync, existsSync, openSync, readFileSync } from "node:fs";
import { ConfigError, MoatError } from "../errors.js";

/** The host uid and gid a sandbox's root is (its files, its processes, seen from the host). */
export interface SandboxUser {
  uid: number;
  gid: number;
}

/** Where no one is named (no --user, not under sudo): nobody. */
export const NOBODY: SandboxUser = { uid: 65534, gid: 65534 };

const MAX_ID = 4294967294; // (uid_t)-1 is "no id"

/** The primary group of `uid` in /etc/passwd, or undefined. */
function primaryGroup(uid: number): number | undefined {
  try {
    for (const line of readFileSync("/etc/passwd", "utf8").split("\n")) {
      const f = line.split(":");
      if (f.length >= 4 && Number(f[2]) === uid && /^\d+$/.test(f[3]!)) return Number(f[3]);
    }
  } catch {
    // no passwd file: the gid is the uid's number
  }
  return undefined;
}

/** "UID[:GID]" (numbers; GID defaults to the uid's primary group, else the same number). */
export function parseUser(text: string, what = "--user"): SandboxUser {
  const m = /^(\d+)(?::(\d+))?$/.exec(text.trim());
  if (!m) throw new ConfigError(`${what} "${text}" is not UID[:GID]`, "give numbers, e.g. --user 1000:1000");
  return checkUser({ uid: Number(m[1]), gid: m[2] !== undefined ? Number(m[2]) : primaryGroup(Number(m[1])) ?? Number(m[1]) }, what);
}

function checkUser(u: SandboxUser, what: string): SandboxUser {
  for (const [k, v] of [["uid", u.uid], ["gid", u.gid]] as const) {
    if (!Number.isInteger(v) || v < 0 || v > MAX_ID) throw new ConfigError(`${what}: ${k} ${v} is out of range`, `use 1 to ${MAX_ID}`);
  }
  if (u.uid === 0 || u.gid === 0) {
    throw new ConfigError(`${what}: the sandbox's root cannot be the host's root (uid/gid 0)`,
      "the command would own every root-owned file of the host: give an unprivileged uid, e.g. --user 65534 (nobody)");
  }
  return u;
}

/**
 * The host uid a sandbox's root maps to: the one asked for; else, under sudo, the user who ran
 * sudo (SUDO_UID, SUDO_GID); else nobody (65534). Rootless (moat run by `rootless`), always that
 * user: an ordinary user can map no one else.
 */
export function sandboxUser(asked: { uid: number; gid?: number } | string | undefined, env: NodeJS.ProcessEnv = process.env, rootless?: SandboxUser): SandboxUser {
  if (rootless) {
    const u = typeof asked === "string" ? parseUser(asked) : asked;
    if (u && (u.uid !== rootless.uid || (u.gid !== undefined && u.gid !== rootless.gid))) {
      throw new ConfigError(`without root the sandbox's root is you (uid ${rootless.uid}, gid ${rootless.gid}): it cannot be uid ${u.uid}`, "drop --user, or run moat as root");
    }
    return rootless;
  }
  if (typeof asked === "string") return parseUser(asked);
  if (asked !== undefined) return checkUser({ uid: asked.uid, gid: asked.gid ?? primaryGroup(asked.uid) ?? asked.uid }, "user");
  const sudoUid = Number(env.SUDO_UID);
  if (env.SUDO_UID && Number.isInteger(sudoUid) && sudoUid > 0 && sudoUid <= MAX_ID) {
    const sudoGid = Number(env.SUDO_GID);
    return { uid: sudoUid, gid: env.SUDO_GID && Number.isInteger(sudoGid) && sudoGid > 0 ? sudoGid : primaryGroup(sudoUid) ?? sudoUid };
  }
  return NOBODY;
}

/** The helper binary, built with the native addon. */
export function helperPath(): string {
  const path = new URL("../../../../native-vmm/build/Release/moat-sandbox", import.meta.url).pathname;
  if (!existsSync(path)) {
    throw new MoatError("ERR_MISSING_TOOL", `moat's sandbox helper was not found at ${path}`,
      "run `npm install` (or `npm run build:native`) in the moat checkout");
  }
  return path;
}

export interface ContainmentOptions {
  /**
   * The uid and gid the sandbox's root is, as moat's own user namespace names them: the host's
   * (SandboxUser) when moat is root, 0 (the user) when moat runs rootless.
   */
  mapTo: SandboxUser;
  /** Bind the sandbox's network namespace at /run/netns/NAME (root only). */
  netnsName?: string;
  /** A directory whose entries are bound over /etc/ENTRY inside (resolv.conf, ssl). */
  etcDir?: string;
}

export class Containment {
  private constructor(
    private readonly helper: string,
    private readonly supervisor: ChildProcess,
    /** The holder's PID on the host. */
    private readonly holderPid: number,
    /** The holder's /proc directory: every command joins the namespaces through it. */
    private procFd: number,
  ) {}

  /** Start the holder; resolves once the sandbox's namespaces and mounts are ready. */
  static async start(o: ContainmentOptions): Promise<Containment> {
    const helper = helperPath();
    const args = ["create", "--uid", String(o.mapTo.uid), "--gid", String(o.mapTo.gid), "--ppid", String(process.pid)];
    if (o.netnsName) args.push("--netns-name", o.netnsName);
    if (o.etcDir) args.push("--etc", o.etcDir);
    // Nothing of moat's environment reaches the holder (its /proc entries are closed anyway).
    const supervisor = spawn(helper, args, { stdio: ["ignore", "pipe", "pipe"], env: {} });
    let out = "";
    let err = "";
    supervisor.stderr!.on("data", (d: Buffer) => { err += d.toString(); });
    const holderPid = await new Promise<number>((resolve, reject) => {
      const failed = (why: string) => reject(new MoatError("ERR_NETNS", `cannot create the sandbox's namespaces: ${why}`,
        /user namespace|max_user_namespaces/.test(why) ? "allow user namespaces: sysctl -w user.max_user_namespaces=15000 (and kernel.unprivileged_userns_clone=1 where it exists)" : undefined));
      supervisor.once("error", (e) => failed(e.message));
      supervisor.stdout!.on("data", (d: Buffer) => {
        out += d.toString();
        const m = /^ready (\d+)\n/.exec(out);
        if (m) resolve(Number(m[1]));
      });
      supervisor.once("exit", (code, signal) => failed(err.trim().replace(/^moat: /gm, "") || `the helper exited (${signal ?? code})`));
    });
    supervisor.removeAllListeners("exit");
    supervisor.stdout!.destroy();
    supervisor.stderr!.destroy();
    supervisor.unref();
    let procFd: number;
    try {
      procFd = openSync(`/proc/${holderPid}`, "r");
    } catch (e) {
      supervisor.kill("SIGKILL");
      throw new MoatError("ERR_NETNS", `the sandbox's holder (pid ${holderPid}) is gone: ${(e as Error).message}`);
    }
    return new Containment(helper, supervisor, holderPid, procFd);
  }

  /** The sandbox's network namespace, for whoever joins it from outside (the engine, `ip`). */
  get netnsPath(): string {
    return `/proc/${this.holderPid}/ns/net`;
  }

  /**
   * Run `command` in the sandbox with exactly `env`, starting in `cwd` (or / when the sandbox's
   * uid cannot reach it). The ChildProcess stands for the command: its stdio, its exit status or
   * signal; signals sent to it reach the command.
   */
  spawn(command: string[], stdio: StdioOptions, env: NodeJS.ProcessEnv, cwd = process.cwd()): ChildProcess {
    if (this.procFd < 0) throw new MoatError("ERR_NETNS", "the sandbox is destroyed");
    const fds = typeof stdio === "string" ? [stdio, stdio, stdio] : [...stdio];
    while (fds.length < 3) fds.push(undefined);
    const procFdIndex = fds.length;
    return spawn(this.helper, ["exec", "--proc-fd", String(procFdIndex), "--cwd", cwd, "--", ...command],
      { stdio: [...fds, this.procFd], env });
  }

  /** Kill every process of the sandbox at once (the holder, and with it its PID namespace). Idempotent. */
  kill(): void {
    if (this.supervisor.exitCode === null && this.supervisor.signalCode === null) this.supervisor.kill("SIGKILL");
    if (this.procFd >= 0) {
      closeSync(this.procFd);
      this.procFd = -1;
    }
  }
}
