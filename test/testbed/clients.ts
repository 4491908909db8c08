// clients.ts — small clients the system tests run *inside* a sandbox:
//   node clients.js udp HOST PORT TEXT [TIMEOUT_MS]   send TEXT, print the reply, exit 0 (1 on timeout)
//   node clients.js udp-many HOST PORT N              N sockets each exchanging one datagram; prints "ok N"
import { createSocket } from "node:dgram";
import { isIPv6 } from "node:net";

const [kind, host, portText, arg, timeoutText] = process.argv.slice(2);
const port = Number(portText);
const type = isIPv6(host!) ? "udp6" : "udp4";

function exchange(text: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = createSocket(type);
    const timer = setTimeout(() => { s.close(); reject(new Error(`no reply from ${host}:${port} within ${timeoutMs} ms`)); }, timeoutMs);
    s.on("message", (m) => { clearTimeout(timer); s.close(); resolve(m.toString()); });
    s.on("error", (e) => { clearTimeout(timer); s.close(); reject(e); });
    // Connected, so an ICMP error (port unreachable) is reported as ECONNREFUSED.
    s.connect(port, host, () => s.send(text));
  });
}

try {
  if (kind === "udp") {
    process.stdout.write((await exchange(arg ?? "", Number(timeoutText ?? 3000))) + "\n");
  } else if (kind === "udp-many") {
    const n = Number(arg);
    const replies = await Promise.all(Array.from({ length: n }, (_, i) => exchange(`m${i}`, 5000)));
    const ok = replies.every((r, i) => r === `m${i}`);
    process.stdout.write(ok ? `ok ${n}\n` : `mismatch\n`);
    process.exitCode = ok ? 0 : 1;
  } else {
    throw new Error(`unknown client kind ${kind}`);
  }
} catch (e) {
  process.stderr.write(`clients.js: ${(e as Error).message}\n`);
  process.exitCode = 1;
}
