// tls-worker.ts — a TLS worker thread: serves the TLS proxies (proxy.ts) of the sandboxes the main
// thread assigns to it (tls-host.ts), so interception and secret filtering run off the main
// thread and grow with cores.
//
// Each proxy is opened by an `open` message carrying what it is made from (all structured-clonable:
// the CA as its share, the secrets, the gateway's addresses, the policy's names and rules), a
// SharedArrayBuffer its stats are counted into, and two MessagePorts: `control` (this side exposes
// TlsWorkerControl through comlink) and `calls` (the main thread's TlsCalls: DoT queries, events,
// violations, minting a burst's leaves, and the last word on a name the replica here refuses).
//
// Names are checked here, on a replica of the gateway's name table and DNS pins: pins come from the
// main thread as the sandbox's DNS answers, and a name the replica does not know yet (a pin still
// on its way) is asked of the main thread before a connection is refused (and learnt, if allowed).
// A request's authority on a connection already open is judged by the replica alone (the filters
// are synchronous): a name other than the SNI whose pin is still on its way is refused.
import { parentPort } from "node:worker_threads";
import * as Comlink from "comlink";
import nodeEndpoint from "comlink/dist/esm/node-adapter.mjs";
import ipaddr from "ipaddr.js";
import { CertificateAuthority, type CaShare, type MintTask } from "./ca.js";
import { TlsProxy, tlsStatsOver, type TlsEvent } from "./proxy.js";
import { PinnedNames, boundName } from "./setup.js";
import type { RedirectOrigin } from "../engine/redirect.js";
import type { Secret } from "../secrets/secrets.js";
import type { MessagePort } from "node:worker_threads";

/** What a proxy is made from (tls-host.ts sends it). */
export interface TlsProxySetup {
  token: Uint8Array;
  ca: CaShare;
  bypass: string[];
  verifyUpstream: boolean;
  upstreamCa: string[];
  /** The gateway's IPv4 address (its TLS goes to the host's 127.0.0.1) and its others (to ::1). */
  gatewayIp4: string;
  gatewayOthers: string[];
  secrets: Secret[];
  /** DoT is answered (through TlsCalls.dnsQuery). */
  dot: boolean;
  /** The gateway's name table (index + 1 = name id) and the policy's rules, described. */
  names: string[];
  rules: string[];
}

export interface TlsOpenMessage {
  open: { setup: TlsProxySetup; stats: SharedArrayBuffer; control: MessagePort; calls: MessagePort };
}

/** The worker's first message: its channel to the process's minting pool (TlsMint), for every CA here. */
export interface TlsMintMessage {
  mint: MessagePort;
}

export interface TlsMint {
  mint(task: MintTask): Promise<string>;
}

/** What the main thread answers for a proxy. */
export interface TlsCalls {
  /** A DoT query's answer, and the pins it made (with their expiry). */
  dnsQuery(query: Uint8Array, origin: RedirectOrigin): Promise<{ answer: Uint8Array | null; pins: { ip: string; name: string; until: number }[] }>;
  event(e: TlsEvent): void;
  violation(v: { secret: string; where: string; form: string }, destination: string): void;
  /** The authoritative name check (Gateway.boundName): a reason to refuse, or null. */
  check(origin: RedirectOrigin, name: string | undefined, what: string): string | null;
  /** The authoritative pin: until when (ms since the epoch) `name` is pinned to `ip`; 0: never answered. */
  pinnedUntil(ip: string, name: string): number;
}

/** What the main thread can ask of a proxy here. */
export interface TlsWorkerControl {
  address(): Promise<{ address: string; port: number }>;
  pins(list: { ip: string; name: string; ttlMs: number }[]): void;
  policy(names: string[], rules: string[]): void;
  close(): Promise<void>;
}

// One CA object per CA on this thread (the process's ephemeral one is shared by most sandboxes):
// its leaf cache then serves every sandbox here. A burst's leaves are minted through the worker's
// own channel to the minting pool, not any one sandbox's (which closes with it); a mint that does
// not come back in time is done here (ca.ts).
const cas = new Map<string, CertificateAuthority>();
const MINT_TIMEOUT_MS = 10_000;
let minter: Comlink.Remote<TlsMint> | undefined;

function mintOnPool(task: MintTask): Promise<string> {
  if (!minter) return Promise.reject(new Error("no minting channel"));
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    minter.mint(task),
    new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error("the minting pool did not answer in time")), MINT_TIMEOUT_MS); }),
  ]).finally(() => clearTimeout(timer));
}

function open(m: TlsOpenMessage["open"]): void {
  const { setup } = m;
  const calls = Comlink.wrap<TlsCalls>(nodeEndpoint(m.calls));
  let names = setup.names;
  let rules = setup.rules;
  const pins = new PinnedNames();
  let ca = cas.get(setup.ca.certPem);
  if (!ca) cas.set(setup.ca.certPem, (ca = CertificateAuthority.fromShare(setup.ca, mintOnPool)));
  const others = new Set(setup.gatewayOthers.map((a) => ipaddr.parse(a).toString()));
  /** The replica's judgement (the gateway's boundName, on this worker's names and pins). */
  const local = (origin: RedirectOrigin, name: string | undefined, what: string): string | null =>
    boundName(names, pins, origin.admitNameId, origin.ip, name, what);
  /**
   * At a connection's start: a refusal only on the main thread's word. A name it allows on a
   * domain rule's connection is pinned to the address there: the replica learns the pin (the
   * requests' authorities on this connection are judged here alone).
   */
  const checked = async (origin: RedirectOrigin, name: string | undefined, what: string): Promise<string | null> => {
    if (local(origin, name, what) === null) return null;
    const reason = await calls.check(origin, name, what);
    if (reason === null && origin.admitNameId && name) await learn(origin.ip, name);
    return reason;
  };
  /** The main thread's pin of `name` to `ip`, with its expiry (not a fresh one): into the replica. */
  const learn = async (ip: string, name: string): Promise<boolean> => {
    const until = await calls.pinnedUntil(ip, name);
    if (until <= Date.now()) return false;
    pins.addUntil(ip, name, until);
    return true;
  };
  const proxy = new TlsProxy({
    token: Buffer.from(setup.token),
    ca,
    bypass: setup.bypass,
    verifyUpstream: setup.verifyUpstream,
    upstreamCa: setup.upstreamCa,
    upstreamAddress: (ip) => (ip === setup.gatewayIp4 ? "127.0.0.1" : others.has(ipaddr.parse(ip).toString()) ? "::1" : ip),
    denyReason: (rule) => (rule === 0 ? "the default action (deny)" : `rule ${rules[rule - 1] ?? rule - 1}`),
    checkSni: (origin, sni) => checked(origin, sni, "SNI"),
    checkAuthority: (origin, host) => local(origin, host, "the request's authority"),
    // (a copy of exactly the query: a view's whole backing store would be cloned with it)
    dnsQuery: setup.dot ? async (query, origin) => {
      const { answer: a, pins: made } = await calls.dnsQuery(new Uint8Array(query), origin);
      for (const p of made) if (p.until > 0) pins.addUntil(p.ip, p.name, p.until);
      return a && Buffer.from(a.buffer, a.byteOffset, a.byteLength);
    } : undefined,
    // (what the main thread's listeners do with an event is theirs: a rejection ends nothing here)
    onEvent: (e) => { calls.event(e).catch(() => {}); },
    secrets: setup.secrets,
    // Did this sandbox's DNS answer the SNI with the address (a secret's substitution needs it)?
    pinned: async (ip, name) => pins.has(ip, name) || learn(ip, name),
    onViolation: (v, destination) => { calls.violation({ secret: v.secret.env, where: v.where, form: v.form }, destination).catch(() => {}); },
    stats: tlsStatsOver(m.stats),
  });
  const listening = proxy.listen();
  listening.catch(() => {}); // told through address()
  const control: TlsWorkerControl = {
    async address() {
      await listening;
      const a = proxy.address();
      return { address: a.address, port: a.port };
    },
    pins(list) {
      for (const p of list) pins.add(p.ip, p.name, p.ttlMs);
    },
    policy(n, r) {
      names = n;
      rules = r;
    },
    async close() {
      await proxy.close(); // (the main thread closes the ports once it has the answer)
    },
  };
  Comlink.expose(control, nodeEndpoint(m.control));
  // The main thread let go of this proxy (closed, or gave up opening it): it stops serving.
  m.control.once("close", () => void proxy.close());
}

parentPort!.on("message", (m: TlsOpenMessage | TlsMintMessage) => {
  if ("mint" in m) minter = Comlink.wrap<TlsMint>(nodeEndpoint(m.mint));
  else if (m.open) open(m.open);
});

// A failure that escaped a connection's handlers must not end the thread every sandbox here
// shares: said, and the thread goes on (each connection's own errors end that connection).
process.on("uncaughtException", (e) => process.stderr.write(`moat: TLS worker: ${e?.stack ?? String(e)}\n`));
process.on("unhandledRejection", (e) => process.stderr.write(`moat: TLS worker: ${(e as Error)?.stack ?? String(e)}\n`));
