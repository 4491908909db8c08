// netns-sandbox.ts — the default sandbox: a fresh network namespace whose only NIC is a TAP
// device served by a moat gateway (DESIGN §9), and whose commands are contained (containment.ts:
// their own user, PID and mount namespaces, root inside an unprivileged uid outside).
//
// Lifecycle: lease an address slot -> write the files the guest sees under /etc (resolv.conf, the
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
import { mkdirSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { checkNetnsHost, findInPath } from "./host-checks.js";
import { Containment, sandboxUser } from "./containment.js";
import { rootlessUser, runtimeDir } from "./rootless.js";
import { join } from "node:path";
import { addressesFor, leaseSlot, type SandboxAddresses } from "./addressing.js";
import { ConfigError, HostRequirementError, MoatError } from "../errors.js";
import { Gateway, validateOptions, type GatewayOptions, type ValidOptions } from "../gateway/gateway.js";
import { writeTrustBundle, hasDistroCas, HOST_TRUST } from "../tls/setup.js";
import { GuestSandbox } from "./sandbox.js";

export { DEFAULT_MTU, type DnsOptions, type SecretViolationEvent } from "../gateway/gateway.js";

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
    addresses: SandboxAddresses,
    private readonly options: ValidOptions,
    private readonly ipPath: string,
    releaseSlot: () => void,
    /** Run by an ordinary user (rootless.ts): nothing is bound on the host, files under the runtime directory. */
    private readonly rootless: boolean,
  ) {
    super(name, addresses, options.mtu, options.exitGraceMs, releaseSlot);
  }

  static async create(options: NetnsSandboxOptions = {}): Promise<NetnsSandbox> {
    const o = validateOptions(options);
    const rootless = rootlessUser();
    const user = sandboxUser(options.user, process.env, rootless);
    const ip = checkNetnsHost();
    if (rootless && !findInPath("nsenter")) throw new HostRequirementError("ERR_MISSING_TOOL", "nsenter (util-linux) was not found in PATH", "install it: `apt-get install util-linux`");
    const { slot, release } = leaseSlot(o.ipv4Pool);
    const name = `moat-${slot}`;
    const addresses = addressesFor(slot, name, o.ipv4Pool);
    const sandbox = new NetnsSandbox(name, addresses, o, ip, release, rootless !== undefined);
    try {
      // A namespace of that name can only be left over from a moat that died: remove it.
      if (!rootless && existsSync(`/run/netns/${name}`)) await sandbox.ip(["netns", "del", name]).catch(() => {});
      // The holder brings lo up and binds what is in etcDir over /etc inside. Rootless, the
      // sandbox's root is the user (uid 0 of moat's own user namespace) and nothing is bound on
      // the host: the namespace is reached through the holder.
      const etcDir = sandbox.writeEtc();
      sandbox.containment = await Containment.start(rootless ? { mapTo: { uid: 0, gid: 0 }, etcDir } : { mapTo: user, netnsName: name, etcDir });
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
    return this.rootless ? this.containment!.netnsPath : `/run/netns/${this.name}`;
  }

  /** Where the files the guest sees over /etc are written. */
  private get etcDir(): string {
    return this.rootless ? join(runtimeDir(), "netns", this.name) : `/etc/netns/${this.name}`;
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
    await this.ip(this.rootless ? ["-batch", "-"] : ["-n", this.name, "-batch", "-"], [
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
  spawn(command: string[], stdio: StdioOptions = "inherit", env: Record<string, string | undefined> = {}): ChildProcess {
    if (command.length === 0) throw new ConfigError("no command to run", "give it after --, e.g. moat run -- ping -c1 172.30.0.1");
    if (!this.containment) throw new MoatError("ERR_NETNS", `sandbox ${this.name} is not running`);
    const childEnv = this.commandEnv(env, { PATH: process.env.PATH ?? DEFAULT_PATH, HOME: process.env.HOME ?? "/root" });
    const exe = command[0]!;
    if (!exe.includes("/") ? !findInPath(exe, childEnv.PATH) : !existsSync(exe)) {
      throw new MoatError("ERR_BAD_ARGUMENT", `command not found: ${exe}`, "check the spelling, or give its full path");
    }
    const child = this.containment.spawn(command, stdio, childEnv);
    this.children.add(child);
    child.once("exit", () => this.children.delete(child));
    return child;
  }

  protected async stopGuest(): Promise<void> {
    // The namespace's processes are the caller's (the command has ended, or is ending).
  }

  /** @internal Kill the sandbox's processes; delete the namespace's name and its /etc files. */
  protected removeGuest(): void {
    this.containment?.kill();
    if (!this.rootless) {
      try {
        execFileSync(this.ipPath, ["netns", "del", this.name], { stdio: "ignore" });
      } catch {
        // not created, or already gone
      }
    }
    rmSync(this.etcDir, { recursive: true, force: true });
  }
}
