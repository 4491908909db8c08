// metrics.ts — what scraping costs (npm run bench:metrics): iperf3 through one sandbox of a
// `moat daemon`, each way, with and without a scraper reading GET /metrics once a second (as a
// Prometheus server would, at a short interval), alternated so that drift on a noisy machine
// falls on both sides. Reports Gbit/s each way and the ratio scraped / unscraped.
//   node dist/bench/metrics.js [--seconds 5] [--rounds 3] [--hz 1]
import { spawn } from "node:child_process";
import { request } from "node:http";
import { mkdtempSync, rmSync, readFileSync } from "node:fs";
import { WORLD_IP4, MOAT_BIN } from "../test/testbed/world.js";
import { benchArgs, option, sleep, killTree, benchWorld, endBenchWorld, iperfClient, iperfGbps, fmt, median, printTable } from "./harness.js";

benchArgs(["seconds", "rounds", "hz"]);

const SECONDS = Number(option("seconds", "5"));
const ROUNDS = Number(option("rounds", "3"));
const HZ = Number(option("hz", "1"));

function call(sock: string, method: string, path: string, body?: unknown): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const req = request({ socketPath: sock, method, path, headers: data ? { "content-type": "application/json", "content-length": data.length } : {} }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString() }));
    });
    req.on("error", reject);
    req.end(data);
  });
}

const world = await benchWorld("metrics");
const dir = mkdtempSync("/tmp/moat-bench-metrics-");
const sock = `${dir}/control.sock`;
const daemon = spawn("ip", ["netns", "exec", world.host, process.execPath, MOAT_BIN, "daemon", "--control", sock], { stdio: ["ignore", "ignore", "pipe"] });
let err = "";
daemon.stderr!.on("data", (d) => (err += d));
try {
  for (let i = 0; i < 100 && !/daemon listening/.test(err); i++) await sleep(100);
  const created = await call(sock, "POST", "/v1/sandboxes", { name: `bench-metrics-${process.pid}`, args: [] });
  if (created.status !== 201) throw new Error(`create: ${created.text}\n${err}`);
  const name = (JSON.parse(created.text) as { name: string }).name;
  // The cost of one scrape, alone: back-to-back scrapes of the idle sandbox, wall time and the
  // daemon's CPU time (one scrape a second costs this fraction of a core).
  const cpu = () => {
    const f = readFileSync(`/proc/${daemon.pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    return (Number(f[11]) + Number(f[12])) / 100; // utime + stime, in clock ticks of 10 ms
  };
  const N = 500;
  const cpu0 = cpu();
  const t0 = performance.now();
  for (let i = 0; i < N; i++) await call(sock, "GET", "/metrics");
  const perScrapeMs = (performance.now() - t0) / N;
  const cpuPerScrapeMs = ((cpu() - cpu0) * 1000) / N;
  let scrapes = 0;
  let scrapeBytes = 0;
  const iperf = async (reverse: boolean, scraped: boolean): Promise<number> => {
    let timer: NodeJS.Timeout | undefined;
    if (scraped) {
      timer = setInterval(() => {
        void call(sock, "GET", "/metrics").then((r) => { scrapes++; scrapeBytes = r.text.length; });
      }, 1000 / HZ);
    }
    try {
      let out: { status: number; stdout: string; stderr: string };
      for (let attempt = 0; ; attempt++) {
        const r = await call(sock, "POST", `/v1/sandboxes/${name}/exec`, { command: iperfClient(WORLD_IP4, 5201, SECONDS, reverse) });
        out = JSON.parse(r.text) as typeof out;
        // The server takes one test at a time and may still be closing the last one.
        if (!/server is busy/.test(out.stdout) || attempt >= 5) break;
        await sleep(500);
      }
      if (out.status !== 0) throw new Error(`iperf3: ${out.stderr}`);
      try {
        return iperfGbps(out.stdout);
      } catch {
        throw new Error(`iperf3 gave no figure: ${out.stdout.slice(0, 600)} ${out.stderr}`);
      }
    } finally {
      clearInterval(timer);
    }
  };
  const figures: Record<string, number[]> = { "up off": [], "up on": [], "down off": [], "down on": [] };
  for (let round = 0; round < ROUNDS; round++) {
    // Order alternates by round: neither side always runs first.
    const order = round % 2 === 0 ? [false, true] : [true, false];
    for (const reverse of [false, true]) {
      for (const scraped of order) figures[`${reverse ? "down" : "up"} ${scraped ? "on" : "off"}`]!.push(await iperf(reverse, scraped));
    }
  }
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  printTable([
    ["direction", "unscraped Gbit/s (median)", "scraped Gbit/s (median)", "ratio (medians)", "ratio (means)", "runs"],
    ...(["up", "down"] as const).map((d) => {
      const off = figures[`${d} off`]!;
      const on = figures[`${d} on`]!;
      return [d === "up" ? "guest->world" : "world->guest", fmt(median(off)), fmt(median(on)), fmt(median(on) / median(off), 3), fmt(mean(on) / mean(off), 3), off.map((x) => fmt(x)).join("/") + " vs " + on.map((x) => fmt(x)).join("/")];
    }),
  ]);
  console.log(`one scrape alone: ${fmt(perScrapeMs, 3)} ms wall, ${fmt(cpuPerScrapeMs, 3)} ms of the daemon's CPU (${N} back to back): at ${HZ}/s, ${fmt(cpuPerScrapeMs * HZ / 10, 3)} % of one core`);
  console.log(`(${SECONDS} s per iperf3 run, ${ROUNDS} rounds, scraping ${HZ}/s: ${scrapes} scrapes of ${scrapeBytes} bytes; ratio 1.000 = no cost)`);
} finally {
  killTree(daemon);
  await new Promise((r) => (daemon.exitCode !== null ? r(null) : daemon.once("exit", r)));
  endBenchWorld(world);
  rmSync(dir, { recursive: true, force: true });
}
