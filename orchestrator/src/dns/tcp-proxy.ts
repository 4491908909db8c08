// tcp-proxy.ts — DNS over TCP (RFC 7766 framing: a 2-byte length, then the message), served on
// 127.0.0.1 for the engine, which relays the guest's TCP/53 connections here.
//
// A connection may carry many queries, pipelined: each complete message is handed to the handler
// as soon as it has arrived (so slow and fast queries overlap), and the answers are written back
// in the order the queries came. Bounds: messages of 12..65535 bytes (a length outside that closes
// the connection), at most `maxPipelined` queries outstanding per connection (reading pauses
// beyond), at most `maxConnections` connections (more are closed at once), and a connection with
// no traffic and nothing outstanding for `idleTimeoutMs` is closed. A handler answer of null (or a
// handler failure) closes the connection after the answers before it are written. A client that
// half-closes still receives its outstanding answers.
//
// With a redirect token, every connection must open with the engine's redirect preamble
// (engine/redirect.ts: the resolver the guest addressed, then the token); a connection whose
// first REDIRECT_PREAMBLE_BYTES bytes are anything else is closed unanswered.
import type net from "node:net";
import { REDIRECT_PREAMBLE_BYTES, RedirectListener, parseRedirectPreamble } from "../engine/redirect.js";

/** Who sent a query: the TCP peer, and (redirected by the engine) where the guest was going. */
export interface DnsTcpPeer { address: string; port: number; dest?: { ip: string; port: number } }
export type DnsTcpHandler = (query: Buffer, peer: DnsTcpPeer) => Promise<Buffer | null>;

export interface DnsTcpServerOptions {
  /** Close a connection idle this long with nothing outstanding; default 10000. */
  idleTimeoutMs?: number;
  /** Simultaneous connections; default 256. */
  maxConnections?: number;
  /** Queries outstanding per connection before reading pauses; default 32. */
  maxPipelined?: number;
  /** 16 bytes: require the engine's redirect preamble, made with this token, on every connection. */
  redirectToken?: Buffer;
}

const MIN_MESSAGE = 12;

export class DnsTcpServer extends RedirectListener {
  private readonly idleTimeoutMs: number;
  private readonly maxPipelined: number;
  private readonly token: Buffer | undefined;

  constructor(private readonly handler: DnsTcpHandler, options: DnsTcpServerOptions = {}) {
    super(options.maxConnections ?? 256);
    this.idleTimeoutMs = options.idleTimeoutMs ?? 10_000;
    this.token = options.redirectToken;
    this.maxPipelined = options.maxPipelined ?? 32;
  }

  protected serve(sock: net.Socket): void {
    const peer: DnsTcpPeer = { address: sock.remoteAddress ?? "", port: sock.remotePort ?? 0 };
    let needPreamble = this.token !== undefined;
    const queue: Promise<Buffer | null>[] = [];
    let buf: Buffer = Buffer.alloc(0);
    let writing = false;
    let ended = false;
    let closing = false; // answered null: no more queries are read, nothing more is written

    sock.setTimeout(this.idleTimeoutMs);
    sock.on("timeout", () => {
      if (queue.length === 0) sock.destroy();
    });
    sock.on("error", () => sock.destroy());
    sock.on("close", () => {
      queue.length = 0;
    });
    sock.on("end", () => {
      ended = true;
      if (queue.length === 0 && !writing) sock.end();
    });

    const pump = async (): Promise<void> => {
      if (writing) return;
      writing = true;
      while (queue.length && !sock.destroyed) {
        const answer = await queue[0]!;
        queue.shift();
        if (sock.destroyed) break;
        if (answer === null || answer.length > 0xffff) {
          closing = true;
          queue.length = 0;
          sock.end();
          break;
        }
        const len = Buffer.alloc(2);
        len.writeUInt16BE(answer.length);
        sock.write(Buffer.concat([len, answer]));
        if (sock.isPaused() && queue.length < this.maxPipelined) sock.resume();
      }
      writing = false;
      if (ended && !closing && queue.length === 0 && !sock.destroyed) sock.end();
    };

    sock.on("data", (chunk: Buffer) => {
      if (closing) return;
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      if (needPreamble) {
        if (buf.length < REDIRECT_PREAMBLE_BYTES) return;
        const dest = parseRedirectPreamble(buf, this.token!);
        if (!dest) {
          sock.destroy();
          return;
        }
        peer.dest = { ip: dest.ip, port: dest.port };
        needPreamble = false;
        buf = buf.subarray(REDIRECT_PREAMBLE_BYTES);
      }
      while (buf.length >= 2) {
        const len = buf.readUInt16BE(0);
        if (len < MIN_MESSAGE) {
          sock.destroy();
          return;
        }
        if (buf.length < 2 + len) break;
        const query = Buffer.from(buf.subarray(2, 2 + len)); // a copy: the chunk need not live on
        buf = buf.subarray(2 + len);
        queue.push(this.handler(query, peer).catch(() => null));
      }
      if (buf.length === 0) buf = Buffer.alloc(0);
      if (queue.length >= this.maxPipelined) sock.pause();
      void pump();
    });
  }
}
