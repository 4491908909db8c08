// vm-sandbox.ts — a sandbox whose guest is a QEMU microVM (DESIGN §9): its own kernel, its own
// filesystem (moat's initramfs), its NIC served by a moat gateway over vhost-user (default) or
// the stream link, and commands run through the exec agent over virtio-serial.
//
// Lifecycle: validate -> lease an address slot -> a private run directory (the link's socket) ->
// start the gateway listening on it -> build or reuse the guest image -> boot QEMU, whose NIC
// connects to the gateway, and whose guest takes its address by DHCP from it -> run commands ->
// destroy: the guest's connections get their grace, the guest powers off (killed if it does not),
// the gateway stops, the run directory and the slot go. destroy() is idempotent; an exit hook
// kills QEMU if the process ends first.
//
// The policy, DNS, audit, TLS, secret and port behaviour is the gateway's, the same object a
// namespace sandbox uses: nothing about the network depends on the kind of guest.
import { rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { PassThrough, Readable } from "node:stream";
import { leaseNamed, netnsName } from "../sandbox/leases.js";
import { addressesFor, type SandboxAddresses } from "../gateway/addressing.js";
import { Gateway } from "../gateway/gateway.js";
import { validateOptions, type GatewayOptions, type ValidOptions } from "../gateway/options.js";
import type { SchemaFields } from "../gateway/schema.js";
import { GuestSandbox, hangUpOnAbort, type RunOptions } from "../sandbox/sandbox.js";
import { registeredTempDir } from "../sandbox/guard.js";
import { ConfigError } from "../errors.js";
import { ensureVmImage } from "./image.js";
import { GUEST_TRUST, MOAT_CA_MARKER, trustBundle, type ValidTls } from "../tls/setup.js";
import { startVm, qemuValue, type Vm, type VmAccel } from "./qemu.js";
import { VmError } from "./vm-error.js";

export type VmLinkKind = NonNullable<SchemaFields<"vm.">["link"]>;

/**
 * A VM's own options: memoryMiB, cpus, link, accel are the options schema's ("vm.*":
 * gateway/schema.ts, --vm-* in `moat run --help`); the rest are here.
 */
export interface VmOptions extends SchemaFields<"vm."> {
  /** Progress of slow steps (image download and build, boot), one line each (default: stderr). */
  onProgress?: (line: string) => void;
  /** Host programs to add to the guest image with their libraries, e.g. ["iperf3"] (default: $MOAT_VM_EXTRA_BINARIES). */
  extraBinaries?: string[];
}

export interface VmSandboxOptions extends GatewayOptions {
  vm?: VmOptions;
}

/** run()'s options: those of every sandbox (RunOptions). */
export type VmRunOptions = RunOptions;

export class VmSandbox extends GuestSandbox {
  private vm: Vm | undefined;
  private vmExited = false;
  /** Boot time: QEMU spawned to the agent's READY. */
  bootMs = 0;

  private constructor(
    name: string,
    addresses: SandboxAddresses,
    options: ValidOptions,
    private readonly runDir: string,
    releaseSlot: () => void,
  ) {
    super(name, addresses, options.mtu, options.exitGraceMs, releaseSlot);
  }

  /** The accelerator the guest runs with ("kvm" or "tcg"). */
  get accel(): VmAccel | undefined {
    return this.vm?.accel;
  }

  static async create(options: VmSandboxOptions = {}): Promise<VmSandbox> {
    const o = validateOptions(options);
    const v = options.vm ?? {};
    const link = v.link ?? "vhost-user";
    if (link !== "vhost-user" && link !== "stream") throw new ConfigError(`VM link "${String(link)}" is unknown`, `use "vhost-user" or "stream"`);
    const memoryMiB = v.memoryMiB ?? 256;
    if (!Number.isInteger(memoryMiB) || memoryMiB < 64 || memoryMiB > 65536) throw new ConfigError(`VM memory ${v.memoryMiB} MiB is out of range`, "use 64 to 65536");
    const cpus = v.cpus ?? 1;
    if (!Number.isInteger(cpus) || cpus < 1 || cpus > 64) throw new ConfigError(`VM vCPUs ${v.cpus} is out of range`, "use 1 to 64");
    const progress = v.onProgress ?? ((line: string) => process.stderr.write(`moat: ${line}\n`));
    const lease = leaseNamed(o.ipv4Pool, options.name);
    const release = lease.releaseAll;
    const name = options.name ?? netnsName(o.ipv4Pool, lease.slot);
    const addresses = addressesFor(lease.slot, name, o.ipv4Pool);
    let runDir: string;
    let unregister: () => void;
    try {
      // Recorded in the lease (whoever finds it stale removes the directory) and registered with
      // the janitor (removed if this process ends first: guard.ts) before it exists.
      ({ path: runDir, unregister } = registeredTempDir(join(tmpdir(), "moat-vm-"), (path) => lease.record({ dirs: [path] })));
    } catch (e) {
      release();
      throw e;
    }
    const sandbox = new VmSandbox(name, addresses, o, runDir, () => { release(); unregister(); });
    try {
      const socket = join(sandbox.runDir, "net.sock");
      sandbox.gateway = await Gateway.start(o, {
        name,
        addresses,
        link: link === "stream" ? { kind: "stream", path: socket } : { kind: "vhost-user", path: socket },
        // A secret violation to terminate on: QEMU is killed now (no power-off, no grace: the
        // guest gets no more time on the network), then the rest is torn down.
        terminate: () => {
          sandbox.killGuest();
          void sandbox.destroy({ graceMs: 0 });
        },
      });
      const image = await ensureVmImage({ onProgress: progress, extraBinaries: v.extraBinaries });
      // The NIC: QEMU connects to the gateway's socket (listening already). vectors=0: QEMU 7.2
      // under TCG crashes in its MSI-X setup when a vhost-user device starts (any back-end);
      // host_mtu: the guest learns the MTU from the device (DHCP says it too).
      const device = ["-device", `virtio-net-pci,netdev=n0,mac=${addresses.guestMac},host_mtu=${o.mtu},vectors=0`];
      const nic = o.policy.offline ? null : link === "stream"
        ? ["-netdev", `stream,id=n0,server=off,addr.type=unix,addr.path=${qemuValue(socket)}`, ...device]
        : ["-chardev", `socket,id=c0,path=${qemuValue(socket)},reconnect=1`, "-netdev", "vhost-user,id=n0,chardev=c0", ...device];
      sandbox.vm = await startVm({ image, memoryMiB, cpus, netdev: nic, accel: v.accel ?? "auto", dir: join(sandbox.runDir, "qemu") });
      void sandbox.vm.exited.then(() => { sandbox.vmExited = true; });
      const ready = await sandbox.vm.ready;
      sandbox.bootMs = ready.bootMs;
      if (!o.policy.offline) await sandbox.configureIpv6();
      if (o.tls) await sandbox.installTrust(o.tls);
      return sandbox;
    } catch (e) {
      await sandbox.destroy({ graceMs: 0 });
      throw e;
    }
  }

  /**
   * IPv6 as in a namespace sandbox: the guest's address (the engine's IPv6 expects this one
   * source; an address the guest made up from the router advert would be dropped as spoofed) and
   * the gateway's link-local address as the default route. DHCP did IPv4.
   */
  private async configureIpv6(): Promise<void> {
    const a = this.addresses;
    await this.guestShell(`c=/proc/sys/net/ipv6/conf/eth0; echo 0 > $c/autoconf; echo 0 > $c/accept_dad; ip -6 addr flush dev eth0 scope global; ip -6 addr add ${a.guestIp6}/64 dev eth0 && ip -6 route replace default via ${a.gatewayLl6} dev eth0`, "configure IPv6");
  }

  /** Run a setup script in the guest; a failure is an error naming what it was for and what the guest said. */
  private async guestShell(script: string, what: string, stdin: Readable | null = null): Promise<void> {
    const sink = new PassThrough();
    let said = "";
    sink.on("data", (d: Buffer) => { said += d.toString(); });
    const code = await this.vm!.exec(["sh", "-c", script], { stdin, stdout: sink, stderr: sink });
    if (code !== 0) throw new VmError(`could not ${what} in the VM (status ${code}): ${said.trim()}`);
  }

  /**
   * With TLS interception, the guest's CA bundle (the image has no roots of its own): the
   * distribution's CA set, or the host's whole store with trustHostCas, then moat's CA; and
   * moat's CA alone in its own file.
   */
  private async installTrust(tls: ValidTls): Promise<void> {
    const { bundle, caFile } = GUEST_TRUST;
    await this.guestShell(`mkdir -p ${dirname(bundle)} ${dirname(caFile)} && cat > ${bundle} && sed -n '/^${MOAT_CA_MARKER}$/,$p' ${bundle} | tail -n +2 > ${caFile}`,
      "install moat's CA", Readable.from([trustBundle(tls.ca.certPem, tls.trustHostCas)]));
  }

  /** Run a command in the guest; resolves with its exit status (128+N for signal N). */
  async run(command: string[], o: VmRunOptions = {}): Promise<number> {
    if (!this.vm) throw new ConfigError(`VM sandbox ${this.name} is not running`);
    if (command.length === 0) throw new ConfigError("no command to run", "give it after --, e.g. moat run --vm -- uname -a");
    const env = this.commandEnv(o.env ?? {}, { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", HOME: "/root" });
    // (one command at a time: a signal reaches this one)
    const hungUp = hangUpOnAbort(o.signal, (signo) => this.vm?.signal(signo));
    try {
      return await this.vm.exec(command, { env, cwd: o.cwd, stdin: o.stdin ?? null, stdout: o.stdout ?? process.stdout, stderr: o.stderr ?? process.stderr });
    } finally {
      hungUp();
    }
  }

  /** Deliver a signal to the running command. */
  signal(signo: number): void {
    this.vm?.signal(signo);
  }

  /** Kill QEMU at once. */
  private killGuest(): void {
    if (this.vm && !this.vmExited) try { process.kill(this.vm.pid, "SIGKILL"); } catch { /* gone */ }
  }

  /** QEMU is killed: the guest has nothing to save (its filesystem is the initramfs), so a power-off would only wait. */
  protected async stopGuest(): Promise<void> {
    await this.vm?.kill();
  }

  /** @internal Kill QEMU (from the exit hook: no time for a power-off) and remove the run directory. */
  protected removeGuest(): void {
    this.killGuest();
    // QEMU, killed a moment ago, may still create a file in its directory (a boot interrupted at
    // once): a removal that finds the directory not empty tries again.
    rmSync(this.runDir, { recursive: true, force: true, maxRetries: 10, retryDelay: 20 });
  }
}
