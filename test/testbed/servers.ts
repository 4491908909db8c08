// servers.ts — the test hosts' servers, run inside a "world" namespace by the testbed:
//   node servers.js udp-echo PORT      echo every datagram back to its sender (IPv4 and IPv6)
//   node servers.js tcp-echo PORT      echo every byte back on each connection
// Prints "ready" once listening; runs until killed.
import { createSocket } from "node:dgram";
import { createServer } from "node:net";

const [kind, portText] = process.argv.slice(2);
const port = Number(portText);
if (kind === "udp-echo") {
  const sock = createSocket({ type: "udp6", ipv6Only: false });
  sock.on("message", (msg, rinfo) => sock.send(msg, rinfo.port, rinfo.address));
  sock.bind(port, "::", () => process.stdout.write("ready\n"));
} else if (kind === "tcp-echo") {
  const srv = createServer((c) => { c.pipe(c); c.on("error", () => c.destroy()); });
  srv.listen(port, "::", () => process.stdout.write("ready\n"));
} else {
  process.stderr.write(`servers.js: unknown server kind ${kind}\n`);
  process.exit(2);
}
