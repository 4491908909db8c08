// setup.ts — TLS interception settings (the reference's TlsBuilder), checked once; the CA a
// process intercepts with; the names DNS pinned to addresses (what an SNI is held to); the trust
// bundle a namespace sandbox sees.
import { basename } from "node:path";
import { readFileSync, writeFileSync, mkdirSync, cpSync, existsSync, appendFileSync } from "node:fs";
import ipaddr from "ipaddr.js";
import { ConfigError } from "../errors.js";
import { CertificateAuthority } from "./ca.js";
import { normalizeName } from "../policy/model.js";

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
}

export interface ValidTls {
  ports: number[];
  bypass: string[];
  ca: CertificateAuthority;
  upstreamCa: string[]; // PEM text
  verifyUpstream: boolean;
  blockQuic: boolean;
  caOut?: string;
}

export const MAX_TLS_PORTS = 16;

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
  if (!Array.isArray(ports) || ports.length === 0 || ports.length > MAX_TLS_PORTS) {
    throw new ConfigError(`TLS ports ${JSON.stringify(o.ports)}`, `give 1 to ${MAX_TLS_PORTS} ports, e.g. [443, 8443]`);
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
  return { ports: [...new Set(ports)], bypass, ca, upstreamCa, verifyUpstream: o.verifyUpstream ?? true, blockQuic: o.blockQuic ?? true, caOut: o.caOut };
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
    const key = ipaddr.parse(ip).toString();
    let names = this.byIp.get(key);
    if (!names) {
      if (this.byIp.size >= this.max) this.byIp.delete(this.byIp.keys().next().value!);
      this.byIp.set(key, (names = new Map()));
    }
    names.delete(name);
    names.set(name, now + ttlMs + this.graceMs);
    if (names.size > 64) names.delete(names.keys().next().value!);
  }

  has(ip: string, name: string, now = Date.now()): boolean {
    const until = this.byIp.get(ipaddr.parse(ip).toString())?.get(name);
    return until !== undefined && until > now;
  }
}

/** Does `name` match one of `patterns` ("x.example" exactly; "*.example" is example and everything under it)? */
export function matchesPattern(name: string, patterns: readonly string[]): boolean {
  for (const p of patterns) {
    if (p.startsWith("*.")) {
      const suffix = p.slice(2);
      if (name === suffix || name.endsWith(`.${suffix}`)) return true;
    } else if (name === p) {
      return true;
    }
  }
  return false;
}

/** Is `sni` covered by a domain rule's name key ("name" exactly, ".suffix" for the suffix and under)? */
export function ruleCovers(key: string, sni: string): boolean {
  return key.startsWith(".") ? sni === key.slice(1) || sni.endsWith(key) : sni === key;
}

/**
 * Where a guest of any kind finds moat's interception CA: in the system bundle (with the roots it
 * had) and alone. Commands get both in their environment (Gateway.commandEnv).
 */
export const GUEST_TRUST = { bundle: "/etc/ssl/certs/ca-certificates.crt", caFile: "/etc/ssl/certs/moat-interception-ca.pem" } as const;

/**
 * The trust store a namespace sandbox sees: `ip netns exec` mounts /etc/netns/NAME/ssl over
 * /etc/ssl for the command, so the copy here (the host's, plus moat's CA in the bundle) is what
 * OpenSSL, curl and Python find at the system paths (GUEST_TRUST) inside the sandbox only. The
 * host's own store is never changed.
 */
export function writeTrustBundle(netnsEtc: string, caPem: string): void {
  const certs = `${netnsEtc}/ssl/certs`; // /etc/ssl/certs inside the sandbox
  mkdirSync(certs, { recursive: true });
  if (existsSync("/etc/ssl")) cpSync("/etc/ssl", `${netnsEtc}/ssl`, { recursive: true, verbatimSymlinks: true, force: true, filter: (src) => !src.startsWith("/etc/ssl/private") });
  appendFileSync(`${certs}/${basename(GUEST_TRUST.bundle)}`, `\n# moat TLS interception CA\n${caPem}`);
  writeFileSync(`${certs}/${basename(GUEST_TRUST.caFile)}`, caPem);
}
