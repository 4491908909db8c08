// world.ts — a test world that keeps all traffic on this machine (DESIGN §10).
//
//   [sandbox ns moat-N] --tap/engine--> [host ns mt-h-PID: moat runs here]
//                                          | veth up0 203.0.113.1/24, 2001:db8:77::1/64
//                                          | default routes -> the world
//                                       [world ns mt-w-PID: 203.0.113.10, 2001:db8:77::10]
//                                          no default route: nothing leaves the machine
//
// 203.0.113.0/24 (TEST-NET-3) and 2001:db8::/32 are documentation ranges, which moat's policy
// treats as Public. moat is started inside the host namespace, so its host sockets can only
// reach the world namespace.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { chmodSync, chownSync, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { NOBODY } from "../../orchestrator/src/sandbox/containment.js";

export const WORLD_IP4 = "203.0.113.10";
export const WORLD_IP6 = "2001:db8:77::10";
/** Extra addresses of the world host, one per policy group (all reach the same servers). */
export const HOSTS = {
  public2: "198.51.100.10",
  private: "10.77.0.10",
  cgnat: "100.64.0.10",
  linkLocal: "169.254.1.10",
  metadata: "169.254.169.254",
  private6: "fd77::10",
} as const;
const repo = new URL("../../../", import.meta.url).pathname;
export const MOAT_BIN = `${repo}bin/moat.js`;
export const TESTBED_JS = `${repo}dist/test/testbed/`;
/** The testbed's non-TypeScript helpers (Python servers, frame injectors). */
export const TESTBED_SRC = `${repo}test/testbed/`;

/** Why system tests cannot run here, or undefined when they can. */
export function systemTestSkipReason(): string | undefined {
  if (process.getuid?.() !== 0) return "system tests need root (network namespaces, TAP devices)";
  if (!existsSync("/dev/net/tun")) return "/dev/net/tun is missing";
  if (!hasTool("ip", "-V")) return "iproute2 (ip) is not installed";
  return undefined;
}

/**
 * A fresh directory for files a sandboxed command reads (scripts, data to upload). Not under
 * /tmp: a namespace sandbox's /tmp is its own empty tmpfs. Readable by all: the sandbox's root is
 * an unprivileged host uid (nobody when the tests run as root without sudo).
 */
export function sandboxReadableDir(prefix: string): string {
  const dir = mkdtempSync(`/var/tmp/${prefix}`);
  chmodSync(dir, 0o755);
  return dir;
}

/** Whether `cmd ARGS` runs here (a tool a test needs: curl, socat, openssl, ...). */
export function hasTool(cmd: string, ...args: string[]): boolean {
  try {
    execFileSync(cmd, args, { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

function sh(args: string[]): void {
  execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] });
}

export interface RunResult { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }
export interface SandboxReport { code: number; counters: Record<string, number>; flows: { flows: number; udp: number; tcp: number }; sockets: number }

export class World {
  readonly host = `mt-h-${process.pid}`;
  readonly world = `mt-w-${process.pid}`;
  private servers: ChildProcess[] = [];

  static create(): World {
    const w = new World();
    w.teardown();
    sh(["netns", "add", w.host]);
    sh(["netns", "add", w.world]);
    sh(["-n", w.host, "link", "add", "up0", "type", "veth", "peer", "name", "down0", "netns", w.world]);
    for (const [ns, dev, a4, a6] of [[w.host, "up0", "203.0.113.1/24", "2001:db8:77::1/64"], [w.world, "down0", `${WORLD_IP4}/24`, `${WORLD_IP6}/64`]] as const) {
      sh(["-n", ns, "link", "set", "lo", "up"]);
      sh(["-n", ns, "addr", "add", a4, "dev", dev]);
      sh(["-n", ns, "-6", "addr", "add", a6, "dev", dev, "nodad"]);
      sh(["-n", ns, "link", "set", dev, "up"]);
    }
    for (const a of Object.values(HOSTS)) sh(["-n", w.world, "addr", "add", a.includes(":") ? `${a}/128` : `${a}/32`, "dev", "down0", ...(a.includes(":") ? ["nodad"] : [])]);
    sh(["-n", w.host, "route", "add", "default", "via", WORLD_IP4]);
    // moat forwards guest pings through unprivileged ICMP sockets: let root's group open them.
    execFileSync("ip", ["netns", "exec", w.host, "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"]);
    // Link-local and private destinations still go to the world (a real host would have them
    // on its LAN); the host namespace has no route anywhere else.
    sh(["-n", w.host, "route", "add", "169.254.0.0/16", "via", WORLD_IP4]);
    sh(["-n", w.host, "-6", "route", "add", "default", "via", WORLD_IP6]);
    return w;
  }

  /** Start a testbed server in the world namespace and wait until it listens. */
  async startServer(kind: "udp-echo" | "tcp-echo" | "tcp-sink" | "tcp-source" | "tcp-reset", port: number, where: "world" | "host" = "world"): Promise<void> {
    await this.startProcess([process.execPath, `${TESTBED_JS}servers.js`, kind, String(port)], where);
  }

  /**
   * Start a server process (argv) in the world namespace and wait until it prints `ready` ("ready",
   * the testbed's servers' word; another server's own, e.g. iperf3's "Server listening").
   */
  async startProcess(argv: string[], where: "world" | "host" = "world", ready = "ready"): Promise<void> {
    const kind = argv.slice(1).join(" ");
    const ns = where === "world" ? this.world : this.host;
    const p = spawn("ip", ["netns", "exec", ns, ...argv], { stdio: ["ignore", "pipe", "inherit"] });
    this.servers.push(p);
    let seen = "";
    await new Promise<void>((resolve, reject) => {
      const onData = (d: Buffer) => {
        seen += d;
        if (seen.includes(ready)) { p.stdout!.off("data", onData); resolve(); } // (later output is discarded)
      };
      p.stdout!.on("data", onData);
      p.once("exit", () => reject(new Error(`${kind} server exited before it was ready: ${seen}`)));
    });
  }

  /** An iperf3 server in the world namespace on `port`, one test at a time. */
  startIperf3(port = 5201): Promise<void> {
    return this.startProcess(["iperf3", "-s", "-p", String(port), "--forceflush"], "world", "Server listening");
  }

  /** Run `moat ARGS...` inside the host namespace; resolves with its exit and output. */
  moat(args: string[], timeoutMs = 60000): Promise<RunResult> {
    return this.runInHost([process.execPath, "--", MOAT_BIN, ...args], timeoutMs); // "--": as bin/moat.js's shebang
  }

  /**
   * Run CMD in a sandbox through the library inside the host namespace; the report says how the
   * engine ended (counters, flows left, host sockets left) after the flow table had time to drain.
   */
  async sandbox(cmd: string[], timeoutMs = 120000): Promise<RunResult & { report: SandboxReport }> {
    const r = await this.runInHost([process.execPath, `${TESTBED_JS}sandbox-run.js`, "--", ...cmd], timeoutMs);
    const m = /__MOAT__ (\{.*\})/.exec(r.stderr);
    if (!m) throw new Error(`sandbox-run gave no report:\n${r.stderr}`);
    return { ...r, report: JSON.parse(m[1]!) as SandboxReport };
  }

  /** Run one of the testbed's library scripts (dist/test/testbed/NAME) inside the host namespace. */
  sandboxScript(name: string, args: string[], timeoutMs = 60000): Promise<RunResult> {
    return this.runInHost([process.execPath, `${TESTBED_JS}${name}`, ...args], timeoutMs);
  }

  private runInHost(argv: string[], timeoutMs: number): Promise<RunResult> {
    return new Promise((resolve, reject) => {
      const p = spawn("ip", ["netns", "exec", this.host, ...argv], { stdio: ["ignore", "pipe", "pipe"] });
      let stdout = "";
      let stderr = "";
      p.stdout!.on("data", (d) => (stdout += d));
      p.stderr!.on("data", (d) => (stderr += d));
      const timer = setTimeout(() => { p.kill("SIGKILL"); reject(new Error(`${argv.join(" ")} timed out\n${stderr}`)); }, timeoutMs);
      p.on("exit", (code, signal) => { clearTimeout(timer); resolve({ code, signal, stdout, stderr }); });
    });
  }

  /**
   * Run `moat ARGS...` as an ordinary user (nobody) inside the host namespace, so moat runs
   * rootless (rootless.ts), with exactly `env` (and PATH, HOME, the user's XDG_RUNTIME_DIR).
   * /dev/net/tun is the same device in mode `tunMode`, bound over the host's node in a mount
   * namespace of this run alone (`ip netns exec` makes one): the host's node keeps its mode.
   */
  moatAsUser(args: string[], o: { env?: Record<string, string>; tunMode?: string; timeoutMs?: number } = {}): Promise<RunResult> {
    const runtime = mkdtempSync("/tmp/moat-xdg-");
    chownSync(runtime, NOBODY.uid, NOBODY.gid);
    chmodSync(runtime, 0o700);
    const env = { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: "/nonexistent", XDG_RUNTIME_DIR: runtime, ...o.env };
    const script = `d=$(mktemp -d /var/tmp/moat-tun-XXXXXX) && mknod "$d/tun" c 10 200 && chmod ${o.tunMode ?? "0666"} "$d/tun" && mount --bind "$d/tun" /dev/net/tun && rm -r "$d" &&
      exec setpriv --reuid=${NOBODY.uid} --regid=${NOBODY.gid} --clear-groups env -i "$@"`;
    return this.runInHost(["sh", "-c", script, "sh", ...Object.entries(env).map(([k, v]) => `${k}=${v}`), process.execPath, "--", MOAT_BIN, ...args], o.timeoutMs ?? 60000)
      .finally(() => rmSync(runtime, { recursive: true, force: true }));
  }

  /** Spawn moat without waiting (for signal tests). */
  spawnMoat(args: string[]): ChildProcess {
    return spawn("ip", ["netns", "exec", this.host, process.execPath, "--", MOAT_BIN, ...args], { stdio: ["ignore", "pipe", "pipe"] });
  }

  /** The `--stats` counters printed by moat on stderr. */
  static stats(stderr: string): Record<string, number> {
    const m = /engine counters: (\{.*\})/.exec(stderr);
    if (!m) throw new Error(`no counters in moat's stderr:\n${stderr}`);
    return JSON.parse(m[1]!) as Record<string, number>;
  }

  /**
   * A real DNS server (dnsmasq) in the world on WORLD_IP4:53, logging every query it receives to
   * the returned file. Records: allowed.test and alias.test (CNAME) -> WORLD_IP4, other.test ->
   * 198.51.100.10 (and every name under front.test: a shared front), evil.test -> a private address, big.test with TXT records too large for 512
   * bytes, every name under bench.test -> WORLD_IP4 (benchmarks); every answer's TTL is 2 s.
   */
  startDnsServer(): string {
    const log = `/tmp/moat-dnsmasq-${process.pid}.log`;
    const big = Array.from({ length: 12 }, (_, i) => `--txt-record=big.test,${"x".repeat(60)}${i}`);
    execFileSync("ip", ["netns", "exec", this.world, "dnsmasq", "--port=53", "--listen-address=" + WORLD_IP4, "--bind-interfaces",
      "--no-resolv", "--no-hosts", "--conf-file=/dev/null", `--pid-file=/tmp/moat-dnsmasq-${process.pid}.pid`, "--local-ttl=2",
      `--host-record=allowed.test,${WORLD_IP4}`, `--address=/other.test/${HOSTS.public2}`, `--address=/front.test/${HOSTS.public2}`, `--address=/evil.test/${HOSTS.private}`,
      `--address=/ads.example/${WORLD_IP4}`, `--address=/bench.test/${WORLD_IP4}`, `--address=/blocked.test/${WORLD_IP4}`, "--cname=alias.test,allowed.test",
      ...big, "--log-queries", `--log-facility=${log}`]);
    this.cleanups.push(() => {
      try { process.kill(Number(readFileSync(`/tmp/moat-dnsmasq-${process.pid}.pid`, "utf8")), "SIGTERM"); } catch { /* gone */ }
    });
    return log;
  }

  private cleanups: (() => void)[] = [];

  teardown(): void {
    for (const c of this.cleanups.splice(0)) c();
    for (const s of this.servers) s.kill("SIGKILL");
    this.servers = [];
    for (const ns of [this.host, this.world]) {
      try {
        execFileSync("ip", ["netns", "del", ns], { stdio: "ignore" });
      } catch {
        // absent
      }
    }
  }
}

/** Namespaces moat creates (moat-<pool tag>-<slot>) that exist right now; with `tag`, only that pool's. */
export function moatNamespaces(tag?: string): string[] {
  return execFileSync("ip", ["netns", "list"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).split("\n").map((l) => l.split(" ")[0]!)
    .filter((n) => /^moat-[0-9a-f]{8}-\d+$/.test(n) && (tag === undefined || n.startsWith(`moat-${tag}-`)));
}
