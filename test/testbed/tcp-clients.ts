// tcp-clients.ts — TCP clients the system tests run inside a sandbox. Each prints one result
// line and exits 0 when the exchange went as expected:
//   upload HOST PORT BYTES        send BYTES of the test stream, half-close, compare the sink's hash
//   download HOST PORT BYTES      ask the source for BYTES, hash what arrives, compare
//   many HOST PORT N BYTES        N concurrent echo connections, interleaved writes, all verified
//   connect HOST PORT [MS]        prints "connected", "refused", "timeout" (after MS, default 3000)
//                                 or the error code
//   hold HOST PORT N SECONDS      open N connections at once and keep them SECONDS: "held K refused R"
//   reset HOST PORT               write, expect the server's reset: prints "reset"
//   halfclose HOST PORT           echo server: write, half-close, still read the echo to EOF
//   crr HOST PORT SECONDS         connect-request-response-close loops against an echo server
//                                 for SECONDS: prints "crr N/s (C connections in S s)"
//   rr HOST PORT COUNT            COUNT 1-byte round trips on one connection: "rr p50=US p99=US"
//   bulk HOST PORT N BYTES        N concurrent connections to an echo server, each sending BYTES
//                                 (its own pattern, 64 KiB writes) while reading the echo; every
//                                 echo is checked by SHA-256: "ok N SECONDS s", or which stalled
import { connect, type Socket } from "node:net";
import { createHash } from "node:crypto";
import { CHUNK, streamHash, writeStream } from "./stream-data.js";

const [mode, host, portText, a, b] = process.argv.slice(2);
const port = Number(portText);

function open(): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: host!, port });
    s.once("connect", () => resolve(s));
    s.once("error", reject);
  });
}

async function upload(bytes: number): Promise<string> {
  const s = await open();
  let reply = "";
  s.on("data", (d) => (reply += d));
  const done = new Promise((r) => s.on("end", r));
  await writeStream(s, bytes);
  s.end();
  await done;
  const want = streamHash(bytes);
  if (reply.trim() !== want) throw new Error(`sink saw ${reply.trim()}, sent ${want}`);
  return `ok ${want}`;
}

async function download(bytes: number): Promise<string> {
  const s = await open();
  const h = createHash("sha256");
  let got = 0;
  s.on("data", (d: Buffer) => { h.update(d); got += d.length; });
  const done = new Promise((r) => s.on("end", r));
  s.write(`${bytes}\n`);
  await done;
  const hash = h.digest("hex");
  const want = streamHash(bytes);
  if (got !== bytes || hash !== want) throw new Error(`received ${got} bytes hashing ${hash}, want ${bytes} / ${want}`);
  s.end();
  return `ok ${hash}`;
}

async function echoOne(id: number, bytes: number): Promise<void> {
  const s = await open();
  const want = Buffer.alloc(bytes, id & 255);
  want.writeUInt32BE(id, 0);
  const parts: Buffer[] = [];
  let got = 0;
  s.on("data", (d: Buffer) => { parts.push(d); got += d.length; if (got >= bytes) s.end(); });
  const done = new Promise((r) => s.on("close", r));
  // Interleave: write in small pieces with yields so connections' segments mix on the link.
  for (let off = 0; off < bytes; off += 1000) {
    s.write(want.subarray(off, Math.min(bytes, off + 1000)));
    await new Promise((r) => setImmediate(r));
  }
  await done;
  if (!Buffer.concat(parts).equals(want)) throw new Error(`connection ${id}: echo differs`);
}

/** One `bulk` connection: BYTES of pattern `id` out, the same back, compared by SHA-256. */
async function bulkOne(id: number, bytes: number, progress: number[]): Promise<void> {
  const s = await open();
  const block = Buffer.alloc(CHUNK);
  for (let i = 0; i < CHUNK; i += 4) block.writeUInt32BE((id * 2654435761 + i) >>> 0, i);
  const sent = createHash("sha256");
  const got = createHash("sha256");
  let received = 0;
  s.on("data", (d: Buffer) => { got.update(d); received += d.length; progress[id] = received; if (received >= bytes) s.end(); });
  const done = new Promise<void>((resolve, reject) => { s.on("close", () => resolve()); s.on("error", reject); });
  for (let off = 0; off < bytes; off += CHUNK) {
    const part = block.subarray(0, Math.min(CHUNK, bytes - off));
    sent.update(part);
    if (!s.write(part)) await new Promise((r) => s.once("drain", r));
  }
  await done;
  if (received !== bytes || got.digest("hex") !== sent.digest("hex")) throw new Error(`connection ${id}: echoed ${received} of ${bytes} bytes, or different ones`);
}

async function bulk(n: number, bytes: number, limitSeconds: number): Promise<string> {
  const progress = new Array<number>(n).fill(0);
  const t0 = performance.now();
  let timer: NodeJS.Timeout | undefined;
  const stalled = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const stuck = progress.filter((p) => p < bytes).length;
      reject(new Error(`${stuck} of ${n} connections unfinished after ${limitSeconds} s`));
    }, limitSeconds * 1000);
  });
  try {
    await Promise.race([Promise.all(Array.from({ length: n }, (_, i) => bulkOne(i, bytes, progress))), stalled]);
  } finally {
    clearTimeout(timer);
  }
  return `ok ${n} ${((performance.now() - t0) / 1000).toFixed(2)} s`;
}

async function main(): Promise<string> {
  switch (mode) {
    case "upload": return upload(Number(a));
    case "download": return download(Number(a));
    case "bulk": return bulk(Number(a), Number(b), Number(process.argv[7] ?? 120));
    case "many": {
      const n = Number(a);
      await Promise.all(Array.from({ length: n }, (_, i) => echoOne(i, Number(b))));
      return `ok ${n}`;
    }
    case "connect":
      return new Promise((resolve) => {
        const s = connect({ host: host!, port });
        const timer = setTimeout(() => { s.destroy(); resolve("timeout"); }, Number(a ?? 3000));
        s.once("connect", () => { clearTimeout(timer); s.destroy(); resolve("connected"); });
        s.once("error", (e: NodeJS.ErrnoException) => { clearTimeout(timer); resolve(e.code === "ECONNREFUSED" ? "refused" : String(e.code)); });
      });
    case "hold": {
      const results = await Promise.allSettled(Array.from({ length: Number(a) }, () => open()));
      const held = results.filter((r) => r.status === "fulfilled").length;
      await new Promise((r) => setTimeout(r, Number(b) * 1000));
      for (const r of results) if (r.status === "fulfilled") r.value.destroy();
      return `held ${held} refused ${results.length - held}`;
    }
    case "reset": {
      const s = await open();
      const err = await new Promise<NodeJS.ErrnoException | null>((r) => {
        s.once("error", r);
        s.once("close", () => r(null));
        s.write("hello");
      });
      if (err?.code !== "ECONNRESET") throw new Error(`expected ECONNRESET, got ${err?.code ?? "a clean close"}`);
      return "reset";
    }
    case "halfclose": {
      const s = await open();
      let reply = "";
      s.on("data", (d) => (reply += d));
      const done = new Promise((r) => s.on("end", r));
      s.end("half-closed but still listening");
      await done;
      if (reply !== "half-closed but still listening") throw new Error(`echo after half-close was "${reply}"`);
      return "ok";
    }
    case "crr": {
      const until = performance.now() + Number(a) * 1000;
      let n = 0;
      const t0 = performance.now();
      while (performance.now() < until) {
        const s = await open();
        s.setNoDelay(true);
        await new Promise<void>((r) => { s.once("data", () => r()); s.write("x"); });
        s.destroy();
        n++;
      }
      const seconds = (performance.now() - t0) / 1000;
      return `crr ${(n / seconds).toFixed(0)}/s (${n} connections in ${seconds.toFixed(3)} s)`;
    }
    case "rr": {
      const s = await open();
      s.setNoDelay(true);
      const times: number[] = [];
      for (let i = 0; i < Number(a); i++) {
        const t = performance.now();
        await new Promise<void>((r) => { s.once("data", () => r()); s.write("x"); });
        times.push((performance.now() - t) * 1000);
      }
      s.destroy();
      times.sort((x, y) => x - y);
      const q = (p: number) => times[Math.min(times.length - 1, Math.floor(p * times.length))]!.toFixed(0);
      return `rr p50=${q(0.5)} p99=${q(0.99)}`;
    }
    default:
      throw new Error(`unknown mode ${mode}`);
  }
}

main().then((line) => process.stdout.write(line + "\n"), (e) => {
  process.stderr.write(`tcp-clients.js ${mode}: ${(e as Error).message}\n`);
  process.exit(1); // connections left open must not keep the client alive
});
