// image.ts — the kernel and initramfs a VM sandbox boots, built from distribution packages and
// cached (DESIGN §9).
//
// Theory of operation
//   kernel   Debian's cloud kernel (virtio as modules, no hardware zoo). If the host has one
//            installed (/boot/vmlinuz-*-cloud-amd64 + /lib/modules/VERSION) that is used;
//            otherwise the versioned package the metapackage linux-image-cloud-amd64 depends on
//            is fetched with `apt-get download` and unpacked with `dpkg-deb -x` into
//            CACHE/kernels/VERSION (never installed on the host). Which version that is, is
//            asked of apt-cache at most once a day (apt-cache takes ~1 s here).
//            When the bzImage's payload can be decompressed to an ELF vmlinux with a PVH entry
//            note (vmlinux.ts), the image boots that: the guest skips decompressing itself.
//   initrd   an uncompressed newc cpio written here (cpio.ts; uncompressed boots ~0.1 s faster
//            under TCG than gzip): the agent compiled from native-vmm/guest/agent.c with the
//            host's `cc -static`, which is also /init; busybox (static, from the host's
//            busybox-static package) with its applet links; the DHCP script from
//            native-vmm/guest/; and the kernel modules for virtio-pci, virtio-net and
//            virtio-console, dependencies first (read from each module's modinfo), decompressed,
//            listed in /etc/moat/modules for the agent to load. Extra host programs when asked
//            (extraBinaries, e.g. iperf3 for bench/vm.ts): each at /usr/bin/NAME (it shadows a
//            busybox applet of that name), with the ELF interpreter and the shared libraries
//            `ldd` resolves for it at their host paths (the guest's loader finds them in its
//            default directories: there is no ld.so.cache).
//   cache    CACHE = $MOAT_CACHE_DIR | $XDG_CACHE_HOME/moat | ~/.cache/moat, then vm/. An image
//            lives in CACHE/vm/images/KVER-KEY, KEY a hash of everything that goes into it (kernel
//            version and size, the guest sources, busybox, the module list, the command line,
//            IMAGE_BUILDER_VERSION; the extra programs and libraries, path and content, only
//            when there are any, so the default image keeps its key). Every build goes to a
//            fresh temporary directory that is renamed into place, so concurrent builds cannot
//            corrupt the cache (the loser of the rename uses the winner's). Images unused for a
//            week are removed.
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { createHash } from "node:crypto";
import { accessSync, constants, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gunzipSync } from "node:zlib";
import { HostRequirementError } from "../errors.js";
import { findInPath } from "../sandbox/host-checks.js";
import { diesWithMoat, registeredTempDir } from "../sandbox/guard.js";
import { CpioWriter } from "./cpio.js";
import { elfProgramHeaders, extractVmlinux } from "./vmlinux.js";
import { VmError } from "./vm-error.js";

const execFileP = promisify(execFile);
/**
 * A build step that dies with moat, with everything it started: it runs in a PID namespace of its
 * own under moat-helper's init, which dies with moat and takes the namespace with it. (A step's
 * own children outlive it otherwise: PR_SET_PDEATHSIG is not inherited, and cc's collect2 and ld
 * went on writing into the build's temporary directory after an interrupt had removed it.)
 */
const run = ((file: string, args: string[], opts?: object) => {
  const [helper, ...rest] = diesWithMoat([file, ...args], { pidns: true });
  return execFileP(helper!, rest, opts);
}) as typeof execFileP;

/** A temporary directory the janitor removes if this process ends before `remove` (guard.ts). */
function tempDir(parent: string): { path: string; remove: () => void } {
  const { path, unregister } = registeredTempDir(join(parent, ".tmp-"));
  return { path, remove: () => { rmSync(path, { recursive: true, force: true }); unregister(); } };
}

/** Bump when the image layout changes in a way the other key inputs do not show. */
export const IMAGE_BUILDER_VERSION = 3;

/** The modules the guest needs (their dependencies are added): PCI transport, NIC, exec port. */
export const GUEST_MODULES = ["virtio_pci", "virtio_net", "virtio_console"];

/**
 * The kernel command line. Measured under TCG (QEMU CPU time to READY, interleaved runs):
 * cryptomgr.notests saves ~0.5 s (the crypto self-tests at algorithm registration); quiet keeps
 * the emulated serial port out of the way (warnings and errors still print); panic=-1 turns a
 * panic into a reboot, which ends QEMU (-no-reboot). Options that measured no gain here were left
 * out: tsc=reliable, no_timer_check, i8042.*, pci=lastbus=0, random.trust_cpu=on, nowatchdog,
 * audit=0, mitigations=off, rodata=off (~0.05 s, not worth the guest kernel's W^X). acpi=off
 * saves ~0.7 s but leaves PCI without MSI-X (virtio falls back to INTx, with a warning).
 */
export const KERNEL_CMDLINE = "console=ttyS0 quiet panic=-1 cryptomgr.notests";

const KERNEL_METAPACKAGE = "linux-image-cloud-amd64";
const RESOLVE_EVERY_MS = 24 * 3600_000;
const UNUSED_IMAGE_MS = 7 * 24 * 3600_000;

export interface VmImage {
  /** The kernel QEMU boots: an ELF vmlinux (PVH entry) or the bzImage. */
  kernel: string;
  kernelFormat: "vmlinux-pvh" | "bzImage";
  /** The initramfs (uncompressed newc cpio). */
  initrd: string;
  /** e.g. "6.1.0-57-cloud-amd64". */
  kernelVersion: string;
  /** The kernel command line to boot it with. */
  cmdline: string;
}

export interface VmImageOptions {
  /** Progress of slow steps (download, compile, build), one line each (default: stderr). */
  onProgress?: (line: string) => void;
  /** Cache directory (default: vmCacheDir()). */
  cacheDir?: string;
  /**
   * Host programs to add (names looked up in PATH, or paths), at /usr/bin/NAME, with their ELF
   * interpreter and shared libraries. Default: $MOAT_VM_EXTRA_BINARIES (colon-separated), which
   * is how callers that go through VmSandbox or `moat run --vm` get them; else none.
   */
  extraBinaries?: string[];
}

/** CACHE/vm: $MOAT_CACHE_DIR, else $XDG_CACHE_HOME/moat, else ~/.cache/moat. */
export function vmCacheDir(): string {
  const env = process.env;
  const root = env.MOAT_CACHE_DIR || join(env.XDG_CACHE_HOME || join(homedir(), ".cache"), "moat");
  return join(root, "vm");
}

/** Builds under way in this process, by cache directory: concurrent callers share one. */
const pending = new Map<string, Promise<VmImage>>();

/** The guest's kernel and initramfs, built on first use and cached. */
export function ensureVmImage(opts: VmImageOptions = {}): Promise<VmImage> {
  const cache = opts.cacheDir ?? vmCacheDir();
  const extras = opts.extraBinaries ?? (process.env.MOAT_VM_EXTRA_BINARIES ?? "").split(":").filter(Boolean);
  const id = JSON.stringify([cache, extras]);
  let p = pending.get(id);
  if (!p) {
    p = buildOrReuse(cache, extras, opts.onProgress ?? ((line: string) => process.stderr.write(`moat: ${line}\n`)));
    pending.set(id, p);
    void p.then(() => pending.delete(id), () => pending.delete(id));
  }
  return p;
}

async function buildOrReuse(cache: string, extraBinaries: string[], progress: (line: string) => void): Promise<VmImage> {
  mkdirSync(join(cache, "images"), { recursive: true });
  const kernel = findHostKernel() ?? await downloadedKernel(cache, progress);
  const guest = guestSources();
  const busybox = findBusybox();
  const extras = await resolveExtraBinaries(extraBinaries);
  const key = hash(JSON.stringify({
    builder: IMAGE_BUILDER_VERSION, kernel: kernel.version, vmlinuzBytes: statSync(kernel.vmlinuz).size,
    guest: Object.fromEntries(Object.entries(guest).map(([k, v]) => [k, hash(readFileSync(v))])),
    busybox: hash(readFileSync(busybox)), modules: GUEST_MODULES, cmdline: KERNEL_CMDLINE,
    ...(extras.length ? { extra: extras.map((f) => [f.path, hash(f.data)]) } : {}),
  })).slice(0, 16);
  const dir = join(cache, "images", `${kernel.version}-${key}`);
  if (!existsSync(join(dir, "image.json"))) {
    const tmp = tempDir(join(cache, "images"));
    try {
      await buildImage(tmp.path, kernel, guest, busybox, extras, progress);
      publish(tmp.path, dir);
    } finally {
      tmp.remove();
    }
    pruneUnused(join(cache, "images"), dir);
  }
  const now = new Date();
  utimesSync(dir, now, now);
  const built = JSON.parse(readFileSync(join(dir, "image.json"), "utf8")) as Omit<VmImage, "kernel" | "initrd">;
  return { ...built, kernel: join(dir, "kernel"), initrd: join(dir, "initrd") };
}

// ---- the kernel ---------------------------------------------------------------------------------

interface KernelSource { version: string; vmlinuz: string; modulesDir: string }

function findHostKernel(): KernelSource | undefined {
  let names: string[];
  try {
    names = readdirSync("/boot");
  } catch {
    return undefined;
  }
  const versions = names.map((n) => /^vmlinuz-(.+-cloud-amd64)$/.exec(n)?.[1]).filter((v): v is string => !!v)
    .filter((v) => existsSync(`/lib/modules/${v}/kernel`) && readable(`/boot/vmlinuz-${v}`))
    .sort((a, b) => b.localeCompare(a, undefined, { numeric: true }));
  const v = versions[0];
  return v ? { version: v, vmlinuz: `/boot/vmlinuz-${v}`, modulesDir: `/lib/modules/${v}` } : undefined;
}

function readable(path: string): boolean {
  try {
    accessSync(path, constants.R_OK);
    return true;
  } catch {
    return false; // e.g. a distribution that keeps /boot/vmlinuz-* root-only
  }
}

function kernelFrom(dir: string, version: string): KernelSource {
  return { version, vmlinuz: join(dir, "boot", `vmlinuz-${version}`), modulesDir: join(dir, "lib", "modules", version) };
}

/** The current Debian cloud kernel, unpacked into CACHE/kernels/VERSION (downloaded if missing). */
async function downloadedKernel(cache: string, progress: (line: string) => void): Promise<KernelSource> {
  const pkg = await currentKernelPackage(cache);
  const version = pkg.replace(/^linux-image-/, "");
  const kernels = join(cache, "kernels");
  const dir = join(kernels, version);
  if (existsSync(kernelFrom(dir, version).vmlinuz)) return kernelFrom(dir, version);
  for (const tool of ["apt-get", "dpkg-deb"]) {
    if (!findInPath(tool)) {
      throw new HostRequirementError("ERR_MISSING_TOOL", `building the VM kernel needs ${tool} (to fetch ${pkg}), which was not found`,
        "run on Debian/Ubuntu, or install linux-image-cloud-amd64 on the host");
    }
  }
  mkdirSync(kernels, { recursive: true });
  const t = tempDir(kernels);
  const tmp = t.path;
  try {
    progress(`downloading the VM kernel (${pkg}, about 27 MB) with apt-get download`);
    await run("apt-get", ["download", pkg], { cwd: tmp }).catch((err) => {
      throw new VmError(`apt-get download ${pkg} failed: ${stderrOf(err)}`, "check that Debian's package archive is reachable (`apt-get update`)", { cause: err });
    });
    const deb = readdirSync(tmp).find((f) => f.endsWith(".deb"));
    if (!deb) throw new VmError(`apt-get download ${pkg} left no .deb behind`);
    progress(`unpacking ${deb}`);
    await run("dpkg-deb", ["-x", join(tmp, deb), join(tmp, "root")]);
    if (!existsSync(kernelFrom(join(tmp, "root"), version).vmlinuz)) throw new VmError(`${deb} has no boot/vmlinuz-${version}`);
    publish(join(tmp, "root"), dir);
  } finally {
    t.remove();
  }
  return kernelFrom(dir, version);
}

/** "linux-image-VERSION-cloud-amd64", asked of apt-cache at most daily, remembered in the cache. */
async function currentKernelPackage(cache: string): Promise<string> {
  const memo = join(cache, "kernel-package.json");
  let known: { package: string; checkedAt: number } | undefined;
  try {
    known = JSON.parse(readFileSync(memo, "utf8"));
  } catch {
    // not asked yet
  }
  if (known && Date.now() - known.checkedAt < RESOLVE_EVERY_MS) return known.package;
  let out = "";
  try {
    out = (await run("apt-cache", ["depends", KERNEL_METAPACKAGE])).stdout;
  } catch (err) {
    if (known) return known.package; // offline or no apt: keep using the kernel we have
    throw new HostRequirementError("ERR_MISSING_TOOL", `cannot find the Debian cloud kernel: apt-cache depends ${KERNEL_METAPACKAGE} failed (${stderrOf(err)})`,
      "on Debian/Ubuntu run `apt-get update`; elsewhere install a linux-image-*-cloud-amd64 kernel on the host");
  }
  const pkg = /Depends:\s*(linux-image-[0-9][^\s]*-cloud-amd64)/.exec(out)?.[1];
  if (!pkg) {
    if (known) return known.package;
    throw new HostRequirementError("ERR_MISSING_TOOL", `apt knows no ${KERNEL_METAPACKAGE} (apt-cache depends printed nothing useful)`,
      "run `apt-get update` (Debian's main archive has the package)");
  }
  writeFileSync(memo, JSON.stringify({ package: pkg, checkedAt: Date.now() }));
  return pkg;
}

// ---- the initramfs ------------------------------------------------------------------------------

/** The guest's sources in native-vmm/guest/ (found from this module, in src/ or in dist/). */
function guestSources(): { agent: string; udhcpc: string } {
  for (let dir = dirname(fileURLToPath(import.meta.url)); dir !== dirname(dir); dir = dirname(dir)) {
    const guest = join(dir, "native-vmm", "guest");
    if (existsSync(join(guest, "agent.c"))) return { agent: join(guest, "agent.c"), udhcpc: join(guest, "udhcpc.sh") };
  }
  throw new VmError("native-vmm/guest/agent.c was not found above " + fileURLToPath(import.meta.url), "moat's package is incomplete: reinstall it");
}

function findBusybox(): string {
  const path = existsSync("/bin/busybox") ? "/bin/busybox" : findInPath("busybox");
  const interp = path && [...elfProgramHeaders(readFileSync(path))].some((ph) => ph.type === 3 /* PT_INTERP */);
  if (!path || interp) {
    throw new HostRequirementError("ERR_MISSING_TOOL", path ? `${path} is dynamically linked; the VM's initramfs needs a static busybox` : "busybox was not found (the VM's initramfs is built from it)",
      "install it: `apt-get install busybox-static`");
  }
  return path;
}

/** A file the image gets from the host: its path in the guest (no leading slash), its bytes. */
interface ExtraFile { path: string; data: Buffer }

/**
 * The programs, at usr/bin/NAME, then the ELF interpreter and shared libraries they need, each
 * once, at the host path `ldd` resolved it to (a static program needs none).
 */
async function resolveExtraBinaries(names: string[]): Promise<ExtraFile[]> {
  const programs: ExtraFile[] = [];
  const libs = new Map<string, ExtraFile>();
  for (const name of names) {
    const path = name.includes("/") ? name : findInPath(name);
    if (!path || !existsSync(path)) {
      throw new HostRequirementError("ERR_MISSING_TOOL", `${name}, asked for in the VM image, was not found${name.includes("/") ? "" : " in PATH"}`, `install it on the host, or leave it out`);
    }
    const data = readFileSync(path);
    programs.push({ path: `usr/bin/${basename(path)}`, data });
    if (![...elfProgramHeaders(data)].some((ph) => ph.type === 3 /* PT_INTERP */)) continue; // static, or a script
    let listing: string;
    try {
      listing = (await run("ldd", [path])).stdout;
    } catch (err) {
      throw new HostRequirementError("ERR_MISSING_TOOL", `ldd ${path} failed: ${stderrOf(err)}`, "install ldd (Debian: libc-bin)");
    }
    for (const line of listing.split("\n")) {
      // "libx.so.1 => /lib/.../libx.so.1 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)", "linux-vdso.so.1 (0x...)"
      if (/=>\s*not found/.test(line)) throw new VmError(`${path} needs ${line.trim().split(" ")[0]}, which the host's loader does not find`);
      const lib = /(?:=>\s*|^\s*)(\/\S+)\s+\(0x/.exec(line)?.[1];
      if (lib && !libs.has(lib)) libs.set(lib, { path: lib.slice(1), data: readFileSync(lib) });
    }
  }
  return [...programs, ...libs.values()];
}

async function buildImage(out: string, kernel: KernelSource, guest: ReturnType<typeof guestSources>, busybox: string, extras: ExtraFile[],
  progress: (line: string) => void): Promise<void> {
  progress(`building the VM image for kernel ${kernel.version}`);
  const agent = await compileAgent(guest.agent, out);
  const modules = await resolveModules(kernel.modulesDir, GUEST_MODULES);

  const cpio = new CpioWriter();
  const dirs = ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run", "root", "var", "etc", "etc/moat", "lib", "lib/modules"];
  for (const d of dirs) cpio.dir(d, d === "tmp" ? 0o1777 : 0o755);
  // The extra files' directories, parents first (a parent sorts before its children).
  const extraDirs = new Set<string>();
  for (const f of extras) for (let d = dirname(f.path); d !== "."; d = dirname(d)) if (!dirs.includes(d)) extraDirs.add(d);
  for (const d of [...extraDirs].sort()) cpio.dir(d);
  cpio.charDevice("dev/console", 5, 1); // the kernel opens it for init's stdio before devtmpfs is mounted
  cpio.file("sbin/moat-agent", agent, 0o755);
  cpio.symlink("init", "/sbin/moat-agent"); // the agent sets the guest up as PID 1
  cpio.file("etc/moat/udhcpc.sh", readFileSync(guest.udhcpc), 0o755);
  cpio.file("etc/moat/modules", Buffer.from(modules.map((m) => m.name + "\n").join("")));
  for (const m of modules) cpio.file(`lib/modules/${m.name}.ko`, m.data);
  cpio.file("etc/passwd", Buffer.from("root:x:0:0:root:/root:/bin/sh\n"));
  cpio.file("etc/group", Buffer.from("root:x:0:\n"));
  cpio.file("etc/resolv.conf", Buffer.alloc(0));
  cpio.file("bin/busybox", readFileSync(busybox), 0o755);
  // No modprobe: the image has no modules.dep, and the kernel's request_module() would spawn it
  // in vain during boot (the agent loads the modules the guest needs itself).
  const shadowed = new Set(extras.filter((f) => f.path.startsWith("usr/bin/")).map((f) => basename(f.path)));
  const applets = (await run(busybox, ["--list-full"])).stdout.split("\n").filter((a) => a && a !== "bin/busybox" && a !== "sbin/modprobe" && !shadowed.has(basename(a)));
  for (const a of applets) cpio.symlink(a, "/bin/busybox");
  for (const f of extras) cpio.file(f.path, f.data, 0o755);
  writeFileSync(join(out, "initrd"), cpio.finish());

  const bzImage = readFileSync(kernel.vmlinuz);
  const extracted = extractVmlinux(bzImage);
  const kernelFormat = "vmlinux" in extracted ? "vmlinux-pvh" : "bzImage";
  if (!("vmlinux" in extracted)) progress(`booting the compressed kernel: ${extracted.reason}`);
  writeFileSync(join(out, "kernel"), "vmlinux" in extracted ? extracted.vmlinux : bzImage);

  const image: Omit<VmImage, "kernel" | "initrd"> = { kernelFormat, kernelVersion: kernel.version, cmdline: KERNEL_CMDLINE };
  writeFileSync(join(out, "image.json"), JSON.stringify(image));
}

async function compileAgent(source: string, out: string): Promise<Buffer> {
  const cc = findInPath("cc") ?? findInPath("gcc");
  if (!cc) {
    throw new HostRequirementError("ERR_MISSING_TOOL", "no C compiler (cc) was found: the VM's exec agent is compiled from native-vmm/guest/agent.c",
      "install one: `apt-get install gcc libc6-dev`");
  }
  const binary = join(out, "moat-agent");
  try {
    // The compiler's own temporaries (cc1's .s, as's .o) go in the build's directory: a build
    // stopped mid-compile (its steps die with moat, past any cleanup of theirs) leaves none in
    // $TMPDIR, only in a directory the janitor removes.
    await run(cc, ["-static", "-O2", "-s", "-o", binary, source], { env: { ...process.env, TMPDIR: out } });
  } catch (err) {
    throw new HostRequirementError("ERR_MISSING_TOOL", `compiling ${source} failed: ${stderrOf(err)}`,
      "a static build needs the C library's static archive: `apt-get install libc6-dev`");
  }
  const data = readFileSync(binary);
  rmSync(binary);
  return data;
}

interface Module { name: string; data: Buffer }

/** `roots` and what they depend on, dependencies first, uncompressed; built-in ones are left out. */
async function resolveModules(modulesDir: string, roots: string[]): Promise<Module[]> {
  const files = new Map<string, string>();
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(dir, e.name));
      else {
        const m = /^(.+)\.ko(\.xz|\.zst|\.gz)?$/.exec(e.name);
        if (m) files.set(m[1]!.replace(/-/g, "_"), join(dir, e.name));
      }
    }
  };
  walk(join(modulesDir, "kernel"));
  let builtin = "";
  try {
    builtin = readFileSync(join(modulesDir, "modules.builtin"), "utf8").replace(/-/g, "_");
  } catch {
    // no list: every module must be a file
  }
  const ordered: Module[] = [];
  const seen = new Set<string>();
  const visit = async (name: string, wantedBy: string): Promise<void> => {
    if (seen.has(name)) return;
    seen.add(name);
    const path = files.get(name);
    if (!path) {
      if (builtin.includes(`/${name}.ko`)) return;
      throw new VmError(`kernel module ${name} (needed by ${wantedBy}) is neither in ${modulesDir} nor built in`);
    }
    const data = await uncompressedModule(path);
    const at = data.indexOf("\0depends=");
    const depends = at < 0 ? "" : data.toString("latin1", at + 9, data.indexOf(0, at + 9));
    for (const dep of depends.split(",").filter(Boolean)) await visit(dep.replace(/-/g, "_"), name);
    ordered.push({ name, data });
  };
  for (const root of roots) await visit(root, "the guest");
  return ordered;
}

async function uncompressedModule(path: string): Promise<Buffer> {
  if (path.endsWith(".gz")) return gunzipSync(readFileSync(path));
  const tool = path.endsWith(".xz") ? ["xz", "xz-utils"] : path.endsWith(".zst") ? ["zstd", "zstd"] : undefined;
  if (!tool) return readFileSync(path);
  if (!findInPath(tool[0]!)) {
    throw new HostRequirementError("ERR_MISSING_TOOL", `${path} is compressed and ${tool[0]} is not installed`, `install it: \`apt-get install ${tool[1]}\``);
  }
  return (await run(tool[0]!, ["-dc", path], { encoding: "buffer", maxBuffer: 1 << 28 })).stdout;
}

// ---- the cache ----------------------------------------------------------------------------------

function hash(data: string | Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

/** Renames a finished build into place; if another build got there first, theirs is kept. */
function publish(from: string, to: string): void {
  try {
    renameSync(from, to);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== "EEXIST" && code !== "ENOTEMPTY") throw err;
  }
}

/** Removes images (and abandoned temporary builds) untouched for a week, except `keep`. */
function pruneUnused(images: string, keep: string): void {
  for (const name of readdirSync(images)) {
    const path = join(images, name);
    if (path === keep) continue;
    try {
      if (Date.now() - statSync(path).mtimeMs > UNUSED_IMAGE_MS) rmSync(path, { recursive: true, force: true });
    } catch {
      // raced with another process: fine
    }
  }
}

function stderrOf(err: unknown): string {
  const e = err as { stderr?: string | Buffer; message?: string };
  return (e.stderr?.toString().trim() || e.message || String(err)).split("\n").slice(-3).join(" / ");
}
