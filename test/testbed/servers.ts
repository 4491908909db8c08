// servers.ts — the test hosts' servers, run inside a "world" namespace by the testbed:
//   node servers.js udp-echo PORT    echo every datagram back to its sender (IPv4 and IPv6)
//   node servers.js tcp-echo PORT    echo every byte back on each connection
//   node servers.js tcp-sink PORT    read to EOF, then answer the SHA-256 (hex) of what came, close
//   node servers.js tcp-source PORT  read a decimal byte count and "\n", send that much of the
//                                    test stream (stream-data.ts), close
//   node servers.js tcp-reset PORT   accept, read a little, then reset the connection
//   node servers.js https PORT CERT KEY [RECORD]   HTTPS (HTTP/1.1 and HTTP/2): GET /hello ->
//                                    "hello over tls (h2|http/1.1)"; GET /bytes/N -> N bytes of
//                                    the test stream; POST /sink -> SHA-256 (hex) of the body;
//                                    anything else -> the request's headers as JSON. With RECORD,
//                                    every request (url, headers, body) is appended to that file
//                                    as a JSON line
// Prints "ready" once listening; runs until killed.
import { createSocket } from "node:dgram";
import { createServer, type Socket } from "node:net";
import { createHash } from "node:crypto";
import { readFileSync, appendFileSync } from "node:fs";
import { createSecureServer, type Http2ServerRequest, type Http2ServerResponse } from "node:http2";
import { writeStream } from "./stream-data.js";

const [kind, portText] = process.argv.slice(2);
const port = Number(portText);
const ready = () => process.stdout.write("ready\n");

function tcp(handler: (c: Socket) => void): void {
  // Half-open: a client that sends its request and shuts its side (busybox nc at stdin EOF)
  // still gets the whole answer.
  const srv = createServer({ allowHalfOpen: true }, (c) => {
    c.on("error", () => c.destroy());
    handler(c);
  });
  srv.listen(port, "::", ready);
}

async function sendStream(c: Socket, bytes: number): Promise<void> {
  await writeStream(c, bytes);
  c.end();
}

switch (kind) {
  case "udp-echo": {
    const sock = createSocket({ type: "udp6", ipv6Only: false });
    sock.on("message", (msg, rinfo) => sock.send(msg, rinfo.port, rinfo.address));
    sock.bind(port, "::", ready);
    break;
  }
  case "tcp-echo":
    tcp((c) => c.pipe(c));
    break;
  case "tcp-sink":
    tcp((c) => {
      const h = createHash("sha256");
      c.on("data", (d) => h.update(d));
      c.on("end", () => c.end(h.digest("hex") + "\n"));
    });
    break;
  case "tcp-source":
    tcp((c) => {
      let line = "";
      const onData = (d: Buffer) => {
        line += d.toString();
        const nl = line.indexOf("\n");
        if (nl < 0) return;
        c.off("data", onData);
        void sendStream(c, Number(line.slice(0, nl)));
      };
      c.on("data", onData);
    });
    break;
  case "tcp-reset":
    tcp((c) => c.once("data", () => c.resetAndDestroy()));
    break;
  case "https": {
    const [cert, key, record] = process.argv.slice(4);
    const srv = createSecureServer({ cert: readFileSync(cert!), key: readFileSync(key!), allowHTTP1: true }, (req: Http2ServerRequest, res: Http2ServerResponse) => {
      const url = req.url ?? "/";
      if (record) {
        const body: Buffer[] = [];
        req.on("data", (d: Buffer) => body.push(d));
        req.on("end", () => appendFileSync(record, JSON.stringify({ url, version: req.httpVersion, headers: req.headers, body: Buffer.concat(body).toString("latin1").slice(0, 65536) }) + "\n"));
      }
      if (url === "/hello") {
        res.end(`hello over tls (${req.httpVersion === "2.0" ? "h2" : "http/1.1"})\n`);
      } else if (url.startsWith("/bytes/")) {
        const n = Number(url.slice(7));
        res.setHeader("content-length", String(n));
        void writeStream(res, n).then(() => res.end());
      } else if (url === "/sink") {
        const h = createHash("sha256");
        let n = 0;
        req.on("data", (d: Buffer) => { h.update(d); n += d.length; });
        req.on("end", () => res.end(`${h.digest("hex")} ${n}\n`));
      } else {
        res.setHeader("content-type", "application/json");
        req.resume();
        req.on("end", () => res.end(JSON.stringify(req.headers)));
      }
    });
    srv.listen(port, "::", ready);
    break;
  }
  default:
    process.stderr.write(`servers.js: unknown server kind ${kind}\n`);
    process.exit(2);
}
