// netns-sandbox.ts — the default sandbox: a fresh network namespace whose only NIC is a TAP
// device served by a moat gateway (DESIGN §9), and whose commands are contained (containment.ts:
// their own user, PID and mount namespaces, root inside an unprivileged uid outside).
//
// Lifecycle: lease an address slot (the namespace is moat-<pool tag>-<slot>, leases.ts; the
// sandbox's name is the caller's, or that) -> write the files the guest sees under /etc (resolv.conf, the
// TLS trust bundle) in /etc/netns/NAME -> start the holder of the sandbox's namespaces, whose
// network namespace is bound at /run/netns/NAME -> start the gateway, whose engine creates the TAP
// device `eth0` inside it -> configure eth0 (MAC, MTU, addresses, default routes via the gateway)
// -> run commands in it -> destroy: the gateway drained and stopped, the holder killed (and with
// it every process of the sandbox), the namespace and its /etc/netns directory deleted, the slot
// released. destroy() is idempotent and also runs synchronously from process exit handlers
// (destroySync), so nothing is left behind when moat is interrupted or crashes; killed outright,
// moat takes the sandbox's processes with it (containment.ts), and `moat cleanup` removes the
// namespace's name. Run by an ordinary user (rootless.ts), nothing is bound on the host: the
// namespace is reached through the holder, the /etc files live in the user's runtime directory.
import { execFile, execFileSync, type ChildProcess, type StdioOptions } from "node:child_process";
import { promisify } from "node:util";
import { constants as osConstants } from "node:os";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { checkNetnsHost, findInPath, resolveCommand } from "./host-checks.js";
import { Containment, sandboxUser } from "./containment.js";
import { rootlessUser, runtimeDir } from "./rootless.js";
import { join } from "node:path";
import { leaseNamed, netnsName } from "./leases.js";
import { addressesFor, type SandboxAddresses } from "../gateway/addressing.js";
import { removeNetns } from "./leftovers.js";
import { register } from "./guard.js";
import { CommandError, ConfigError, HostRequirementError, MoatError } from "../errors.js";
import { Gateway } from "../gateway/gateway.js";
import { validateOptions, type GatewayOptions, type ValidOptions } from "../gateway/options.js";
import { writeTrustBundle, hasDistroCas, HOST_TRUST } from "../tls/setup.js";
import { GuestSandbox, hangUpOnAbort, type RunOptions } from "./sandbox.js";

export { DEFAULT_MTU, type DnsOptions, type SecretViolationEvent } from "../gateway/options.js";

/** A namespace sandbox takes every gateway option, and who its commands are on the host. */
export interface NetnsSandboxOptions extends GatewayOptions {
  /**
   * The host uid (and gid) the sandbox's root is: { uid, gid } or "UID[:GID]". Default: under
   * sudo the user who ran it (SUDO_UID), else nobody (65534). Never 0.
   */
  user?: { uid: number; gid?: number } | string;
}

const run = promisify(execFile);

/** A command's PATH where moat has none. */
const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

function ipErr(args: string[], e: unknown): MoatError {
  const stderr = (e as { stderr?: string }).stderr?.trim();
  return new MoatError("ERR_NETNS", `ip ${args.join(" ")} failed: ${stderr || (e as Error).message}`);
}

export class NetnsSandbox extends GuestSandbox {
  private readonly children = new Set<ChildProcess>();
  private containment: Containment | undefined;

  private constructor(
    name: string,
    /** The network namespace: moat-<pool tag>-<slot>, whatever the sandbox's name. */
    readonly netns: string,
    addresses: SandboxAddresses,
    private readonly options: ValidOptions,
    private readonly ipPath: string,
    release: () => void,
    /** Forget the janitor's registration of the namespace (removeGuest removed it). */
    private readonly unregisterNetns: () => void,
    /** Run by an ordinary user (rootless.ts): nothing is bound on the host, files under the runtime directory. */
    private readonly rootless: boolean,
  ) {
    super(name, addresses, options.mtu, options.exitGraceMs, release);
  }

  static async create(options: NetnsSandboxOptions = {}): Promise<NetnsSandbox> {
    const o = validateOptions(options);
    const rootless = rootlessUser();
    const user = sandboxUser(options.user, process.env, rootless);
    const ip = checkNetnsHost();
    if (rootless && !findInPath("nsenter")) throw new HostRequirementError("ERR_MISSING_TOOL", "nsenter (util-linux) was not found in PATH", "install it: `apt-get install util-linux`");
    const lease = leaseNamed(o.ipv4Pool, options.name);
    const netns = netnsName(o.ipv4Pool, lease.slot);
    const name = options.name ?? netns;
    lease.record({ netns }); // before it exists: whoever finds the lease stale knows what to remove
    const addresses = addressesFor(lease.slot, name, o.ipv4Pool);
    // If this process ends before destroy(), the janitor removes the namespace (guard.ts).
    const unregister = rootless ? () => {} : register({ kind: "netns", name: netns, lease: lease.path, token: lease.token });
    const sandbox = new NetnsSandbox(name, netns, addresses, o, ip, lease.releaseAll, unregister, rootless !== undefined);
    try {
      // A namespace of this name (the pool's and the slot's: only the lease's holder ever creates
      // it) can only be left over.
      if (!rootless) removeNetns(netns, ip);
      // The holder brings lo up and binds what is in etcDir over /etc inside. Rootless, the
      // sandbox's root is the user (uid 0 of moat's own user namespace) and nothing is bound on
      // the host: the namespace is reached through the holder.
      const etcDir = sandbox.writeEtc();
      sandbox.containment = await Containment.start(rootless ? { mapTo: { uid: 0, gid: 0 }, etcDir } : { mapTo: user, netnsName: netns, etcDir });
      sandbox.gateway = await Gateway.start(o, {
        name,
        addresses,
        link: { kind: "tap", netnsPath: sandbox.netnsPath, ifname: "eth0" },
        terminate: () => {
          sandbox.killAll();
          void sandbox.destroy({ graceMs: 0 });
        },
      });
      if (!o.policy.offline) await sandbox.configureGuest();
      return sandbox;
    } catch (e) {
      await sandbox.destroy();
      throw e;
    }
  }

  /** Kill every process of the sandbox (the commands and all they started) at once. */
  private killAll(): void {
    for (const c of this.children) c.kill("SIGKILL");
    this.containment?.kill();
  }

  /** The sandbox's network namespace, for the engine and `ip`. */
  private get netnsPath(): string {
    return this.rootless ? this.containment!.netnsPath : `/run/netns/${this.netns}`;
  }

  /** Where the files the guest sees over /etc are written. */
  private get etcDir(): string {
    return this.rootless ? join(runtimeDir(), "netns", this.netns) : `/etc/netns/${this.netns}`;
  }

  /** `ip ARGS` (rootless: in the sandbox's network namespace, entered by nsenter), `input` its stdin. */
  private async ip(args: string[], input?: string): Promise<void> {
    const [program, argv] = this.rootless ? [findInPath("nsenter")!, [`--net=${this.netnsPath}`, "--", this.ipPath, ...args]] : [this.ipPath, args];
    try {
      if (input === undefined) {
        await run(program, argv);
        return;
      }
      await new Promise<void>((resolve, reject) => {
        const p = execFile(program, argv, (e, _stdout, stderr) => e ? reject(Object.assign(e, { stderr })) : resolve());
        p.stdin!.end(input);
      });
    } catch (e) {
      throw ipErr(args, e);
    }
  }

  /**
   * The files the guest sees over /etc (the holder binds each entry of the directory over its
   * name, as `ip netns exec` does with /etc/netns/NAME): resolv.conf pointing at the gateway and,
   * with TLS interception, the trust store that holds moat's CA.
   */
  private writeEtc(): string {
    const dir = this.etcDir;
    rmSync(dir, { recursive: true, force: true }); // left by a moat that died
    mkdirSync(dir, { recursive: true });
    if (this.options.policy.offline) return dir;
    writeFileSync(`${dir}/resolv.conf`,
      `# written by moat for sandbox ${this.name}: DNS goes to the gateway\nnameserver ${this.addresses.gatewayIp4}\noptions edns0\n`);
    const tls = this.options.tls;
    if (tls) {
      if (!tls.trustHostCas && !hasDistroCas()) this.options.onWarning(`no distribution CA set at ${HOST_TRUST.distroDir}: sandbox ${this.name} trusts moat's CA alone (--tls-trust-host-cas: the host's store besides)`);
      writeTrustBundle(dir, tls.ca.certPem, tls.trustHostCas);
    }
    return dir;
  }

  /** eth0 as the engine expects it: one `ip` process for all of it (rootless, entered by nsenter). */
  private async configureGuest(): Promise<void> {
    const a = this.addresses;
    await this.ip(this.rootless ? ["-batch", "-"] : ["-n", this.netns, "-batch", "-"], [
      `link set eth0 address ${a.guestMac} mtu ${this.mtu}`,
      `addr add ${a.guestIp4}/${a.prefixLen4} dev eth0`,
      `addr add ${a.guestIp6}/64 dev eth0 nodad`,
      "link set eth0 up",
      `route add default via ${a.gatewayIp4} dev eth0`,
      `route add default via inet6 ${a.gatewayLl6} dev eth0`,
    ].join("\n") + "\n");
  }

  /**
   * Run a command inside the sandbox, contained (containment.ts): root of the sandbox's user
   * namespace, its own PID namespace and /proc, the host's filesystem read-only. It starts in
   * this process's working directory where the sandbox's uid can reach it, else in /. Its
   * environment is a clean one (GuestSandbox.commandEnv: this process's PATH, HOME, TERM and
   * LANG, moat's own variables) with `env` added.
   */
  spawn(command: string[], stdio: StdioOptions = "inherit", env: Record<string, string | undefined> = {}, cwd?: string): ChildProcess {
    if (command.length === 0) throw new ConfigError("no command to run", "give it after --, e.g. moat run -- ip addr");
    if (!this.containment) throw new MoatError("ERR_NETNS", `sandbox ${this.name} is not running`);
    const childEnv = this.commandEnv(env, { PATH: process.env.PATH ?? DEFAULT_PATH, HOME: process.env.HOME ?? "/root" });
    // Not found: a CommandError with status 127; not executable: 126 (the host's filesystem is
    // the sandbox's, read-only).
    resolveCommand(command[0]!, childEnv.PATH, cwd);
    const child = this.containment.spawn(command, stdio, childEnv, cwd);
    this.children.add(child);
    child.once("exit", () => this.children.delete(child));
    return child;
  }

  /**
   * Run a command in the sandbox: its status (128+N for signal N; 127 not found and 126 not
   * executable, said on `stderr`), as VmSandbox.run. Output goes to the streams given (default:
   * this process's); `env` is added to the command's clean environment.
   */
  async run(command: string[], o: RunOptions = {}): Promise<number> {
    const stdout = o.stdout ?? process.stdout;
    const stderr = o.stderr ?? process.stderr;
    let child: ChildProcess;
    try {
      child = this.spawn(command, [o.stdin ? "pipe" : "ignore", "pipe", "pipe"], o.env ?? {}, o.cwd);
    } catch (e) {
      if (!(e instanceof CommandError)) throw e;
      stderr.write(`moat: ${e.message}\n`);
      return e.status;
    }
    if (o.stdin) {
      child.stdin!.on("error", () => {}); // the command may exit without reading it all
      o.stdin.pipe(child.stdin!);
    }
    child.stdout!.pipe(stdout, { end: false });
    child.stderr!.pipe(stderr, { end: false });
    const hungUp = hangUpOnAbort(o.signal, (signo) => signalCommand(child, signo));
    child.once("exit", hungUp);
    return new Promise<number>((resolve, reject) => {
      let status: number | undefined;
      const done = () => {
        o.stdin?.unpipe(child.stdin!);
        child.stdout!.unpipe(stdout);
        child.stderr!.unpipe(stderr);
        resolve(status!);
      };
      child.once("error", reject);
      child.once("exit", (code, signal) => {
        status = code ?? 128 + ((osConstants.signals as Record<string, number>)[signal ?? "SIGKILL"] ?? 9);
        // Its output is read to the end, unless something it left behind holds it open.
        setTimeout(done, 500).unref();
      });
      child.once("close", () => { if (status !== undefined) done(); });
    });
  }

  /** Deliver a signal to the commands running in the sandbox (those spawn() and run() started). */
  signal(signo: number): void {
    for (const c of this.children) signalCommand(c, signo);
  }

  protected async stopGuest(): Promise<void> {
    // The namespace's processes are the caller's (the command has ended, or is ending).
  }

  /** @internal Kill the sandbox's processes; delete the namespace's name and its /etc files. */
  protected removeGuest(): void {
    this.containment?.kill();
    if (!this.rootless) {
      try {
        execFileSync(this.ipPath, ["netns", "del", this.netns], { stdio: "ignore" });
      } catch {
        // not created, or already gone
      }
    }
    rmSync(this.etcDir, { recursive: true, force: true });
    this.unregisterNetns();
  }
}

/**
 * Signal `signo` to the process group of the command `child` (a `moat-sandbox exec`) runs: it
 * passes signals on to the group. SIGKILL cannot be passed on (to the helper itself it would reach
 * the command alone, through its PDEATHSIG): the helper kills the group at SIGSTKFLT, and is
 * killed itself a second later if that did not end it.
 */
function signalCommand(child: ChildProcess, signo: number): void {
  try {
    if (signo !== osConstants.signals.SIGKILL) child.kill(signo);
    else {
      child.kill("SIGSTKFLT");
      setTimeout(() => { try { child.kill("SIGKILL"); } catch { /* gone */ } }, 1000).unref();
    }
  } catch { /* gone */ }
}
