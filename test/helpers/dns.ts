// dns.ts — what the DNS unit suites share: query building, a dead UDP port, and a real dnsmasq
// on 127.0.0.1 (a random high port) logging the queries it receives.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import dgram from "node:dgram";
import dnsPacket from "dns-packet";
import { UpstreamResolver } from "../../orchestrator/src/dns/upstream.js";

export const DNSMASQ = "/usr/sbin/dnsmasq";
/** Why the dnsmasq-backed suites cannot run here, or undefined. */
export const dnsmasqSkip = !existsSync(DNSMASQ) ? `${DNSMASQ} is not installed` : process.getuid?.() !== 0 ? "needs root (dnsmasq)" : undefined;

export function query(name: string, type = "A", id = 4242, edns?: number): Buffer {
  return dnsPacket.encode({
    type: "query", id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name, type }],
    additionals: edns ? [{ type: "OPT", name: ".", udpPayloadSize: edns }] : [],
  });
}

/** A UDP port nothing listens on (bound then closed). */
export async function deadPort(): Promise<number> {
  const s = dgram.createSocket("udp4");
  await new Promise<void>((r) => s.bind(0, "127.0.0.1", r));
  const port = s.address().port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** dnsmasq with `args` on 127.0.0.1, its query log in `dir`; resolves once it answers. */
export async function startDnsmasq(dir: string, args: string[]): Promise<{ proc: ChildProcess; port: number; log: string }> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = 20000 + Math.floor(Math.random() * 40000);
    const log = join(dir, `dnsmasq-${port}.log`);
    const proc = spawn(DNSMASQ, [
      "--no-daemon", `--port=${port}`, "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
      "--conf-file=/dev/null", "--pid-file=", "--log-queries", `--log-facility=${log}`, ...args,
    ], { stdio: ["ignore", "ignore", "pipe"] });
    const exited = new Promise<boolean>((r) => proc.once("exit", () => r(true)));
    const r = new UpstreamResolver([{ ip: "127.0.0.1", port }], 200);
    for (let i = 0; i < 25; i++) {
      const up = await Promise.race([r.query(query("ready.test")).then(() => true, () => false), exited]);
      if (up === true && proc.exitCode === null) return { proc, port, log };
      if (proc.exitCode !== null) break;
    }
    proc.kill("SIGKILL");
  }
  throw new Error("dnsmasq did not start");
}
