// upstream.ts — the resolvers moat forwards guest queries to (DESIGN §7).
//
// A query goes to each server in order over UDP. Each attempt waits up to `timeoutMs`; a timeout
// or a transport error moves on to the next server.
//
// Sockets: a socket per query costs more than the rest of the interceptor together, so each
// server has a small pool (POOL_SIZE) of connected UDP sockets shared by every resolver in the
// process. A query goes out on a pool socket picked at random, under a random ID not in use on
// it; a socket is retired after MAX_USES queries (and closed when idle), so the source port keeps
// changing: an off-path forger must guess one of POOL_SIZE random ports and the 16-bit ID, and
// the question, within the answer's flight time. Connected sockets still turn ICMP
// port-unreachable into ECONNREFUSED, failing that socket's queries at once instead of after the
// timeout; the socket is then dropped from the pool. An answer with TC=1 is asked again of the same server over
// TCP (2-byte length prefix); if that fails the next server is tried, and if none does better the
// truncated answer is returned (the guest will retry over TCP itself).
//
// The guest chooses the query ID, so it is not sent upstream: each query goes out under a random
// ID, and a datagram is taken as the answer only if it carries that ID, QR=1 and the same question
// (an answer without a question is accepted only as an error answer). Anything else arriving on
// the socket is ignored. The answer is handed back under the guest's ID.
import dgram from "node:dgram";
import net from "node:net";
import { randomInt, randomFillSync } from "node:crypto";
import { promises as dnsPromises, type LookupAddress } from "node:dns";
import { readFileSync } from "node:fs";
import { ConfigError } from "../errors.js";
import { readHeader, readQuestion, withId, type QuestionInfo } from "./wire.js";

export interface Nameserver {
  ip: string;
  port: number;
}

/** Every upstream attempt for a query failed (timeouts, refused connections, bad answers). */
export class DnsUpstreamError extends Error {
  readonly code = "ERR_DNS_UPSTREAM" as const;
  /** One line per failed attempt, "IP:PORT/udp: reason". */
  readonly attempts: readonly string[];
  constructor(message: string, attempts: readonly string[]) {
    super(message);
    this.name = "DnsUpstreamError";
    this.attempts = attempts;
  }
}

export type LookupAll = (hostname: string, options: { all: true }) => Promise<LookupAddress[]>;

const MAX_MESSAGE = 65535;

export class UpstreamResolver {
  readonly servers: readonly Nameserver[];
  readonly timeoutMs: number;

  /**
   * `pooled` (default true): share the process's socket pools. A resolver the guest chose is asked
   * with `pooled: false`, one socket per query closed with it, so no guest can make moat hold
   * sockets for arbitrary addresses.
   */
  constructor(servers: readonly Nameserver[], timeoutMs: number, { pooled = true, transport }: {
    pooled?: boolean;
    /** How its sockets reach the servers (default: this thread's, setDatagramTransport); pools are per transport. */
    transport?: DatagramTransport;
  } = {}) {
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) {
      throw new ConfigError(`DNS query timeout ${timeoutMs} ms is not a positive number`, "e.g. 5000");
    }
    for (const s of servers) {
      if (net.isIP(stripZone(s.ip)) === 0 || !Number.isInteger(s.port) || s.port < 1 || s.port > 65535) {
        throw new ConfigError(`nameserver ${JSON.stringify(s)} is not an IP address and port`, `e.g. { ip: "192.0.2.53", port: 53 }`);
      }
    }
    this.servers = servers.map((s) => ({ ip: s.ip, port: s.port }));
    this.timeoutMs = timeoutMs;
    const t = (this.transport = transport ?? defaultTransport);
    this.pools = this.servers.map((s) => (pooled ? poolFor(s, t) : new UdpPool(s, t, () => {}, 1)));
  }

  private readonly pools: UdpPool[];
  /** How its sockets reach the servers. */
  readonly transport: DatagramTransport;

  /**
   * Send `message` (a DNS query) upstream; resolves with the answer under the query's own ID.
   * `known`: its question, when the caller has read it already.
   */
  async query(message: Buffer, known?: QuestionInfo): Promise<Buffer> {
    const h = readHeader(message);
    if (!h) throw new DnsUpstreamError("not a DNS message (shorter than a header)", []);
    let question: QuestionInfo | null = known ?? null;
    try {
      if (!question && h.qdcount > 0) question = readQuestion(message);
    } catch (e) {
      throw new DnsUpstreamError(`not a DNS query (${(e as Error).message})`, []);
    }
    const attempts: string[] = [];
    let truncated: Buffer | null = null;
    for (let i = 0; i < this.servers.length; i++) {
      const server = this.servers[i]!;
      let answer: Buffer;
      try {
        answer = await this.pools[i]!.exchange(message, question, this.timeoutMs);
      } catch (e) {
        attempts.push(`${formatServer(server)}/udp: ${reason(e)}`);
        continue;
      }
      if (readHeader(answer)!.tc) {
        try {
          const id = randomInt(0, 0x10000);
          answer = await this.tcpExchange(server, withId(message, id), id, question);
        } catch (e) {
          attempts.push(`${formatServer(server)}/tcp: ${reason(e)}`);
          truncated ??= answer;
          continue;
        }
      }
      return withId(answer, h.id);
    }
    if (truncated) return withId(truncated, h.id);
    const what = this.servers.length === 0 ? "no upstream nameservers are configured" : `no upstream nameserver answered (${attempts.join("; ")})`;
    throw new DnsUpstreamError(what, attempts);
  }

  private tcpExchange(server: Nameserver, msg: Buffer, id: number, question: QuestionInfo | null): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const sock = net.connect({ host: server.ip, port: server.port });
      let done = false;
      let buf: Buffer = Buffer.alloc(0);
      const finish = (err: Error | null, answer?: Buffer): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        sock.destroy();
        if (err) reject(err);
        else resolve(answer!);
      };
      const timer = setTimeout(() => finish(new Error(`no answer within ${this.timeoutMs} ms`)), this.timeoutMs);
      sock.on("error", (e) => finish(e));
      sock.on("connect", () => {
        const len = Buffer.alloc(2);
        len.writeUInt16BE(msg.length);
        sock.write(Buffer.concat([len, msg]));
      });
      sock.on("data", (chunk: Buffer) => {
        buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
        if (buf.length < 2) return;
        const len = buf.readUInt16BE(0);
        if (buf.length < 2 + len) return;
        const answer = Buffer.from(buf.subarray(2, 2 + len));
        if (isAnswerTo(answer, id, question)) finish(null, answer);
        else finish(new Error("the answer does not match the query"));
      });
      sock.on("end", () => finish(new Error("connection closed before an answer")));
    });
  }

  /**
   * Parse nameserver specs: "IP", "IP:PORT", "[IPv6]", "[IPv6]:PORT", bare IPv6, "HOSTNAME",
   * "HOSTNAME:PORT" (port 53 when absent). Hostnames are resolved once, now, to all their
   * addresses (`lookup` is node:dns's, replaceable for tests). Duplicates are dropped, order kept.
   */
  static async resolveNameservers(specs: readonly string[], lookup: LookupAll = dnsPromises.lookup): Promise<Nameserver[]> {
    const out: Nameserver[] = [];
    const seen = new Set<string>();
    const add = (ip: string, port: number): void => {
      const key = `${ip}|${port}`;
      if (!seen.has(key)) {
        seen.add(key);
        out.push({ ip, port });
      }
    };
    for (const spec of specs) {
      const p = parseSpec(spec);
      if (p.ip !== null) {
        add(p.ip, p.port);
        continue;
      }
      let addrs: LookupAddress[];
      try {
        addrs = await lookup(p.host, { all: true });
      } catch (e) {
        throw new ConfigError(`nameserver "${spec}": ${p.host} could not be resolved (${reason(e)})`, "give the nameserver as an IP address, or check the host's resolver");
      }
      if (addrs.length === 0) throw new ConfigError(`nameserver "${spec}": ${p.host} has no addresses`, "give the nameserver as an IP address");
      for (const a of addrs) add(a.address, p.port);
    }
    return out;
  }

  /** The nameservers of the host's resolver configuration (`nameserver` lines), port 53. */
  static hostResolvers(path = "/etc/resolv.conf"): Nameserver[] {
    return hostResolvers(path);
  }
}

/**
 * The `nameserver` entries of a resolv.conf, port 53, in order; [] when the file is missing or
 * names none. Entries that are not IP addresses are skipped, as the C library does.
 */
export function hostResolvers(path = "/etc/resolv.conf"): Nameserver[] {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw new ConfigError(`cannot read ${path}: ${reason(e)}`, "pin nameservers explicitly in the DNS settings");
  }
  const out: Nameserver[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.replace(/[#;].*$/, "").trim();
    const m = /^nameserver\s+(\S+)$/.exec(line);
    if (!m) continue;
    const ip = m[1]!;
    if (net.isIP(stripZone(ip)) === 0) continue;
    if (!out.some((s) => s.ip === ip)) out.push({ ip, port: 53 });
  }
  return out;
}

/** "IP", "IP:PORT", "[IPv6]" or "[IPv6]:PORT" (port 53 when absent); a hostname is refused. */
export function parseNameserverAddress(spec: string): Nameserver {
  const p = parseSpec(spec);
  if (p.ip === null) {
    throw new ConfigError(`"${spec}" is not an address`, "expected IP, IP:PORT or [IPv6]:PORT, e.g. 192.0.2.53:53");
  }
  return { ip: p.ip, port: p.port };
}

type Spec = { ip: string; host: null; port: number } | { ip: null; host: string; port: number };

const HOSTNAME = /^(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*\.?$/i;

function parseSpec(spec: string): Spec {
  const bad = (why: string): never => {
    throw new ConfigError(`nameserver "${spec}" ${why}`, `write IP, IP:PORT, [IPv6]:PORT, HOSTNAME or HOSTNAME:PORT, e.g. 192.0.2.53, 192.0.2.53:5353, [2001:db8::53]:53, dns.example`);
  };
  if (typeof spec !== "string") return bad("is not a string");
  const s = spec.trim();
  if (s === "") return bad("is empty");
  const port = (text: string | undefined): number => {
    if (text === undefined) return 53;
    if (!/^\d{1,5}$/.test(text)) return bad(`has a bad port "${text}"`);
    const n = Number(text);
    if (n < 1 || n > 65535) return bad(`has port ${n}, outside 1-65535`);
    return n;
  };
  const bracket = /^\[([^\]]+)\](?::([^:]*))?$/.exec(s);
  if (bracket) {
    if (net.isIPv6(stripZone(bracket[1]!))) return { ip: bracket[1]!, host: null, port: port(bracket[2]) };
    return bad("has brackets around something that is not an IPv6 address");
  }
  if (net.isIP(stripZone(s)) !== 0) return { ip: s, host: null, port: 53 };
  const colons = s.split(":").length - 1;
  if (colons > 1) return bad("is not an IP address (write an IPv6 address with a port as [IPv6]:PORT)");
  const [host, portText] = colons === 1 ? [s.slice(0, s.indexOf(":")), s.slice(s.indexOf(":") + 1)] : [s, undefined];
  const p = port(portText);
  if (net.isIPv4(host)) return { ip: host, host: null, port: p };
  if (/^[\d.]+$/.test(host)) return bad("is not a valid IPv4 address");
  if (!HOSTNAME.test(host)) return bad("is not an IP address or a hostname");
  return { ip: null, host: host.replace(/\.$/, ""), port: p };
}

function stripZone(ip: string): string {
  const i = ip.indexOf("%");
  return i < 0 ? ip : ip.slice(0, i);
}

function formatServer(s: Nameserver): string {
  return net.isIPv6(stripZone(s.ip)) ? `[${s.ip}]:${s.port}` : `${s.ip}:${s.port}`;
}

function reason(e: unknown): string {
  if (e instanceof Error) return (e as NodeJS.ErrnoException).code ?? e.message;
  return String(e);
}

/** Is `m` the answer to the query sent under `id` with `question`? */
function isAnswerTo(m: Buffer, id: number, question: QuestionInfo | null, sent?: Buffer): boolean {
  if (m.length > MAX_MESSAGE) return false;
  const h = readHeader(m);
  if (!h || h.id !== id || !h.qr || h.opcode !== 0) return false;
  if (h.qdcount === 0) return question === null || h.rcode !== 0; // an error answer may omit the question
  if (question === null || h.qdcount !== 1) return false;
  // Servers echo the question byte for byte: equal bytes need no reading (other case, or a
  // compressed name, is read and compared below).
  if (sent && m.length >= question.end && m.compare(sent, question.start, question.end, question.start, question.end) === 0) return true;
  try {
    const q = readQuestion(m);
    return q.name === question.name && q.type === question.type && q.klass === question.klass;
  } catch {
    return false;
  }
}

// ---- the UDP socket pools -------------------------------------------------------------------------

const POOL_SIZE = 8;
const MAX_USES = 128;
const IDLE_CLOSE_MS = 10_000;

interface Pending { question: QuestionInfo | null; sent: Buffer; deadline: number; timeoutMs: number; done: (err: Error | null, answer?: Buffer) => void }

// Random 16-bit numbers (query IDs, socket picks) drawn from a buffer refilled from the CSPRNG:
// a call into node:crypto per query costs more than the rest of the exchange's bookkeeping.
const randoms = new Uint16Array(2048);
let randomAt = randoms.length;
function random16(): number {
  if (randomAt === randoms.length) {
    randomFillSync(randoms);
    randomAt = 0;
  }
  return randoms[randomAt++]!;
}

/** How often a pool looks for queries past their deadline (one timer per pool, not per query). */
const SWEEP_MS = 25;

/**
 * How pool sockets reach their server: Node's dgram by default; the engine worker plugs in
 * native-vmm's upstream sockets (setDatagramTransport), which answer within the worker's own
 * wake-ups instead of a libuv callback per datagram.
 */
export interface DatagramTransport {
  /** A connected UDP channel to `server`; `onMessage` gets its datagrams, `onError` its failure (once). */
  open(server: Nameserver, onMessage: (m: Buffer) => void, onError: (e: Error) => void): DatagramChannel;
}
export interface DatagramChannel {
  /** Resolves once datagrams can be sent (dgram: after connect). */
  readonly ready: Promise<void>;
  readonly isReady: boolean;
  send(m: Buffer): void;
  close(): void;
}

/** Node's dgram: the default, and the fallback for what native sockets do not take (zoned addresses). */
export const dgramTransport: DatagramTransport = {
  open(server, onMessage, onError) {
    const sock = dgram.createSocket(net.isIPv6(stripZone(server.ip)) ? "udp6" : "udp4");
    sock.unref(); // an idle pool never holds the process open
    sock.on("message", onMessage);
    sock.on("error", onError);
    const ch = {
      isReady: false,
      // A connect that fails (no route, a bad address) reports to its callback, not to 'error'.
      ready: new Promise<void>((resolve) => sock.connect(server.port, server.ip, (err?: Error) => {
        if (err) onError(err);
        else ch.isReady = true;
        resolve();
      })),
      // No send callback: it costs a request object per datagram. A send error surfaces as the
      // socket's 'error' event.
      send: (m: Buffer) => sock.send(m),
      close: () => { try { sock.close(); } catch { /* closed */ } },
    };
    return ch;
  },
};

let defaultTransport: DatagramTransport = dgramTransport;

/** Use `t` for the pool sockets of resolvers made from now on without a transport of their own (in this thread). */
export function setDatagramTransport(t: DatagramTransport): void {
  defaultTransport = t;
}

/** One connected UDP socket and the queries in flight on it, by ID. */
class PoolSocket {
  private readonly ch: DatagramChannel;
  readonly pending = new Map<number, Pending>();
  uses = 0;
  private dead = false;
  get isDead(): boolean { return this.dead; }
  get connected(): boolean { return this.ch.isReady; }
  get ready(): Promise<void> { return this.ch.ready; }

  constructor(server: Nameserver, transport: DatagramTransport, private readonly onDead: (s: PoolSocket) => void) {
    this.ch = transport.open(server, (m) => this.onMessage(m), (e) => this.fail(e));
  }

  send(m: Buffer): void {
    this.ch.send(m);
  }

  private onMessage(m: Buffer): void {
    if (m.length < 12) return;
    const id = m.readUInt16BE(0);
    const p = this.pending.get(id);
    if (!p || !isAnswerTo(m, id, p.question, p.sent)) return; // not an answer we are waiting for: ignored
    this.pending.delete(id);
    p.done(null, m);
  }

  /** The socket failed (e.g. ECONNREFUSED from ICMP): its queries fail now, and it leaves the pool. */
  fail(e: Error): void {
    if (this.dead) return;
    this.dead = true;
    this.onDead(this);
    for (const p of this.pending.values()) p.done(e);
    this.pending.clear();
    this.ch.close();
  }

  close(): void {
    if (this.dead) return;
    this.dead = true;
    this.ch.close();
  }

  /** An ID free on this socket (random; at most 64 Ki in flight, far above what the interceptor allows). */
  freeId(): number {
    for (;;) {
      const id = random16();
      if (!this.pending.has(id)) return id;
    }
  }
}

class UdpPool {
  private active: PoolSocket[] = [];
  private readonly retired = new Set<PoolSocket>(); // out of the pool, queries still in flight
  private idleTimer: NodeJS.Timeout | undefined;
  private sweeper: NodeJS.Timeout | undefined;

  /** `maxUses`: queries per socket before it is retired (1: a socket per query). */
  constructor(private readonly server: Nameserver, private readonly transport: DatagramTransport, private readonly onIdle: () => void, private readonly maxUses = MAX_USES) {}

  async exchange(message: Buffer, question: QuestionInfo | null, timeoutMs: number): Promise<Buffer> {
    const s = this.pick();
    const id = s.freeId();
    const out = withId(message, id);
    const answer = new Promise<Buffer>((resolve, reject) => {
      s.pending.set(id, {
        question,
        sent: out,
        deadline: performance.now() + timeoutMs,
        timeoutMs,
        done: (err, answer) => {
          this.afterQuery(s);
          if (err) reject(err);
          else resolve(answer!);
        },
      });
      this.sweeper ??= setInterval(() => this.sweep(), SWEEP_MS);
      // No send callback: it costs a request object per datagram. A send error surfaces as the
      // socket's 'error' event, which fails the socket's queries (PoolSocket.fail).
      const send = (): void => {
        if (s.isDead) return; // failed meanwhile: its queries were failed with it
        try {
          s.send(out);
        } catch (e) {
          s.fail(e as Error);
        }
      };
      if (s.connected) send();
      else void s.ready.then(send);
    });
    if (++s.uses >= this.maxUses) this.retire(s); // closed once this and its other queries are done
    return answer;
  }

  /** A random socket of the pool, opening one while it is short of POOL_SIZE. */
  private pick(): PoolSocket {
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    if (this.active.length < POOL_SIZE) {
      const s = new PoolSocket(this.server, this.transport, (dead) => this.retire(dead));
      this.active.push(s);
      return s;
    }
    return this.active[random16() % this.active.length]!;
  }

  /** Fail the queries past their deadline; stop sweeping once nothing is in flight. */
  private sweep(): void {
    const now = performance.now();
    const expired: [PoolSocket, number, Pending][] = [];
    for (const s of [...this.active, ...this.retired]) {
      for (const [id, p] of s.pending) if (p.deadline <= now) expired.push([s, id, p]);
    }
    for (const [s, id, p] of expired) {
      s.pending.delete(id);
      p.done(new Error(`no answer within ${p.timeoutMs} ms`));
    }
    if ([...this.active, ...this.retired].every((x) => x.pending.size === 0)) {
      clearInterval(this.sweeper);
      this.sweeper = undefined;
    }
  }

  /** Out of the pool; closed once its last query has ended. */
  private retire(s: PoolSocket): void {
    const i = this.active.indexOf(s);
    if (i >= 0) this.active.splice(i, 1);
    if (s.pending.size === 0 || s.isDead) s.close();
    else this.retired.add(s);
  }

  private afterQuery(s: PoolSocket): void {
    if (this.retired.has(s) && s.pending.size === 0) {
      this.retired.delete(s);
      s.close();
    }
    if (this.active.every((x) => x.pending.size === 0) && !this.idleTimer) {
      this.idleTimer = setTimeout(() => {
        this.idleTimer = undefined;
        for (const x of this.active.splice(0)) x.close();
        this.onIdle(); // forgotten: a guest naming many resolvers leaves no pools behind
      }, IDLE_CLOSE_MS);
      this.idleTimer.unref();
    }
  }
}

// The pools of each transport (an engine worker's sandboxes each have their own: their sockets
// live in that sandbox's data path), by server.
const poolsOf = new WeakMap<DatagramTransport, Map<string, UdpPool>>();

function poolFor(server: Nameserver, transport: DatagramTransport): UdpPool {
  let pools = poolsOf.get(transport);
  if (!pools) poolsOf.set(transport, (pools = new Map()));
  const key = `${server.ip}|${server.port}`;
  let p = pools.get(key);
  if (!p) {
    const all = pools;
    p = new UdpPool(server, transport, () => all.delete(key));
    pools.set(key, p);
  }
  return p;
}
