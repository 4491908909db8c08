// netns-sandbox.ts — the default sandbox: a fresh network namespace whose only NIC is a TAP
// device served by a moat gateway (DESIGN §9).
//
// Lifecycle: lease an address slot -> create namespace moat-<pool tag>-<slot> (addressing.ts;
// the sandbox's name is the caller's, or that) -> start the gateway, whose
// engine creates the TAP device `eth0` inside it -> configure the guest side (MAC, MTU, addresses,
// default routes via the gateway, resolv.conf, the TLS trust bundle) -> run commands in it ->
// destroy: the gateway drained and stopped, the namespace and its /etc/netns directory deleted,
// the slot released. destroy() is idempotent and also runs synchronously from process exit
// handlers (destroySync), so nothing is left behind when moat is interrupted or crashes.
import { execFile, execFileSync, spawn, type ChildProcess, type StdioOptions } from "node:child_process";
import { promisify } from "node:util";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { checkNetnsHost, resolveCommand } from "./host-checks.js";
import { constants as osConstants } from "node:os";
import { addressesFor, claimName, leaseSlot, netnsName, type SandboxAddresses, type SlotLease } from "./addressing.js";
import { removeNetns } from "./leftovers.js";
import { diesWithMoat, register } from "./guard.js";
import { CommandError, ConfigError, MoatError } from "../errors.js";
import { Gateway, validateOptions, type GatewayOptions, type ValidOptions } from "../gateway/gateway.js";
import { writeTrustBundle } from "../tls/setup.js";
import { GuestSandbox, type RunOptions } from "./sandbox.js";

export { DEFAULT_MTU, type DnsOptions, type SecretViolationEvent } from "../gateway/gateway.js";

/** A namespace sandbox takes every gateway option. */
export type NetnsSandboxOptions = GatewayOptions;

const run = promisify(execFile);

function ipErr(args: string[], e: unknown): MoatError {
  const stderr = (e as { stderr?: string }).stderr?.trim();
  return new MoatError("ERR_NETNS", `ip ${args.join(" ")} failed: ${stderr || (e as Error).message}`);
}

export class NetnsSandbox extends GuestSandbox {
  private readonly children = new Set<ChildProcess>();

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
  ) {
    super(name, addresses, options.mtu, options.exitGraceMs, release);
  }

  static async create(options: NetnsSandboxOptions = {}): Promise<NetnsSandbox> {
    const o = validateOptions(options);
    const ip = checkNetnsHost();
    const releaseName = options.name !== undefined ? claimName(options.name) : () => {};
    let lease: SlotLease;
    try {
      lease = leaseSlot(o.ipv4Pool, { name: options.name });
    } catch (e) {
      releaseName();
      throw e;
    }
    const netns = netnsName(o.ipv4Pool, lease.slot);
    const name = options.name ?? netns;
    lease.record({ netns }); // before it exists: whoever finds the lease stale knows what to remove
    const addresses = addressesFor(lease.slot, name, o.ipv4Pool);
    // If this process ends before destroy(), the janitor removes the namespace (guard.ts).
    const unregister = register({ kind: "netns", name: netns, lease: lease.path, token: lease.token });
    const sandbox = new NetnsSandbox(name, netns, addresses, o, ip, () => { lease.release(); releaseName(); }, unregister);
    try {
      // A namespace of this name (the pool's and the slot's: only the lease's holder ever creates
      // it) can only be left over.
      removeNetns(netns, ip);
      await sandbox.ip(["netns", "add", netns]);
      await sandbox.ip(["-n", netns, "link", "set", "lo", "up"]);
      sandbox.gateway = await Gateway.start(o, {
        name,
        addresses,
        link: { kind: "tap", netnsPath: `/run/netns/${netns}`, ifname: "eth0" },
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

  /** Kill every process in the sandbox's network namespace (the command and all it started). */
  private killAll(): void {
    for (const c of this.children) c.kill("SIGKILL");
    try {
      const pids = execFileSync(this.ipPath, ["netns", "pids", this.netns], { encoding: "utf8" }).split("\n").map(Number).filter((p) => p > 0);
      for (const pid of pids) {
        try { process.kill(pid, "SIGKILL"); } catch { /* gone */ }
      }
    } catch {
      // the namespace is gone already
    }
  }

  private async ip(args: string[]): Promise<void> {
    try {
      await run(this.ipPath, args);
    } catch (e) {
      throw ipErr(args, e);
    }
  }

  private async configureGuest(): Promise<void> {
    const a = this.addresses;
    const n = ["-n", this.netns];
    await this.ip([...n, "link", "set", "eth0", "address", a.guestMac, "mtu", String(this.mtu)]);
    await this.ip([...n, "addr", "add", `${a.guestIp4}/${a.prefixLen4}`, "dev", "eth0"]);
    await this.ip([...n, "-6", "addr", "add", `${a.guestIp6}/64`, "dev", "eth0", "nodad"]);
    await this.ip([...n, "link", "set", "eth0", "up"]);
    await this.ip([...n, "route", "add", "default", "via", a.gatewayIp4, "dev", "eth0"]);
    await this.ip([...n, "-6", "route", "add", "default", "via", a.gatewayLl6, "dev", "eth0"]);
    // `ip netns exec` bind-mounts /etc/netns/NAME/* over /etc/* for the command it runs.
    mkdirSync(`/etc/netns/${this.netns}`, { recursive: true });
    writeFileSync(`/etc/netns/${this.netns}/resolv.conf`,
      `# written by moat for sandbox ${this.name}: DNS goes to the gateway\nnameserver ${a.gatewayIp4}\noptions edns0\n`);
    if (this.options.tls) writeTrustBundle(`/etc/netns/${this.netns}`, this.options.tls.ca.certPem);
  }

  /**
   * Start a command inside the sandbox (as `ip netns exec NETNS CMD...`) and return its process.
   * Throws a CommandError when the command is not found (status 127) or not executable (126).
   * run() is the way that works for every kind of sandbox.
   */
  spawn(command: string[], stdio: StdioOptions = "inherit", env: NodeJS.ProcessEnv = process.env, cwd?: string): ChildProcess {
    if (command.length === 0) throw new ConfigError("no command to run", "give it after --, e.g. moat run -- ip addr");
    resolveCommand(command[0]!, env.PATH, cwd);
    // Secrets as placeholders; with TLS interception, clients pointed at the bundle that trusts
    // moat's CA (the system path inside the sandbox is that bundle already).
    const childEnv = this.gateway ? this.gateway.commandEnv(env) : env;
    // In a PID namespace whose init dies with moat: the command and all it starts end with moat.
    const child = spawn(this.ipPath, ["netns", "exec", this.netns, ...diesWithMoat(command, { pidns: true })], { stdio, env: childEnv, cwd });
    this.children.add(child);
    child.once("exit", () => this.children.delete(child));
    return child;
  }

  /**
   * Run a command in the sandbox: its status (128+N for signal N; 127 not found and 126 not
   * executable, said on `stderr`), as VmSandbox.run. Output goes to the streams given (default:
   * this process's); env is the command's whole environment (default: this process's).
   */
  async run(command: string[], o: RunOptions = {}): Promise<number> {
    const stdout = o.stdout ?? process.stdout;
    const stderr = o.stderr ?? process.stderr;
    let child: ChildProcess;
    try {
      child = this.spawn(command, [o.stdin ? "pipe" : "ignore", "pipe", "pipe"], o.env ?? process.env, o.cwd);
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
    for (const c of this.children) {
      try { c.kill(signo); } catch { /* gone */ }
    }
  }

  protected async stopGuest(): Promise<void> {
    // The namespace's processes are the caller's (the command has ended, or is ending).
  }

  /** @internal Kill what runs in the namespace, delete it and its /etc/netns directory. */
  protected removeGuest(): void {
    // What the command left running had its connections' grace (drain): it ends now.
    this.killAll();
    try {
      execFileSync(this.ipPath, ["netns", "del", this.netns], { stdio: "ignore" });
    } catch {
      // not created, or already gone
    }
    rmSync(`/etc/netns/${this.netns}`, { recursive: true, force: true });
    this.unregisterNetns();
  }
}
