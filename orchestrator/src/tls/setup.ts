// setup.ts — TLS interception settings (the reference's TlsBuilder), checked once; the CA a
// process intercepts with; the names DNS pinned to addresses (what an SNI is held to); the trust
// store a sandbox that intercepts sees.
import { basename, join } from "node:path";
import { readFileSync, writeFileSync, mkdirSync, cpSync, existsSync, readdirSync, readlinkSync, realpathSync, lstatSync, statSync, symlinkSync, rmSync } from "node:fs";
import ipaddr from "ipaddr.js";
import { ConfigError } from "../errors.js";
import { layout as L } from "../engine/layout.js";
import { CertificateAuthority } from "./ca.js";
import { normalizeName } from "../model/policy.js";
import { ruleCovers } from "../model/names.js";

/** TLS interception (DESIGN §8). Off unless `intercept` is true (or any other field is set). */
export interface TlsOptions {
  intercept?: boolean;
  /** TCP ports whose connections are intercepted (default [443]); DoT (853) is, whenever interception is on. */
  ports?: number[];
  /** SNI patterns passed through untouched: "name", or "*.suffix" (which also matches "suffix"). */
  bypass?: string[];
  /** The CA to intercept with (PEM files, both or neither; default: an ephemeral CA per process). */
  caCert?: string;
  caKey?: string;
  /** Extra CAs (PEM files) trusted for upstream servers, besides the host's roots. */
  upstreamCa?: string[];
  /** Verify upstream certificates (default true). */
  verifyUpstream?: boolean;
  /** Drop UDP to intercepted ports (QUIC), so clients fall back to TCP (default true). */
  blockQuic?: boolean;
  /** Write the CA certificate (what clients must trust) to this file. */
  caOut?: string;
  /**
   * The sandbox trusts the host's whole trust store (CAs an operator added included) besides
   * moat's CA, instead of the distribution's CA set and moat's CA (default false: a CA planted
   * on the host would be trusted inside every sandbox).
   */
  trustHostCas?: boolean;
}

export interface ValidTls {
  ports: number[];
  bypass: string[];
  ca: CertificateAuthority;
  upstreamCa: string[]; // PEM text
  verifyUpstream: boolean;
  blockQuic: boolean;
  caOut?: string;
  trustHostCas: boolean;
}

/** Is interception asked for at all? Any TLS setting turns it on. */
export function tlsRequested(o: TlsOptions | undefined): boolean {
  if (!o) return false;
  if (o.intercept === false) return false;
  return Object.values(o).some((v) => v !== undefined);
}

let processCa: CertificateAuthority | undefined;

/** The ephemeral CA of this process (made on first use). */
export function processCertificateAuthority(): CertificateAuthority {
  return (processCa ??= new CertificateAuthority());
}

function readPem(path: string, what: string, flag: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (e) {
    throw new ConfigError(`${flag} ${path}: cannot read the ${what}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, "give the path of a PEM file");
  }
}

export function validateTls(o: TlsOptions): ValidTls {
  const ports = o.ports ?? [443];
  if (!Array.isArray(ports) || ports.length === 0 || ports.length > L.CFG_TLS_PORTS_MAX) {
    throw new ConfigError(`TLS ports ${JSON.stringify(o.ports)}`, `give 1 to ${L.CFG_TLS_PORTS_MAX} ports, e.g. [443, 8443]`);
  }
  for (const p of ports) {
    if (!Number.isInteger(p) || p < 1 || p > 65535) throw new ConfigError(`TLS port ${JSON.stringify(p)} is not a port`, "use 1 to 65535");
    if (p === 53 || p === 853) throw new ConfigError(`TLS port ${p} is DNS's`, "DoT (853) is intercepted whenever TLS is; port 53 is plain DNS");
  }
  const bypass = (o.bypass ?? []).map((b) => {
    if (typeof b !== "string") throw new ConfigError(`TLS bypass ${JSON.stringify(b)} is not a pattern`, `use a name or "*.suffix"`);
    const wild = b.startsWith("*.");
    try {
      return (wild ? "*." : "") + normalizeName(wild ? b.slice(2) : b);
    } catch {
      throw new ConfigError(`TLS bypass "${b}" is not a name or "*.suffix"`, "e.g. pinned.example or *.pinned.example");
    }
  });
  let ca: CertificateAuthority;
  if (o.caCert !== undefined || o.caKey !== undefined) {
    if (o.caCert === undefined || o.caKey === undefined) {
      throw new ConfigError(`--tls-ca-${o.caCert === undefined ? "key" : "cert"} without --tls-ca-${o.caCert === undefined ? "cert" : "key"}`, "give both the CA certificate and its key, or neither (an ephemeral CA is made)");
    }
    ca = new CertificateAuthority({ certPem: readPem(o.caCert, "CA certificate", "--tls-ca-cert"), keyPem: readPem(o.caKey, "CA key", "--tls-ca-key") });
  } else {
    ca = processCertificateAuthority();
  }
  const upstreamCa = (o.upstreamCa ?? []).map((f) => {
    const pem = readPem(f, "upstream CA", "--tls-upstream-ca");
    if (!pem.includes("-----BEGIN CERTIFICATE-----")) throw new ConfigError(`--tls-upstream-ca ${f}: no PEM certificate in it`, "give a PEM file (-----BEGIN CERTIFICATE-----)");
    return pem;
  });
  if (o.caOut !== undefined) {
    try {
      writeFileSync(o.caOut, ca.certPem);
    } catch (e) {
      throw new ConfigError(`--tls-ca-out ${o.caOut}: cannot write: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, "give a writable path");
    }
  }
  return { ports: [...new Set(ports)], bypass, ca, upstreamCa, verifyUpstream: o.verifyUpstream ?? true, blockQuic: o.blockQuic ?? true, caOut: o.caOut, trustHostCas: o.trustHostCas ?? false };
}

/**
 * Names the sandbox's DNS answered with an address (the pins' names): a domain-rule-admitted TLS
 * connection's SNI must be one of them for its address. Kept past the TTL (a pin outlives it while
 * a connection it admitted lives), bounded.
 */
export class PinnedNames {
  private readonly byIp = new Map<string, Map<string, number>>();
  constructor(private readonly max = 65536, private readonly graceMs = 600_000) {}

  add(ip: string, name: string, ttlMs: number, now = Date.now()): void {
    this.addUntil(ip, name, now + ttlMs + this.graceMs);
  }

  /** A pin held until `until` (ms since the epoch), as another table has it (until()). */
  addUntil(ip: string, name: string, until: number): void {
    const key = ipaddr.parse(ip).toString();
    let names = this.byIp.get(key);
    if (!names) {
      if (this.byIp.size >= this.max) this.byIp.delete(this.byIp.keys().next().value!);
      this.byIp.set(key, (names = new Map()));
    }
    names.delete(name);
    names.set(name, until);
    if (names.size > 64) names.delete(names.keys().next().value!);
  }

  has(ip: string, name: string, now = Date.now()): boolean {
    return this.until(ip, name) > now;
  }

  /** Until when (ms since the epoch) `name` is pinned to `ip`; 0: not at all. */
  until(ip: string, name: string): number {
    return this.byIp.get(ipaddr.parse(ip).toString())?.get(name) ?? 0;
  }
}

/**
 * May `name` (an SNI, a request's authority) be used on a connection to `ip` that the domain rule
 * with name id `admitNameId` admitted (`names`: the ids' keys, GatewayNames)? Only a name the rule
 * covers and that `pins` hold for `ip`: null if so, or if no domain rule admitted it (id 0: a CIDR
 * or group rule is not held to names); else why not. The gateway asks it of its pins, a TLS
 * worker of its replica (tls/tls-worker.ts).
 */
export function boundName(names: readonly string[], pins: PinnedNames, admitNameId: number, ip: string, name: string | undefined, what: string): string | null {
  if (!admitNameId) return null;
  const key = names[admitNameId - 1];
  if (key === undefined) return "admitted by a rule that is no longer in force";
  const rule = key.startsWith(".") ? `*${key}` : key;
  if (!name) return `no ${what}, but ${ip} was admitted only as ${rule}`;
  if (!ruleCovers(key, name)) return `${what} ${name} is not covered by the rule that admitted ${ip} (${rule})`;
  if (!pins.has(ip, name)) return `this sandbox's DNS never answered ${name} with ${ip}`;
  return null;
}

/**
 * Where a guest of any kind finds moat's interception CA: in the system bundle (with the roots it
 * had) and alone. Commands get both in their environment (Gateway.commandEnv).
 */
export const GUEST_TRUST = { bundle: "/etc/ssl/certs/ca-certificates.crt", caFile: "/etc/ssl/certs/moat-interception-ca.pem" } as const;

/** Where a host's trust store and its distribution's CA set are (Debian's layout). */
export interface TrustSources {
  /** The host's OpenSSL directory: certs/ca-certificates.crt (everything trusted) and its links. */
  sslDir: string;
  /** The distribution's CA certificates, one file each (Debian: the Mozilla set). */
  distroDir: string;
  /** update-ca-certificates' selection (paths relative to distroDir's parent; "!" deselects). */
  distroConf: string;
}

/** The line before moat's CA in a guest's bundle (what follows it is moat's CA alone). */
export const MOAT_CA_MARKER = "# moat TLS interception CA";

export const HOST_TRUST: TrustSources = { sslDir: "/etc/ssl", distroDir: "/usr/share/ca-certificates/mozilla", distroConf: "/etc/ca-certificates.conf" };

interface DistroSet { key: string; pem: string; realPaths: Set<string>; links: [string, string][] }
let distroCache: DistroSet | undefined;

/**
 * The distribution's CA set as the host selected it: every certificate of distroDir but those
 * deselected in distroConf; its PEM text, and the links of the host's certs directory that lead
 * to one of them (OpenSSL's hashed names and the per-CA links), not those that lead anywhere
 * else (/usr/local/share/ca-certificates, a file dropped in by hand). Read once, again when the
 * directory, the selection or the links change. Empty when there is no distroDir.
 */
function distroSet(s: TrustSources): DistroSet {
  const mtime = (p: string) => { try { return statSync(p).mtimeMs; } catch { return 0; } };
  const key = `${s.sslDir}|${s.distroDir}|${s.distroConf}|${mtime(s.distroDir)}|${mtime(s.distroConf)}|${mtime(`${s.sslDir}/certs`)}`;
  if (distroCache?.key === key) return distroCache;
  let names: string[] = [];
  try {
    names = readdirSync(s.distroDir).filter((n) => n.endsWith(".crt")).sort();
  } catch {
    // no distribution set here
  }
  let conf = "";
  try { conf = readFileSync(s.distroConf, "utf8"); } catch { /* every certificate selected */ }
  const prefix = `${basename(s.distroDir)}/`;
  const deselected = new Set(conf.split("\n").filter((l) => l.startsWith(`!${prefix}`)).map((l) => l.slice(prefix.length + 1).trim()));
  const files = names.filter((n) => !deselected.has(n)).map((n) => join(s.distroDir, n));
  const realPaths = new Set(files.map((f) => realpathSync.native(f)));
  const links: [string, string][] = [];
  const certs = `${s.sslDir}/certs`;
  for (const entry of existsSync(certs) ? readdirSync(certs) : []) {
    const path = join(certs, entry);
    try {
      if (lstatSync(path).isSymbolicLink() && realPaths.has(realpathSync.native(path))) links.push([entry, readlinkSync(path)]);
    } catch {
      // a dangling link: not one of them
    }
  }
  const pem = files.map((f) => readFileSync(f, "utf8").trimEnd() + "\n").join("");
  return (distroCache = { key, pem, realPaths, links });
}

/** Whether the host has a distribution CA set where `s` says (else a sandbox's bundle holds moat's CA alone). */
export function hasDistroCas(s: TrustSources = HOST_TRUST): boolean {
  return distroSet(s).realPaths.size > 0;
}

/**
 * The CA bundle of a guest that intercepts: the distribution's CA set (or, with trustHostCas,
 * the host's whole bundle), then moat's CA.
 */
export function trustBundle(caPem: string, trustHostCas: boolean, s: TrustSources = HOST_TRUST): string {
  let roots = "";
  if (trustHostCas) {
    try { roots = readFileSync(`${s.sslDir}/certs/${basename(GUEST_TRUST.bundle)}`, "utf8"); } catch { /* no host bundle */ }
  } else {
    roots = distroSet(s).pem;
  }
  return `${roots}${roots && !roots.endsWith("\n") ? "\n" : ""}${MOAT_CA_MARKER}\n${caPem}`;
}

/**
 * The trust store a namespace sandbox sees at /etc/ssl (the sandbox binds NETNS_ETC/ssl over
 * it), so OpenSSL, curl and Python find it at the system paths (GUEST_TRUST) inside the sandbox
 * only; the host's own store is never changed. By default it holds the distribution's CA set
 * (the host's links to them and the bundle made of them) and moat's CA: a CA an operator added
 * on the host is not trusted inside. With trustHostCas it is a copy of the host's /etc/ssl
 * (but its private keys) whose bundle has moat's CA added.
 */
export function writeTrustBundle(netnsEtc: string, caPem: string, trustHostCas: boolean, s: TrustSources = HOST_TRUST): void {
  const ssl = `${netnsEtc}/ssl`;
  const certs = `${ssl}/certs`; // /etc/ssl/certs inside the sandbox
  if (trustHostCas && existsSync(s.sslDir)) {
    cpSync(s.sslDir, ssl, { recursive: true, verbatimSymlinks: true, force: true, filter: (src) => !src.startsWith(`${s.sslDir}/private`) });
  }
  mkdirSync(certs, { recursive: true });
  if (!trustHostCas) {
    if (existsSync(`${s.sslDir}/openssl.cnf`)) cpSync(`${s.sslDir}/openssl.cnf`, `${ssl}/openssl.cnf`);
    for (const [name, target] of distroSet(s).links) symlinkSync(target, `${certs}/${name}`);
  }
  // Unlinked first: copied from the host, either could be a link into the host's own store.
  for (const [file, text] of [[GUEST_TRUST.bundle, trustBundle(caPem, trustHostCas, s)], [GUEST_TRUST.caFile, caPem]] as const) {
    rmSync(`${certs}/${basename(file)}`, { force: true });
    writeFileSync(`${certs}/${basename(file)}`, text);
  }
}
