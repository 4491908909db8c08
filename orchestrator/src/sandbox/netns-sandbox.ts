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
import { mkdirSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { checkNetnsHost, findInPath } from "./host-checks.js";
import { addressesFor, claimName, leaseSlot, netnsName, type SandboxAddresses, type SlotLease } from "./addressing.js";
import { removeNetns } from "./leftovers.js";
import { ConfigError, MoatError } from "../errors.js";
import { Gateway, validateOptions, type GatewayOptions, type ValidOptions } from "../gateway/gateway.js";
import { writeTrustBundle } from "../tls/setup.js";
import { GuestSandbox } from "./sandbox.js";

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
    const sandbox = new NetnsSandbox(name, netns, addresses, o, ip, () => { lease.release(); releaseName(); });
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

  /** Run a command inside the sandbox (as `ip netns exec NETNS CMD...`). */
  spawn(command: string[], stdio: StdioOptions = "inherit", env: NodeJS.ProcessEnv = process.env): ChildProcess {
    if (command.length === 0) throw new ConfigError("no command to run", "give it after --, e.g. moat run -- ping -c1 172.30.0.1");
    const exe = command[0]!;
    if (!exe.includes("/") ? !findInPath(exe) : !existsSync(exe)) {
      throw new MoatError("ERR_BAD_ARGUMENT", `command not found: ${exe}`, "check the spelling, or give its full path");
    }
    // Secrets as placeholders; with TLS interception, clients pointed at the bundle that trusts
    // moat's CA (the system path inside the sandbox is that bundle already).
    const childEnv = this.gateway ? this.gateway.commandEnv(env) : env;
    const child = spawn(this.ipPath, ["netns", "exec", this.netns, ...command], { stdio, env: childEnv });
    this.children.add(child);
    child.once("exit", () => this.children.delete(child));
    return child;
  }

  protected async stopGuest(): Promise<void> {
    // The namespace's processes are the caller's (the command has ended, or is ending).
  }

  /** @internal Delete the namespace and its /etc/netns directory. */
  protected removeGuest(): void {
    try {
      execFileSync(this.ipPath, ["netns", "del", this.netns], { stdio: "ignore" });
    } catch {
      // not created, or already gone
    }
    rmSync(`/etc/netns/${this.netns}`, { recursive: true, force: true });
  }
}
