// redirect.ts — the receiving end of the engine's redirects: the loopback listener of a service
// the engine sends guest flows to (DNS over TCP, the TLS proxy with DoT and the deny page), and
// the preamble that opens each redirected connection.
//
// The engine decides which flows go to which service (engine-wasm/assembly/flow/outbound.ts) and
// dials them with OP_ORIG; native-vmm writes the preamble (layout.ts, PRE_*: where the guest was
// going, the rule that admitted or denied it, and the sandbox's token) before any guest byte. A
// service reads it first (parseRedirectPreamble) and closes a connection whose first
// REDIRECT_PREAMBLE_BYTES bytes are anything else: the token proves the engine made it, so
// something else that reaches the listener (a guest allowed to the host's loopback) cannot name a
// destination of its choosing.
import net from "node:net";
import type { AddressInfo } from "node:net";
import { timingSafeEqual } from "node:crypto";
import ipaddr from "ipaddr.js";
import { layout as L } from "./layout.js";

/** The preamble's size: what a receiver reads before anything of the guest's. */
export const REDIRECT_PREAMBLE_BYTES = L.REDIRECT_PREAMBLE_BYTES;

/** What a redirect preamble says: the original destination, and the name id of the domain rule that admitted the flow (0: none; DENIED_BIT | rule + 1 for the deny page). */
export interface RedirectOrigin { ip: string; port: number; admitNameId: number }

/** The redirect preamble at the start of `b` (layout.ts, PRE_*), or null if it is not one made with `token`. */
export function parseRedirectPreamble(b: Buffer, token: Buffer): RedirectOrigin | null {
  if (b.length < L.REDIRECT_PREAMBLE_BYTES || b.toString("latin1", L.PRE_MAGIC, L.PRE_MAGIC + 4) !== "moat" || b[L.PRE_VERSION] !== L.REDIRECT_PREAMBLE_VERSION ||
      (b[L.PRE_FAMILY] !== 4 && b[L.PRE_FAMILY] !== 6)) return null;
  if (!timingSafeEqual(b.subarray(L.PRE_TOKEN, L.PRE_TOKEN + 16), token)) return null;
  const a = ipaddr.fromByteArray(Array.from(b.subarray(L.PRE_ADDR, L.PRE_ADDR + 16))) as ipaddr.IPv6;
  return {
    ip: b[L.PRE_FAMILY] === 4 && a.isIPv4MappedAddress() ? a.toIPv4Address().toString() : a.toString(),
    port: b.readUInt16BE(L.PRE_PORT),
    admitNameId: b.readUInt32BE(L.PRE_ADMIT_NAME),
  };
}

/** The original destination as text: ip:port, [ip]:port for IPv6. */
export function originText(o: RedirectOrigin): string {
  return `${o.ip.includes(":") ? `[${o.ip}]` : o.ip}:${o.port}`;
}

/**
 * A service the engine redirects to, as a listener: TCP, half-open allowed, no Nagle, at most
 * `maxConnections` connections (more are closed at once); each connection is handed to the
 * service's serve() as it arrives, and every one still open is closed by close().
 */
export abstract class RedirectListener {
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();

  constructor(maxConnections: number) {
    this.server = net.createServer({ allowHalfOpen: true, noDelay: true }, (sock) => {
      this.sockets.add(sock);
      sock.on("close", () => this.sockets.delete(sock));
      this.serve(sock);
    });
    this.server.maxConnections = maxConnections;
  }

  /** A new connection: read its preamble (parseRedirectPreamble), then serve it. */
  protected abstract serve(sock: net.Socket): void;

  /** Listen on `host`:`port` (default 127.0.0.1, an ephemeral port). */
  listen(port = 0, host = "127.0.0.1"): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(port, host, () => {
        this.server.off("error", reject);
        resolve();
      });
    });
  }

  /** Where it listens (after listen()). */
  address(): AddressInfo {
    const a = this.server.address();
    if (a === null || typeof a === "string") throw new Error("the redirect listener is not listening");
    return a;
  }

  /** Connections open now. */
  get connections(): number {
    return this.sockets.size;
  }

  /** Stop listening and close every connection. */
  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((resolve) => (this.server.listening ? this.server.close(() => resolve()) : resolve()));
  }
}
