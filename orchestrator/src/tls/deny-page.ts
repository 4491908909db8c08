// deny-page.ts — the deny page (deny response "http"): a TCP connection to port 80 or an
// intercepted TLS port that policy denies is not reset but redirected by the engine
// (engine-wasm/assembly/flow/outbound.ts, SVC_DENY_PAGE) to the TLS proxy's listener, its
// preamble's admit field holding DENIED_BIT | the deciding rule + 1 (0: the default action).
// The proxy answers its one request with 403 and the reason — in plain HTTP, or over TLS with a
// leaf of ours — and nothing is sent anywhere else.
import type net from "node:net";
import { layout as L } from "../engine/layout.js";
import { originText, type RedirectOrigin } from "../engine/redirect.js";
import { gather } from "../secrets/http1-head.js";

/** The most of a request head read before the page is sent regardless. */
const MAX_HEAD = 65536;

/** Was this connection redirected to be answered by the deny page? */
export function denied(origin: RedirectOrigin): boolean {
  return (origin.admitNameId & L.DENIED_BIT) !== 0;
}

/** The page's text, for a request naming `host`; `reason` describes the deciding rule (index + 1, 0 = the default action). */
export function denyPageText(origin: RedirectOrigin, host: string | undefined, reason?: (rule: number) => string): string {
  const rule = reason?.(origin.admitNameId & ~L.DENIED_BIT) ?? "the policy";
  return `moat: denied: ${host ?? "?"} (${originText(origin)}) by ${rule}\n`;
}

/**
 * Answer the request arriving on `sock` (after `first`) with 403 and `text(host)`: read its head
 * (bounded, timed), reply, close. Nothing is sent anywhere else.
 */
export function serveDenyPage(sock: net.Socket, first: Buffer, text: (host: string | undefined) => string): void {
  // Gathered in place and searched from where the last piece ended: a head sent a byte at a time
  // costs linear time, not a copy and a search of everything so far per byte.
  let head = first;
  let store: Buffer | undefined;
  const timer = setTimeout(() => sock.destroy(), 10_000);
  const reply = () => {
    clearTimeout(timer);
    sock.removeAllListeners("data");
    const host = /\r\nhost:\s*([^\r\n:]+)/i.exec(head.toString("latin1"))?.[1]?.toLowerCase();
    const body = text(host);
    sock.end(`HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    sock.resume();
  };
  const check = (from: number) => {
    if (head.indexOf("\r\n\r\n", Math.max(0, from - 3)) >= 0 || head.length > MAX_HEAD) reply();
  };
  sock.on("data", (d: Buffer) => {
    const from = head.length;
    ({ view: head, store } = gather(head, d, store));
    check(from);
  });
  sock.on("end", () => { if (!sock.writableEnded) reply(); });
  sock.on("close", () => clearTimeout(timer));
  check(0);
  sock.resume();
}
