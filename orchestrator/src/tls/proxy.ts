// proxy.ts — the TLS interception proxy of one sandbox (DESIGN §8).
//
// Theory of operation
// The engine redirects the guest's TCP connections to intercepted ports (and DoT, TCP/853) here,
// each opening with the redirect preamble (engine/redirect.ts): where the guest was going, and
// the domain rule that admitted it (or denied it: the deny page, deny-page.ts, is served here
// too). Then, per connection:
//
//   preamble ─► ClientHello (bounded, timed) ─► bypassed SNI? ──yes──► opaque splice to the
//                                                   │                  original destination,
//                                                   no                 ClientHello replayed
//                                                   ▼
//              SNI held to the DNS pins (checkSni) ─► upstream TLS to the ORIGINAL IP (never
//              re-resolved), the client's SNI and ALPN, verified against the host's roots plus
//              the user's ─► the guest's handshake completed with a leaf for the SNI (no SNI: the
//              destination IP as an IP SAN) offering the ALPN the upstream chose ─► bytes both ways
//
// A refusal (SNI not pinned, upstream verification failed, upstream unreachable) aborts the
// guest's handshake with a TLS alert its client reports, never a silent close, and is an event
// for the audit log. DoT (the original port 853) is terminated the same way and its queries go
// through the sandbox's DNS interceptor. Hostile ClientHellos (garbage, truncated, oversized,
// slow) are closed and counted.
import net from "node:net";
import tls from "node:tls";
import { readFileSync } from "node:fs";
import { layout as L } from "../engine/layout.js";
import { RedirectListener, parseRedirectPreamble, originText as dest, type RedirectOrigin } from "../engine/redirect.js";
import { denied, denyPageText, serveDenyPage } from "./deny-page.js";
import { parseClientHello } from "./client-hello.js";
import type { CertificateAuthority } from "./ca.js";
import { matchesPattern } from "../model/names.js";
import { RequestFilter, forbidden, forbiddenText, refusedHttp, type Violation, type Refusal, type FilterContext } from "../secrets/http-filter.js";
import { Http2RequestFilter, forbiddenH2, type H2Result } from "../secrets/http2-filter.js";
import { ResponseScrubber, type ScrubResult } from "../secrets/response-filter.js";
import { Http2ResponseScrubber } from "../secrets/http2-response-filter.js";
import type { ValueFound } from "../secrets/value-scanner.js";
import type { Secret } from "../secrets/secrets.js";

export interface TlsEvent {
  kind: "tls-sni-denied" | "tls-upstream-failed" | "tls-bad-hello" | "http-refused" | "secret-scrubbed" | "response-refused";
  sni: string | undefined;
  destination: string; // ip:port
  detail: string;
}

export interface TlsProxyOptions {
  /** Proves a connection came from this sandbox's engine (the redirect preamble's token). */
  token: Buffer;
  ca: CertificateAuthority;
  /** SNI patterns passed through untouched: "name" or "*.suffix" (which also matches "suffix"). */
  bypass: readonly string[];
  /** Verify the upstream's certificate (default true). */
  verifyUpstream: boolean;
  /** Extra trusted CAs for upstreams (PEM), besides the host's roots. */
  upstreamCa: readonly string[];
  /** A reason to refuse the guest's SNI for this connection, or null (the pins check). */
  checkSni(origin: RedirectOrigin, sni: string | undefined): string | null | Promise<string | null>;
  /**
   * On a connection a domain rule admitted: a reason to refuse a request for `host` (the rule does
   * not cover it, or this sandbox's DNS did not pin it to the destination), or null.
   */
  checkAuthority?(origin: RedirectOrigin, host: string): string | null;
  /** DoT: a DNS query from the guest (over TLS to port 853), answered by the interceptor. */
  dnsQuery?(query: Buffer, origin: RedirectOrigin): Promise<Buffer | null>;
  onEvent?(e: TlsEvent): void;
  /** Secrets: substituted in requests to their hosts, violations anywhere else (secrets/http-filter.ts). */
  secrets?: readonly Secret[];
  /** Did this sandbox's DNS answer `name` with `ip` (the pins)? Required with secrets. */
  pinned?(ip: string, name: string): boolean | Promise<boolean>;
  /** A placeholder headed where it may not go: the request was stopped. */
  onViolation?(v: Violation, destination: string): void;
  /** Where to connect for an original destination (the gateway's own addresses are the host's loopback); default: itself. */
  upstreamAddress?(ip: string): string;
  /** The deny page: the reason a denied connection gets (rule: index + 1 of the deciding rule, 0 = the default action). */
  denyReason?(rule: number): string;
  helloTimeoutMs?: number;
  upstreamTimeoutMs?: number;
  /** How long the guest has to finish its TLS handshake once its upstream is open (default 10 s). */
  handshakeTimeoutMs?: number;
  /** Where to count (tlsStatsOver: shared with another thread); default a fresh set. */
  stats?: TlsProxyStats;
}

/** What the proxy has done (for counters and tests), in this order in a shared TlsStatsBuffer. */
export const TLS_STAT_NAMES = [
  "denyPages", "intercepted", "bypassed", "dot", "badHello", "sniDenied", "upstreamFailed",
  /** HTTP requests refused: malformed, ambiguous, or for an authority the domain rule does not bind. */
  "httpRefused",
  /** Secret values found in responses and replaced by their placeholders. */
  "scrubbed",
  /** Connections on which a secret's value was put into a request (counted when they close). */
  "substituted",
  /** Leaf certificates minted for this proxy's connections (cache misses and renewals). */
  "leavesMinted",
] as const;
export type TlsProxyStats = Record<(typeof TLS_STAT_NAMES)[number], number>;

/**
 * The stats over `buffer` (a SharedArrayBuffer of TLS_STAT_NAMES.length doubles): a proxy on a TLS
 * worker counts into it, and the gateway on the main thread reads it as it is, without a message.
 */
export function tlsStatsOver(buffer: SharedArrayBuffer = new SharedArrayBuffer(8 * TLS_STAT_NAMES.length)): TlsProxyStats {
  const a = new Float64Array(buffer);
  const stats = {} as TlsProxyStats;
  TLS_STAT_NAMES.forEach((name, i) => Object.defineProperty(stats, name, { get: () => a[i]!, set: (v: number) => { a[i] = v; }, enumerable: true }));
  return stats;
}

// A TLS record: alert (21), version 3.3, length 2: level fatal (2), access_denied (49).
const ALERT_ACCESS_DENIED = Buffer.from([21, 3, 3, 0, 2, 2, 49]);

const HOST_BUNDLES = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"];

/** The host's trusted roots: the system bundle where there is one, else Node's own list. */
function hostRoots(): string[] {
  for (const f of HOST_BUNDLES) {
    try {
      const pem = readFileSync(f, "utf8");
      const certs = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g);
      if (certs?.length) return certs;
    } catch {
      // try the next
    }
  }
  return [...tls.rootCertificates];
}

// Upstream verification contexts, one per set of extra CAs, shared by every proxy of the process
// and made on first use: parsing the host's ~150 roots costs tens of milliseconds, which per
// connection would cap interception at a few dozen handshakes a second, and per sandbox would
// slow every start.
const upstreamContexts = new Map<string, tls.SecureContext>();
function upstreamContextFor(extra: readonly string[]): tls.SecureContext {
  const key = extra.join("\n");
  let c = upstreamContexts.get(key);
  if (!c) upstreamContexts.set(key, (c = tls.createSecureContext({ ca: [...hostRoots(), ...extra] })));
  return c;
}


export class TlsProxy extends RedirectListener {
  readonly stats: TlsProxyStats;

  constructor(private readonly o: TlsProxyOptions) {
    super(16384);
    this.stats = o.stats ?? tlsStatsOver();
  }

  protected serve(sock: net.Socket): void {
    sock.on("error", () => sock.destroy());
    let buf: Buffer = Buffer.alloc(0);
    let origin: RedirectOrigin | null = null;
    const timer = setTimeout(() => {
      this.stats.badHello++;
      sock.destroy();
    }, this.o.helloTimeoutMs ?? 10_000);
    sock.once("close", () => clearTimeout(timer));
    // Until the preamble and the ClientHello are in, this reads; then the connection is handed on.
    let reading = true;
    const handOn = (): void => {
      reading = false;
      clearTimeout(timer);
      sock.off("data", onData);
    };
    const onData = (chunk: Buffer): void => {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      if (!origin) {
        if (buf.length < L.REDIRECT_PREAMBLE_BYTES) return;
        origin = parseRedirectPreamble(buf, this.o.token);
        if (!origin) {
          sock.destroy(); // not from the engine
          return;
        }
        buf = buf.subarray(L.REDIRECT_PREAMBLE_BYTES);
        if (denied(origin) && origin.port === 80) {
          // The deny page, in plain HTTP.
          handOn();
          this.stats.denyPages++;
          const o = origin;
          serveDenyPage(sock, buf, (host) => this.denyText(o, host));
          return;
        }
      }
      const hello = parseClientHello(buf);
      if (hello.kind === "more") return;
      handOn();
      sock.pause();
      if (hello.kind === "bad") {
        this.stats.badHello++;
        this.o.onEvent?.({ kind: "tls-bad-hello", sni: undefined, destination: dest(origin), detail: hello.reason });
        sock.destroy();
        return;
      }
      // Everything after the preamble is replayed: to the real server, or to our TLS server.
      sock.unshift(buf);
      void this.decide(sock, origin, hello.sni, hello.alpn).catch(() => sock.destroy());
    };
    sock.on("data", onData);
    sock.on("end", () => {
      if (!reading) return;
      // Ended before a whole ClientHello.
      if (origin) this.stats.badHello++;
      sock.destroy();
    });
  }

  private readonly countMint = (): void => { this.stats.leavesMinted++; };
  private readonly ahead = new RunAhead();

  private leafFor(name: string): Promise<tls.SecureContext> {
    return this.o.ca.contextForAsync(name, this.countMint, this); // (this proxy: its sandbox's share of the cache)
  }

  private denyText(origin: RedirectOrigin, host: string | undefined): string {
    return denyPageText(origin, host, this.o.denyReason);
  }

  private async decide(sock: net.Socket, origin: RedirectOrigin, sni: string | undefined, alpn: string[]): Promise<void> {
    if (denied(origin)) {
      // The deny page, over TLS: our leaf, no upstream at all.
      this.stats.denyPages++;
      const guest = new tls.TLSSocket(sock, { isServer: true, secureContext: await this.leafFor(sni ?? origin.ip), ALPNProtocols: ["http/1.1"] });
      guest.on("error", () => guest.destroy());
      serveDenyPage(guest, Buffer.alloc(0), (host) => this.denyText(origin, host ?? sni));
      return;
    }
    // The pins first: a bypassed name is still held to the domain rule that admitted it.
    const refusal = await this.o.checkSni(origin, sni);
    if (refusal) {
      this.stats.sniDenied++;
      this.o.onEvent?.({ kind: "tls-sni-denied", sni, destination: dest(origin), detail: refusal });
      return this.refuseHandshake(sock);
    }
    if (origin.port !== 853 && sni && matchesPattern(sni, this.o.bypass)) {
      this.stats.bypassed++;
      return this.splice(sock, origin);
    }
    const leafName = sni ?? origin.ip;
    if (origin.port === 853 && this.o.dnsQuery) {
      this.stats.dot++;
      const guest = new tls.TLSSocket(sock, { isServer: true, secureContext: await this.leafFor(leafName) });
      guest.on("error", () => guest.destroy());
      this.handshakeDeadline(guest);
      return this.serveDot(guest, origin);
    }
    // With secrets, or admitted by a domain rule, an intercepted connection offers only what the
    // filters read: HTTP/1.1 and HTTP/2 (whose header blocks are decoded from HPACK). A host some
    // secret is for gets substitution; a domain rule binds every request's authority; every other
    // host's requests are scanned.
    const secrets = this.o.secrets ?? [];
    const bound = origin.admitNameId !== 0 && this.o.checkAuthority !== undefined;
    if (secrets.length || bound) alpn = alpn.filter((p) => p === "h2" || p === "http/1.1");
    const pinned = (secrets.length > 0 || bound) && sni !== undefined && ((await this.o.pinned?.(origin.ip, sni)) ?? false);
    let upstream: tls.TLSSocket;
    try {
      upstream = await this.connectUpstream(origin, sni, alpn);
    } catch (e) {
      this.stats.upstreamFailed++;
      this.o.onEvent?.({ kind: "tls-upstream-failed", sni, destination: dest(origin), detail: (e as Error).message });
      return this.refuseHandshake(sock);
    }
    this.stats.intercepted++;
    const chosen = upstream.alpnProtocol;
    const guest = new tls.TLSSocket(sock, {
      isServer: true,
      secureContext: await this.leafFor(leafName),
      ALPNProtocols: chosen ? [chosen] : undefined,
    });
    this.handshakeDeadline(guest, upstream);
    if (!secrets.length && !bound) return join(guest, upstream, this.ahead);
    const ctx: FilterContext = {
      sni,
      pinned,
      authority: bound ? (host) => this.o.checkAuthority!(origin, host) : undefined,
    };
    const filter = chosen === "h2" ? new Http2RequestFilter(secrets, ctx) : new RequestFilter(secrets, ctx);
    guest.once("close", () => { if (filter.substituted) this.stats.substituted++; });
    // Where a value may go up, what comes down is scrubbed of it (an API reflecting a header, an
    // echo endpoint): the guest never holds a real value.
    let scrubber: ResponseScrubber | Http2ResponseScrubber | undefined;
    if (filter.substituting) {
      if (chosen === "h2") scrubber = new Http2ResponseScrubber(secrets);
      else {
        const s1 = (scrubber = new ResponseScrubber(secrets));
        ctx.onRequest = (method, http10) => s1.request(method, http10);
      }
    }
    joinFiltered(guest, upstream, this.ahead, filter, chosen === "h2", scrubber, {
      scrubbed: (found) => {
        this.stats.scrubbed += found.length;
        for (const f of found) this.o.onEvent?.({ kind: "secret-scrubbed", sni, destination: dest(origin), detail: `the value of secret ${f.secret.env} (${f.form}) in a response was replaced by its placeholder` });
      },
      responseRefused: (why) => this.o.onEvent?.({ kind: "response-refused", sni, destination: dest(origin), detail: why }),
      violation: (v) => this.o.onViolation?.(v, dest(origin)),
      refusal: (r) => {
        this.stats.httpRefused++;
        this.o.onEvent?.({ kind: "http-refused", sni, destination: dest(origin), detail: r.reason });
      },
    });
  }

  /**
   * The guest must finish its handshake in time: a guest that sends a ClientHello and nothing
   * more would otherwise hold its upstream connection open for ever.
   */
  private handshakeDeadline(guest: tls.TLSSocket, upstream?: net.Socket): void {
    const timer = setTimeout(() => {
      guest.destroy();
      upstream?.destroy();
    }, this.o.handshakeTimeoutMs ?? 10_000);
    guest.once("secure", () => clearTimeout(timer));
    guest.once("close", () => clearTimeout(timer));
  }

  // Upstream TLS sessions, resumed on the next connection to the same server and name (a
  // resumption skips the certificate chain's transfer and verification).
  private readonly sessions = new Map<string, Buffer>();

  private connectUpstream(origin: RedirectOrigin, sni: string | undefined, alpn: string[]): Promise<tls.TLSSocket> {
    const key = `${origin.ip}|${origin.port}|${sni ?? ""}|${alpn.join(",")}`;
    return new Promise((resolve, reject) => {
      // Over a socket of our own, so a violation can reset it (a TLS socket cannot).
      const raw = net.connect({ host: this.o.upstreamAddress?.(origin.ip) ?? origin.ip, port: origin.port, noDelay: true });
      const up = tls.connect({
        socket: raw,
        session: this.sessions.get(key),
        servername: sni, // never re-resolved: the guest's destination, the guest's name
        ALPNProtocols: alpn.length ? alpn : undefined,
        secureContext: upstreamContextFor(this.o.upstreamCa),
        rejectUnauthorized: this.o.verifyUpstream,
        // Without SNI the certificate must name the address itself.
        checkServerIdentity: (_host, cert) => tls.checkServerIdentity(sni ?? origin.ip, cert),
      });
      rawSockets.set(up, raw);
      up.on("session", (session: Buffer) => {
        this.sessions.delete(key);
        this.sessions.set(key, session);
        if (this.sessions.size > 1000) this.sessions.delete(this.sessions.keys().next().value!);
      });
      const timer = setTimeout(() => up.destroy(new Error(`no TLS answer from ${dest(origin)} in time`)), this.o.upstreamTimeoutMs ?? 10_000);
      up.once("secureConnect", () => {
        clearTimeout(timer);
        up.removeAllListeners("error");
        resolve(up);
      });
      up.once("error", (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
  }

  /**
   * Abort the guest's handshake with a fatal access_denied alert (RFC 8446 §6.2), in answer to
   * its ClientHello: its client reports "alert access denied", not an empty reply or a hang.
   */
  private refuseHandshake(sock: net.Socket): void {
    sock.end(ALERT_ACCESS_DENIED);
    sock.resume(); // drain what the client still sends until it closes
    setTimeout(() => sock.destroy(), 2000).unref();
  }

  private splice(sock: net.Socket, origin: RedirectOrigin): void {
    const up = net.connect({ host: this.o.upstreamAddress?.(origin.ip) ?? origin.ip, port: origin.port, allowHalfOpen: true, noDelay: true });
    join(sock, up, this.ahead);
    sock.resume();
  }

  private serveDot(guest: tls.TLSSocket, origin: RedirectOrigin): void {
    let buf: Buffer = Buffer.alloc(0);
    let chain = Promise.resolve();
    guest.on("data", (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        const q = Buffer.from(buf.subarray(2, 2 + buf.readUInt16BE(0)));
        buf = buf.subarray(2 + q.length);
        if (q.length < 12) { guest.destroy(); return; }
        const answer = this.o.dnsQuery!(q, origin).catch(() => null);
        // Answers in the order of the queries.
        chain = chain.then(async () => {
          const a = await answer;
          if (!a || guest.destroyed) { guest.end(); return; }
          const len = Buffer.alloc(2);
          len.writeUInt16BE(a.length);
          guest.write(Buffer.concat([len, a]));
        });
      }
      if (buf.length > 65537) guest.destroy();
    });
    guest.on("end", () => void chain.then(() => guest.end()));
  }
}

/** The TCP socket under each upstream TLS socket (to reset it). */
const rawSockets = new WeakMap<tls.TLSSocket, net.Socket>();

/**
 * Where the server's HTTP/2 frames end, in the bytes relayed to the guest: moat may add frames of
 * its own (a refusal) only between two of the server's.
 */
class H2FrameEdge {
  private left = 0; // bytes of the current frame still to come (-n: n bytes of a 9-byte header seen)
  private head = Buffer.alloc(0);
  sent = 0;

  /** How many bytes of `chunk` reach the next frame boundary (chunk.length if none is in it). */
  toBoundary(chunk: Buffer): number {
    let o = 0;
    while (o < chunk.length) {
      if (this.left > 0) {
        const n = Math.min(this.left, chunk.length - o);
        this.left -= n;
        o += n;
        if (this.left === 0) return o;
        continue;
      }
      const need = 9 - this.head.length;
      const take = chunk.subarray(o, o + need);
      this.head = Buffer.concat([this.head, take]);
      o += take.length;
      if (this.head.length === 9) {
        this.left = this.head.readUIntBE(0, 3);
        this.head = Buffer.alloc(0);
        if (this.left === 0) return o;
      }
    }
    return o;
  }

  get atBoundary(): boolean {
    return this.left === 0 && this.head.length === 0;
  }

  /** Account for bytes relayed (every chunk passes through here). */
  relay(chunk: Buffer): void {
    let o = 0;
    while (o < chunk.length) o += this.toBoundary(chunk.subarray(o));
    this.sent += chunk.length;
  }
}

interface FilterEvents {
  violation(v: Violation): void;
  refusal(r: Refusal): void;
  scrubbed(found: ValueFound[]): void;
  /** A response the scrubber could not judge: the connection was closed. */
  responseRefused(why: string): void;
}

/**
 * As join(), with the guest's bytes passed through `filter` on their way up. A violation or a
 * refusal stops the connection: the upstream connection is reset before any of the offending
 * request's bytes reach it; an HTTP client gets a status saying why (HTTP/2: on its stream, after
 * the server's frame in flight), any other stream a reset.
 */
function joinFiltered(guest: tls.TLSSocket, upstream: tls.TLSSocket, ahead: RunAhead, filter: RequestFilter | Http2RequestFilter, h2: boolean,
  scrubber: ResponseScrubber | Http2ResponseScrubber | undefined, events: FilterEvents): void {
  const edge = h2 ? new H2FrameEdge() : undefined;
  // What goes to the guest as fast as the guest reads it (and its share of run-ahead): the server waits meanwhile.
  const toGuestPressure = new Backpressure(upstream, guest, ahead);
  let stopped = false;
  let answer: Buffer | undefined; // what the guest gets once the server's current frame is through
  const kill = () => { guest.destroy(); upstream.destroy(); };
  const resetUpstream = () => {
    const raw = rawSockets.get(upstream);
    if (raw) raw.resetAndDestroy();
    else upstream.destroy();
  };
  const finish = () => {
    resetUpstream();
    if (answer) guest.end(answer);
    else guest.destroy();
  };
  let draining = false; // HTTP/1.1 refusal: the answers to requests already sent come first
  // The server's bytes, scrubbed of secret values where a value may have gone up (what is held
  // back while it could be the start of one goes after a short pause of the server's).
  let idleTimer: NodeJS.Timeout | undefined;
  const scrubbed = (r: ScrubResult): Buffer | null => {
    // (events are told after the bytes are dealt with: a callback that throws stops nothing)
    if (r.scrubbed.length) { const found = r.scrubbed; queueMicrotask(() => events.scrubbed(found)); }
    const out = r.out.length === 1 ? r.out[0]! : Buffer.concat(r.out);
    if (r.error) {
      // Bytes it cannot judge never reach the guest.
      if (out.length) guest.write(out);
      stopped = true;
      resetUpstream();
      guest.destroy();
      events.responseRefused(r.error);
      return null;
    }
    if (r.close) {
      if (out.length) guest.write(out);
      stopped = true;
      upstream.destroy();
      guest.end();
      return null;
    }
    return out;
  };
  // A scrubber that throws (a server's bytes it was not written for) fails this connection closed,
  // not the thread that serves every sandbox's TLS on it.
  const judge = (f: () => ScrubResult): ScrubResult => {
    try {
      return f();
    } catch (e) {
      return { out: [], scrubbed: [], error: `the response could not be read (${(e as Error)?.message ?? String(e)})` };
    }
  };
  const fromServer = (chunk: Buffer): Buffer | null => {
    if (!scrubber) return chunk;
    const out = scrubbed(judge(() => scrubber.push(chunk)));
    // One timer for the connection, pushed back on every chunk that leaves bytes held (refresh()
    // re-arms a fired one); nothing held (most chunks), nothing to release.
    if (!scrubber.holding) return out;
    if (idleTimer) idleTimer.refresh();
    else {
      idleTimer = setTimeout(() => {
        if (guest.destroyed || stopped) return;
        const rest = scrubbed(judge(() => scrubber.idle()));
        if (rest?.length) { edge?.relay(rest); guest.write(rest); }
      }, 50);
      idleTimer.unref();
    }
    return out;
  };
  const toGuest = (c: Buffer) => toGuestPressure.wrote(guest.write(c));
  upstream.on("data", (raw: Buffer) => {
    if (draining) {
      // (back-pressured too: a guest that stops reading would have moat hold all the server sends)
      const c = fromServer(raw);
      if (c?.length) toGuest(c);
      return;
    }
    if (stopped) {
      // Relay up to the end of the server's frame in flight, then our answer.
      if (!edge || !answer) return;
      const c = fromServer(raw);
      if (!c) return;
      const n = edge.toBoundary(c);
      guest.write(c.subarray(0, n));
      if (edge.atBoundary) finish();
      return;
    }
    const chunk = fromServer(raw);
    if (!chunk || !chunk.length) return;
    edge?.relay(chunk);
    toGuest(chunk);
  });
  upstream.on("end", () => {
    clearTimeout(idleTimer);
    if (scrubber && (!stopped || draining)) {
      const r = judge(() => ({ out: scrubber.end(), scrubbed: [] }));
      if (r.error) {
        stopped = true;
        kill();
        events.responseRefused(r.error);
        return;
      }
      for (const b of r.out) if (b.length) guest.write(b);
    }
    if (draining) finish();
    else if (!stopped) guest.end();
  });
  guest.on("error", kill);
  upstream.on("error", kill);
  upstream.on("close", () => {
    if (draining && !guest.writableEnded) finish();
    else if (!guest.writableEnded && !stopped) guest.destroy();
  });
  guest.on("close", () => { if (!upstream.writableEnded) upstream.destroy(); });
  const stop = (a: Buffer | undefined) => {
    stopped = true;
    answer = a;
    if (!edge || edge.atBoundary) return finish();
    // Nothing more goes upstream; the guest's answer waits for the end of the server's frame.
    setTimeout(() => { if (!guest.destroyed && !guest.writableEnded) kill(); }, 2000).unref();
  };
  guest.on("data", (chunk: Buffer) => {
    if (stopped) return;
    let r: H2Result;
    try {
      r = filter.push(chunk);
    } catch {
      stopped = true; // a filter error (malformed framing, or a bug): fail closed
      resetUpstream();
      kill();
      return;
    }
    let ok = true;
    // The pieces of a request (a head cut around its substitutions) go up as one TLS record and
    // one write: corked, the TLS socket encrypts them together.
    if (r.out.length > 1) upstream.cork();
    for (const b of r.out) if (b.length) ok = upstream.write(b) && ok;
    if (r.out.length > 1) upstream.uncork();
    // The connection is stopped first, then the event told: a callback that throws must not
    // leave it going.
    if (r.violation) {
      const text = forbiddenText(r.violation);
      if (!r.violation.http) stop(undefined);
      else if (h2) stop(forbiddenH2(r.stream ?? 0, text, 403, edge!.sent === 0));
      else stop(forbidden(r.violation));
      events.violation(r.violation);
      return;
    }
    if (r.refusal) {
      if (h2) {
        stop(forbiddenH2(r.stream ?? 0, `moat: refused: ${r.refusal.reason}\n`, r.refusal.status, edge!.sent === 0));
        return events.refusal(r.refusal);
      }
      // Nothing of the refused request left: the server answers what it was sent before it (its
      // end of the connection follows ours), then the guest gets the refusal.
      stopped = true;
      draining = true;
      answer = refusedHttp(r.refusal);
      upstream.end();
      setTimeout(() => { if (!guest.writableEnded) finish(); }, 2000).unref();
      events.refusal(r.refusal);
      return;
    }
    if (!ok) {
      guest.pause();
      upstream.once("drain", () => guest.resume());
    }
  });
  guest.on("end", () => {
    if (stopped) return;
    let r: H2Result;
    try {
      r = filter.end();
    } catch {
      stopped = true; // as for push(): fail closed
      resetUpstream();
      kill();
      return;
    }
    for (const b of r.out) if (b.length) upstream.write(b);
    if (r.violation) {
      stop(r.violation.http && !h2 ? forbidden(r.violation) : undefined);
      return events.violation(r.violation);
    }
    upstream.end();
  });
}

/**
 * How far a relay may run ahead of a slow reader. Every connection may buffer what a stream's
 * high-water mark allows (16 KiB); RUN_AHEAD_SLOTS of a proxy's connections at a time may buffer
 * up to WRITE_AHEAD_MAX, which keeps a bulk transfer's two sides busy at once instead of taking
 * turns (bench:tls bulk: 2.5-2.9 -> 3.1-3.5 Gbit/s). A proxy's buffering stays bounded by
 * RUN_AHEAD_SLOTS * WRITE_AHEAD_MAX plus 16 KiB a connection, whatever a guest does with its reads.
 */
export const WRITE_AHEAD_MAX = 1024 * 1024;
export const RUN_AHEAD_SLOTS = 16;

/** A proxy's slots for connections buffering beyond a stream's high-water mark. */
export class RunAhead {
  private used = 0;
  take(): boolean {
    if (this.used >= RUN_AHEAD_SLOTS) return false;
    this.used++;
    return true;
  }
  give(): void {
    this.used--;
  }
}

/**
 * Back-pressure from `to` onto `from`. Past the high-water mark (a write that returned false: a
 * drain follows) `from` goes on being read only with a RunAhead slot, and only up to
 * WRITE_AHEAD_MAX; the slot is given back at the drain, or when either side closes.
 */
class Backpressure {
  private slot = false;
  private waiting = false;

  constructor(private readonly from: net.Socket, private readonly to: net.Socket, private readonly ahead: RunAhead) {
    from.once("close", this.release);
    to.once("close", this.release);
  }

  private readonly release = (): void => {
    if (this.slot) {
      this.slot = false;
      this.ahead.give();
    }
  };

  private readonly drained = (): void => {
    this.waiting = false;
    this.release();
    this.from.resume();
  };

  /** After each write to `to`: what it returned. */
  wrote(ok: boolean): void {
    if (ok) return;
    if (!this.waiting) {
      this.waiting = true;
      this.slot = this.ahead.take();
      this.to.once("drain", this.drained);
    }
    if (!this.slot || this.to.writableLength > WRITE_AHEAD_MAX) this.from.pause();
  }
}

/** @internal (exported for its test) `from`'s bytes to `to`, back-pressured (Backpressure). */
export function relay(from: net.Socket, to: net.Socket, ahead: RunAhead): void {
  const bp = new Backpressure(from, to, ahead);
  from.on("data", (c: Buffer) => bp.wrote(to.write(c)));
  from.on("end", () => to.end());
  from.resume(); // (as pipe() does: a socket paused until its relay was set up flows now)
}

/** Bytes both ways, back-pressured, half-close carried; an error on either side ends both. */
function join(a: net.Socket, b: net.Socket, ahead: RunAhead): void {
  relay(a, b, ahead);
  relay(b, a, ahead);
  const kill = () => { a.destroy(); b.destroy(); };
  a.on("error", kill);
  b.on("error", kill);
  a.on("close", () => { if (!b.writableEnded) b.destroy(); });
  b.on("close", () => { if (!a.writableEnded) a.destroy(); });
}
