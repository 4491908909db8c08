// qemu.ts — one QEMU microVM running moat's guest image (image.ts): boot, run commands through the
// exec agent, power off. The network link is the caller's business: it passes QEMU arguments for
// a NIC (or none).
//
// Theory of operation
//   start    A temporary directory holds the exec socket. We listen on the
//            unix socket and QEMU connects to it (`-chardev socket,server=off`) while it starts,
//            before the guest runs, so nothing the agent writes can be lost. Guest RAM is a
//            shared memfd (`memory-backend-memfd,share=on`): a vhost-user backend must map it.
//            The serial console (on QEMU's stdout) and QEMU's own stderr are read into memory, their
//            last TAIL_BYTES kept; both tails are quoted when the VM fails.
//   ready    The agent's READY frame resolves `ready` (bootMs: from spawning QEMU to READY). No
//            READY within readyTimeoutMs, or QEMU gone first, rejects it with the console tail,
//            and QEMU is killed.
//   exec     One command at a time over exec-protocol.ts: stdin is streamed in STDIN frames (with
//            back-pressure), STDOUT/STDERR frames are written to the caller's streams, EXIT
//            resolves the status (128+N for signal N). Several commands may run one after another.
//   end      shutdown() asks the agent to power off (QEMU exits: -no-reboot), kill() kills QEMU;
//            either way, and if QEMU dies on its own or this process exits, the temporary
//            directory is removed and `exited` resolves. Nothing outlives the VM.
//   accel    "auto" takes KVM only where /dev/kvm opens and a probe boot on it reached READY
//            (some hosts expose a KVM that hangs a stock kernel); the probe result is remembered in
//            the cache per kernel version, host kernel and whether the host is itself a VM.
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, constants, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { release, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import type { Readable, Writable } from "node:stream";
import { HostRequirementError } from "../errors.js";
import { findInPath } from "../sandbox/host-checks.js";
import { diesWithMoat, registeredDir, registeredTempDir } from "../sandbox/guard.js";
import { Msg, FrameDecoder, frame, execFrame, u32Frame, STDIN_CHUNK_BYTES } from "./exec-protocol.js";
import { vmCacheDir, type VmImage } from "./image.js";
import { VmError } from "./vm-error.js";

export type VmAccel = "kvm" | "tcg";

export interface StartVmOptions {
  image: VmImage;
  /** Guest RAM (default 256), a shared memfd. */
  memoryMiB?: number;
  /** vCPUs (default 1). */
  cpus?: number;
  /**
   * QEMU arguments for the guest's NIC, e.g. ["-netdev", "stream,id=n0,server=off,addr.type=unix,addr.path=/x",
   * "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56"]; null for no NIC. The guest configures
   * its eth0 by DHCP.
   */
  netdev: string[] | null;
  /** "auto" (default): KVM where it boots this guest (probed once, cached), else TCG. */
  accel?: VmAccel | "auto";
  /** Give up on a guest that sent no READY by then (default 30000 under TCG, 10000 under KVM). */
  readyTimeoutMs?: number;
  /** Appended to the image's kernel command line (e.g. "loglevel=7" while debugging). */
  extraKernelArgs?: string;
  /** Machine type (default "q35"; "pc" works too). */
  machine?: "q35" | "pc";
  /** The QEMU binary (default qemu-system-x86_64 from PATH). */
  qemu?: string;
  /** Where the KVM probe result is remembered (default vmCacheDir()). */
  cacheDir?: string;
  /** A directory to create for QEMU's files (removed when QEMU exits); default: a new one in the temporary directory. */
  dir?: string;
}

export interface VmExecOptions {
  /** The command's whole environment (default: PATH and HOME); PATH is added when missing. */
  env?: Record<string, string>;
  /** Working directory in the guest (default /). */
  cwd?: string;
  /** Streamed to the command's stdin, then EOF; null or absent: stdin is empty. */
  stdin?: Readable | null;
  stdout: Writable;
  stderr: Writable;
}

export interface VmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface Vm {
  /** The accelerator QEMU runs with. */
  readonly accel: VmAccel;
  /** QEMU's process id. */
  readonly pid: number;
  /** The temporary directory with the exec socket; removed when QEMU exits. */
  readonly runDir: string;
  /** Resolves when the agent is up (bootMs: QEMU spawn to READY; guestUptimeMs: the guest's clock then). */
  readonly ready: Promise<{ bootMs: number; guestUptimeMs: number }>;
  /** Resolves once QEMU exited and its temporary files are gone. Never rejects. */
  readonly exited: Promise<VmExit>;
  /** Runs argv in the guest (after `ready`), one command at a time; resolves with its exit status. */
  exec(argv: string[], opts: VmExecOptions): Promise<number>;
  /** Delivers a signal to the running command's process group (no-op when none runs). */
  signal(signo: number): void;
  /** Asks the guest to power off; kills QEMU if it has not exited within timeoutMs (default 5000). */
  shutdown(timeoutMs?: number): Promise<VmExit>;
  /** Kills QEMU. */
  kill(): Promise<VmExit>;
  /** The last lines of the serial console (and of QEMU's stderr). */
  consoleTail(lines?: number): string;
}

const GUEST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin";
const TAIL_BYTES = 16 << 10;

/** Starts QEMU on `image`; await `vm.ready` before the first exec (exec waits for it too). */
/** A value inside a QEMU option list: a comma in it (a path under a TMPDIR with one) is doubled, or it would start another option. */
export function qemuValue(v: string): string {
  return v.replace(/,/g, ",,");
}

export async function startVm(opts: StartVmOptions): Promise<Vm> {
  const qemu = opts.qemu ?? findInPath("qemu-system-x86_64");
  if (!qemu) {
    throw new HostRequirementError("ERR_MISSING_TOOL", "qemu-system-x86_64 was not found (VM sandboxes run in QEMU)",
      "install it: `apt-get install qemu-system-x86`");
  }
  let accel: VmAccel;
  if (opts.accel === "kvm" || opts.accel === "tcg") accel = opts.accel;
  else accel = await kvmBoots(qemu, opts) ? "kvm" : "tcg";
  return QemuVm.start(qemu, accel, opts);
}

class QemuVm implements Vm {
  readonly ready: Promise<{ bootMs: number; guestUptimeMs: number }>;
  readonly exited: Promise<VmExit>;
  private readonly decoder = new FrameDecoder();
  private paused = false; // the exec connection is paused for an output stream that is full
  private conn: Socket | undefined;
  private running: { stdout: Writable; stderr: Writable; done: (status: number) => void; fail: (err: Error) => void } | undefined;
  private exitInfo: VmExit | undefined;
  private stderrTail = "";
  private consoleText = "";
  private readyState: "booting" | "ready" | "failed" = "booting";
  private resolveReady!: (r: { bootMs: number; guestUptimeMs: number }) => void;
  private rejectReady!: (err: Error) => void;
  private cleanedUp = false;

  static async start(qemu: string, accel: VmAccel, opts: StartVmOptions): Promise<QemuVm> {
    // Registered with the janitor (removed if this process ends before cleanupSync) before it exists.
    const { path: dir, unregister } = opts.dir ? { path: opts.dir, unregister: registeredDir(opts.dir) } : registeredTempDir(join(tmpdir(), "moat-vm-"));
    const server = createServer();
    try {
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(join(dir, "exec.sock"), () => resolve());
      });
    } catch (err) {
      rmSync(dir, { recursive: true, force: true });
      unregister();
      throw new VmError(`cannot listen on ${join(dir, "exec.sock")}: ${(err as Error).message}`);
    }
    // QEMU dies with moat (PR_SET_PDEATHSIG, through moat-helper), whatever ends moat.
    const [file, ...args] = diesWithMoat([qemu, ...qemuArgs(qemu, accel, opts, dir)]);
    const child = spawn(file!, args, { stdio: ["ignore", "pipe", "pipe"] });
    return new QemuVm(child, accel, dir, server, opts.readyTimeoutMs ?? (accel === "kvm" ? 10_000 : 30_000), unregister);
  }

  private constructor(private readonly child: ChildProcess, readonly accel: VmAccel, readonly runDir: string,
    private readonly server: Server, readyTimeoutMs: number, private readonly unregisterDir: () => void) {
    const started = Date.now();
    liveVms.add(this);
    if (liveVms.size === 1) process.on("exit", cleanupLiveVms);
    this.ready = new Promise((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    this.ready.catch(() => {}); // a caller who never awaits it must not crash the process
    const timer = setTimeout(() => {
      this.failBoot(`the guest sent no READY within ${readyTimeoutMs} ms (accel ${accel})`);
      this.child.kill("SIGKILL");
    }, readyTimeoutMs);
    this.ready.then(() => clearTimeout(timer), () => clearTimeout(timer));

    child.stderr!.setEncoding("utf8").on("data", (s: string) => {
      this.stderrTail = (this.stderrTail + s).slice(-TAIL_BYTES);
    });
    // The serial console comes on QEMU's stdout and only its tail is kept: a guest writing to its
    // console without end costs nothing but this read (a console file would fill the disk).
    child.stdout!.setEncoding("utf8").on("data", (s: string) => {
      this.consoleText = (this.consoleText + s).slice(-TAIL_BYTES);
    });
    server.on("connection", (conn) => {
      if (this.conn) {
        conn.destroy();
        return;
      }
      this.conn = conn;
      conn.on("data", (data) => this.onData(data, started));
      conn.on("error", () => {}); // QEMU going away: handled on its exit
    });
    this.exited = new Promise((resolve) => {
      child.once("error", (err) => {
        this.failBoot(`cannot run QEMU: ${err.message}`);
      });
      child.once("close", (code, signal) => {
        this.exitInfo = { code, signal };
        this.failBoot(`QEMU exited (${signal ?? `code ${code}`}) before the guest was ready`);
        this.running?.fail(new VmError(`the VM exited (${signal ?? `code ${code}`}) while a command was running\n${this.consoleTail()}`));
        this.running = undefined;
        this.cleanupSync();
        resolve(this.exitInfo);
      });
    });
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  async exec(argv: string[], opts: VmExecOptions): Promise<number> {
    if (argv.length === 0) throw new TypeError("exec needs a command");
    await this.ready;
    if (this.running) throw new VmError("a command is already running in this VM (one at a time)");
    if (this.exitInfo || !this.conn) throw new VmError("the VM is not running");
    const env = { PATH: GUEST_PATH, ...(opts.env ?? { HOME: "/root" }) };
    const conn = this.conn;
    conn.write(execFrame(argv, Object.entries(env).map(([k, v]) => `${k}=${v}`), opts.cwd ?? ""));
    const stdin = opts.stdin;
    const onStdin = (chunk: Buffer | string): void => {
      const data = typeof chunk === "string" ? Buffer.from(chunk) : chunk;
      let ok = true;
      for (let at = 0; at < data.length; at += STDIN_CHUNK_BYTES) ok = conn.write(frame(Msg.STDIN, data.subarray(at, at + STDIN_CHUNK_BYTES)));
      if (!ok) {
        stdin!.pause();
        conn.once("drain", () => stdin!.resume());
      }
    };
    const onStdinEnd = (): void => {
      conn.write(frame(Msg.STDIN_EOF));
    };
    if (stdin) {
      stdin.on("data", onStdin);
      stdin.once("end", onStdinEnd);
      stdin.once("error", onStdinEnd);
    } else {
      onStdinEnd();
    }
    try {
      return await new Promise<number>((done, fail) => {
        this.running = { stdout: opts.stdout, stderr: opts.stderr, done, fail };
      });
    } finally {
      this.running = undefined;
      if (stdin) {
        stdin.off("data", onStdin);
        stdin.off("end", onStdinEnd);
        stdin.off("error", onStdinEnd);
      }
    }
  }

  signal(signo: number): void {
    if (this.running && this.conn) this.conn.write(u32Frame(Msg.SIGNAL, signo));
  }

  async shutdown(timeoutMs = 5000): Promise<VmExit> {
    if (this.exitInfo) return this.exitInfo;
    if (this.conn && this.readyState === "ready") this.conn.write(frame(Msg.POWEROFF));
    else this.child.kill("SIGKILL");
    const timer = setTimeout(() => this.child.kill("SIGKILL"), timeoutMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }

  async kill(): Promise<VmExit> {
    if (!this.exitInfo) this.child.kill("SIGKILL");
    return this.exited;
  }

  consoleTail(lines = 30): string {
    const console = this.consoleText;
    const parts = [console && `console:\n${lastLines(console, lines)}`, this.stderrTail.trim() && `QEMU:\n${lastLines(this.stderrTail, lines)}`];
    return parts.filter(Boolean).join("\n") || "(no console output)";
  }

  private onData(data: Buffer, started: number): void {
    let frames;
    try {
      frames = this.decoder.push(data);
    } catch (err) {
      this.failBoot(`the guest agent broke the exec protocol: ${(err as Error).message}`);
      this.running?.fail(new VmError(`the guest agent broke the exec protocol: ${(err as Error).message}`));
      this.child.kill("SIGKILL");
      return;
    }
    for (const { type, payload } of frames) {
      if (type === Msg.READY && this.readyState === "booting") {
        this.readyState = "ready";
        this.resolveReady({ bootMs: Date.now() - started, guestUptimeMs: Number(payload.toString()) });
      } else if (type === Msg.STDOUT || type === Msg.STDERR) {
        const out = type === Msg.STDOUT ? this.running?.stdout : this.running?.stderr;
        if (out && !out.destroyed && !out.write(payload) && !this.paused) {
          // Back-pressure through QEMU to the agent: paused once, resumed when the stream drains
          // or goes away (a destroyed stream never drains; its output is dropped from then on).
          this.paused = true;
          this.conn!.pause();
          const resume = () => {
            out.off("drain", resume).off("close", resume).off("error", resume);
            this.paused = false;
            this.conn?.resume();
          };
          out.on("drain", resume).on("close", resume).on("error", resume);
        }
      } else if (type === Msg.EXIT && payload.length >= 4) {
        this.running?.done(payload.readUInt32BE(0));
      }
    }
  }

  private failBoot(reason: string): void {
    if (this.readyState !== "booting") return;
    this.readyState = "failed";
    this.rejectReady(new VmError(`${reason}\n${this.consoleTail()}`,
      "boot it by hand to see more: extraKernelArgs \"loglevel=7\" shows the kernel's messages on the console"));
  }

  /** Kills QEMU if it still runs and removes the temporary directory (also from process exit). */
  cleanupSync(): void {
    if (this.cleanedUp) return;
    this.cleanedUp = true;
    liveVms.delete(this);
    if (liveVms.size === 0) process.off("exit", cleanupLiveVms);
    if (!this.exitInfo) this.child.kill("SIGKILL");
    this.conn?.destroy();
    this.server.close();
    rmSync(this.runDir, { recursive: true, force: true });
    this.unregisterDir();
  }
}

/** VMs whose QEMU may still run: killed, and their files removed, if this process exits first. */
const liveVms = new Set<QemuVm>();

function cleanupLiveVms(): void {
  for (const vm of liveVms) vm.cleanupSync();
}

/**
 * The QEMU command line. Measured under TCG (QEMU CPU time to READY, interleaved runs): q35 boots
 * ~0.4 s faster than pc; the CPU model "max" costs ~0.5 s over qemu64, so TCG gets qemu64 with
 * the x86-64-v2 features (programs built for v2 still run); the qboot firmware, when QEMU ships
 * it, saves ~0.1 s over SeaBIOS (it also skips option ROMs). PVH boot of the ELF kernel saves
 * ~0.5 s over the bzImage (image.ts).
 */
function qemuArgs(qemu: string, accel: VmAccel, opts: StartVmOptions, dir: string): string[] {
  const mem = opts.memoryMiB ?? 256;
  const { image } = opts;
  const qboot = join(dirname(qemu), "..", "share", "qemu", "qboot.rom");
  return [
    "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
    "-machine", `${opts.machine ?? "q35"},accel=${accel},memory-backend=mem`,
    "-object", `memory-backend-memfd,id=mem,size=${mem}M,share=on`,
    "-m", `${mem}M`, "-smp", String(opts.cpus ?? 1),
    "-cpu", accel === "kvm" ? "host" : "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16",
    ...(existsSync(qboot) ? ["-bios", qboot] : []),
    "-kernel", image.kernel, "-initrd", image.initrd,
    "-append", [image.cmdline, opts.extraKernelArgs].filter(Boolean).join(" "),
    "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
    "-device", "virtio-serial-pci,id=vs",
    "-chardev", `socket,id=exec,path=${qemuValue(join(dir, "exec.sock"))},server=off`,
    "-device", "virtserialport,bus=vs.0,chardev=exec,name=moat.exec",
    ...(opts.netdev ?? ["-nic", "none"]),
  ];
}

// ---- KVM probe ----------------------------------------------------------------------------------

const KVM_PROBE_TIMEOUT_MS = 4000;

/** Whether a guest boots under KVM here: /dev/kvm opens and a probe boot (once, cached) got READY. */
async function kvmBoots(qemu: string, opts: StartVmOptions): Promise<boolean> {
  try {
    closeSync(openSync("/dev/kvm", constants.O_RDWR));
  } catch {
    return false;
  }
  const cache = opts.cacheDir ?? vmCacheDir();
  const inVm = /\bhypervisor\b/.test(readFileSync("/proc/cpuinfo", "utf8"));
  const key = `${opts.image.kernelVersion} ${release()} ${inVm ? "nested" : "bare"}`;
  const memo = join(cache, "kvm-probe.json");
  let known: Record<string, boolean> = {};
  try {
    known = JSON.parse(readFileSync(memo, "utf8"));
  } catch {
    // not probed yet
  }
  if (key in known) return known[key]!;
  let boots = false;
  const vm = await QemuVm.start(qemu, "kvm", { ...opts, netdev: null, readyTimeoutMs: KVM_PROBE_TIMEOUT_MS });
  try {
    await vm.ready;
    boots = true;
  } catch {
    // hangs or fails on this KVM: TCG it is
  }
  await vm.kill();
  mkdirSync(cache, { recursive: true });
  writeFileSync(memo, JSON.stringify({ ...known, [key]: boots }));
  return boots;
}

// ---- console tail -------------------------------------------------------------------------------

function lastLines(text: string, n: number): string {
  return text.replace(/\r/g, "").trimEnd().split("\n").slice(-n).map((l) => "  " + l).join("\n");
}
