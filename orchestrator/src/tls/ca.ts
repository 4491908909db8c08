// ca.ts — the interception CA and the leaf certificates it mints (DESIGN §8).
//
// Theory of operation
// The CA is ephemeral (a fresh P-256 key and self-signed certificate per process, valid 30 days)
// or the user's (a PEM certificate and key, RSA or EC, that must belong together). Leaves are
// minted per name (a DNS name, or an IP address for clients that send no SNI) and cached: an LRU
// of `cacheSize` TLS secure contexts, each valid `leafLifetimeMs` (24 h) from a notBefore
// backdated by an hour (a guest whose clock lags a little must not see "not yet valid"), and
// minted again once less than an hour of it is left.
//
// Minting never blocks the data path for long: every leaf shares one P-256 key made at start,
// node-forge lays out the certificate (ASN.1 DER), and node:crypto signs it (one ECDSA or RSA
// signature, well under a millisecond; `npm run bench:tls` measures leaves per second). A CA is
// made again on each TLS worker that serves it (share(), fromShare()): each has its own leaf cache.
import { createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, sign, X509Certificate, createHash, type KeyObject } from "node:crypto";
import { createSecureContext, type SecureContext } from "node:tls";
import forge from "node-forge";
import { Piscina } from "piscina";
import { availableParallelism } from "node:os";
import ipaddr from "ipaddr.js";
import { ConfigError } from "../errors.js";

const asn1 = forge.asn1;
const U = asn1.Class.UNIVERSAL;
const T = asn1.Type;

const OID = {
  ecPublicKey: "1.2.840.10045.2.1",
  ecdsaWithSHA256: "1.2.840.10045.4.3.2",
  sha256WithRSA: "1.2.840.113549.1.1.11",
  commonName: "2.5.4.3",
  organization: "2.5.4.10",
  basicConstraints: "2.5.29.19",
  keyUsage: "2.5.29.15",
  extKeyUsage: "2.5.29.37",
  subjectAltName: "2.5.29.17",
  subjectKeyId: "2.5.29.14",
  serverAuth: "1.3.6.1.5.5.7.3.1",
};

const HOUR = 3600_000;
/** Mints closer together than this are a burst: they go to the minting pool. */
const BURST_MS = 20;

export interface CaOptions {
  /** PEM certificate and key of the user's CA (both or neither). */
  certPem?: string;
  keyPem?: string;
  /** Leaves kept (LRU); default 1000. */
  cacheSize?: number;
  /** Leaf validity; default 24 h. */
  leafLifetimeMs?: number;
  /** @internal The leaves' key (PEM): the same CA on another thread (share()) serves the same key. */
  leafKeyPem?: string;
  /** @internal Where a burst's leaves are minted; default this process's minting pool (piscina). */
  mintAsync?: (task: MintTask) => Promise<string>;
}

/** What another thread needs to act as the same CA (CertificateAuthority.share). */
export interface CaShare { certPem: string; caKeyPem: string; leafKeyPem: string; cacheSize: number; lifetime: number }

type Asn1 = forge.asn1.Asn1;

/** `b` in a memory of its own, of its size. */
function exactCopy(b: Buffer): Buffer {
  const c = new Uint8Array(b);
  return Buffer.from(c.buffer, c.byteOffset, c.byteLength);
}

function der(node: Asn1): Buffer {
  return Buffer.from(asn1.toDer(node).getBytes(), "binary");
}
function fromDer(b: Buffer): Asn1 {
  return asn1.fromDer(forge.util.createBuffer(b.toString("binary")));
}
const seq = (items: Asn1[]) => asn1.create(U, T.SEQUENCE, true, items);
const set = (items: Asn1[]) => asn1.create(U, T.SET, true, items);
const oid = (o: string) => asn1.create(U, T.OID, false, asn1.oidToDer(o).getBytes());
const octets = (b: Buffer) => asn1.create(U, T.OCTETSTRING, false, b.toString("binary"));
const bits = (b: Buffer) => asn1.create(U, T.BITSTRING, false, "\x00" + b.toString("binary"));
const bool = (v: boolean) => asn1.create(U, T.BOOLEAN, false, v ? "\xff" : "\x00");
const int = (b: Buffer) => asn1.create(U, T.INTEGER, false, b.toString("binary"));
const utf8 = (s: string) => asn1.create(U, T.UTF8, false, forge.util.encodeUtf8(s));
// X.509 dates: UTCTime through 2049, GeneralizedTime after.
const time = (d: Date) => (d.getUTCFullYear() < 2050 ? asn1.create(U, T.UTCTIME, false, asn1.dateToUtcTime(d)) : asn1.create(U, T.GENERALIZEDTIME, false, asn1.dateToGeneralizedTime(d)));

function name(cn: string, org = "moat"): Asn1 {
  return seq([
    set([seq([oid(OID.organization), utf8(org)])]),
    set([seq([oid(OID.commonName), utf8(cn)])]),
  ]);
}

function extension(id: string, critical: boolean, value: Asn1): Asn1 {
  return seq([oid(id), ...(critical ? [bool(true)] : []), octets(der(value))]);
}

/** A positive 16-byte serial number. */
function serial(): Buffer {
  const b = randomBytes(16);
  b[0] = b[0]! & 0x7f;
  if (b[0] === 0) b[0] = 1;
  return b;
}

/** RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits (what OpenSSL computes). */
function keyId(spki: Buffer): Buffer {
  const bitString = (fromDer(spki).value as Asn1[])[1]!.value as string;
  return createHash("sha1").update(Buffer.from(bitString, "binary").subarray(1)).digest();
}

/** Sign a TBSCertificate with `key` and wrap it as a certificate (PEM). */
function signCertificate(tbs: Asn1, key: KeyObject): string {
  const alg = key.asymmetricKeyType === "ec" ? OID.ecdsaWithSHA256 : OID.sha256WithRSA;
  const algId = key.asymmetricKeyType === "ec" ? seq([oid(alg)]) : seq([oid(alg), asn1.create(U, T.NULL, false, "")]);
  // The TBS's own signature field must match the outer one: patch it in before signing.
  (tbs.value as Asn1[])[2] = algId;
  const signature = sign("sha256", der(tbs), key);
  const cert = der(seq([tbs, algId, bits(signature)]));
  return `-----BEGIN CERTIFICATE-----\n${cert.toString("base64").replace(/.{64}/g, "$&\n").replace(/\n$/, "")}\n-----END CERTIFICATE-----\n`;
}

/** The subject Name of a certificate, as its DER bytes (the leaves' issuer, byte for byte). */
function subjectOf(certDer: Buffer): Asn1 {
  const cert = fromDer(certDer);
  const tbs = (cert.value as Asn1[])[0]!;
  const fields = tbs.value as Asn1[];
  const v = fields[0]!.tagClass === asn1.Class.CONTEXT_SPECIFIC ? 1 : 0; // [0] version present
  return fields[v + 4]!; // serial, signature, issuer, validity, subject
}

interface Leaf { context: SecureContext; renewAt: number; pem: string; user: object }

/** The user of leaves asked for without one (contextFor(host) alone). */
const ANYONE = {};

export class CertificateAuthority {
  /** The CA certificate (PEM): what a guest must trust. */
  readonly certPem: string;
  private readonly caKey: KeyObject;
  private readonly caKeyPem: string; // for the minting pool's threads
  private readonly caSubject: Asn1;
  private readonly caSubjectDer: Buffer; // the issuer of every leaf, encoded once
  private readonly leafKeyPem: string;
  private readonly leafSpki: Buffer;
  private readonly leaves = new Map<string, Leaf>(); // insertion order = LRU order
  /** How many cached leaves each user (a sandbox's proxy) used last. */
  private readonly held = new Map<object, number>();
  private readonly cacheSize: number;
  private readonly lifetime: number;
  private readonly mintAsync: (task: MintTask) => Promise<string>;
  /** Leaves minted so far (cache misses and renewals). */
  minted = 0;
  /** Of those, minted on a thread of the minting pool. */
  mintedOnPool = 0;

  constructor(options: CaOptions = {}) {
    this.cacheSize = options.cacheSize ?? 1000;
    this.lifetime = options.leafLifetimeMs ?? 24 * HOUR;
    this.mintAsync = options.mintAsync ?? ((task) => mintPool().run(task));
    if ((options.certPem === undefined) !== (options.keyPem === undefined)) {
      throw new ConfigError("a TLS interception CA needs both its certificate and its key", "give both --tls-ca-cert and --tls-ca-key, or neither (an ephemeral CA is made)");
    }
    if (options.certPem !== undefined) {
      let x: X509Certificate;
      try {
        this.caKey = createPrivateKey(options.keyPem!);
        x = new X509Certificate(options.certPem);
      } catch (e) {
        throw new ConfigError(`the TLS interception CA cannot be read: ${(e as Error).message}`, "give a PEM certificate and its PEM private key (RSA or EC)");
      }
      if (!x.checkPrivateKey(this.caKey)) throw new ConfigError("the TLS interception CA's key does not belong to its certificate", "give the key the certificate was made for");
      if (!x.ca) throw new ConfigError(`the certificate given as TLS interception CA (${x.subject.replace(/\n/g, ", ")}) is not a CA`, "it needs basicConstraints CA:TRUE");
      this.certPem = x.toString();
      this.caSubject = subjectOf(x.raw);
    } else {
      const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
      this.caKey = privateKey;
      const spki = publicKey.export({ type: "spki", format: "der" });
      this.caSubject = name(`moat interception CA ${randomBytes(4).toString("hex")}`);
      const now = Date.now();
      const tbs = seq([
        asn1.create(asn1.Class.CONTEXT_SPECIFIC, 0, true, [int(Buffer.from([2]))]),
        int(serial()),
        seq([]), // signature algorithm: filled by signCertificate
        this.caSubject,
        seq([time(new Date(now - HOUR)), time(new Date(now + 30 * 24 * HOUR))]),
        this.caSubject,
        fromDer(spki),
        asn1.create(asn1.Class.CONTEXT_SPECIFIC, 3, true, [seq([
          extension(OID.basicConstraints, true, seq([bool(true), int(Buffer.from([0]))])),
          extension(OID.keyUsage, true, asn1.create(U, T.BITSTRING, false, "\x01\x06")), // keyCertSign, cRLSign
          extension(OID.subjectKeyId, false, octets(keyId(spki))),
        ])]),
      ]);
      this.certPem = signCertificate(tbs, this.caKey);
    }
    // (exact copies: they travel to the minting pool's threads, and a view into Node's shared
    // buffer pool would take the whole pool slab with it)
    this.caSubjectDer = exactCopy(der(this.caSubject));
    this.caKeyPem = this.caKey.export({ type: "pkcs8", format: "pem" }) as string;
    const leafKey = options.leafKeyPem !== undefined ? createPrivateKey(options.leafKeyPem) : generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;
    this.leafKeyPem = leafKey.export({ type: "sec1", format: "pem" }) as string;
    this.leafSpki = exactCopy(createPublicKey(leafKey).export({ type: "spki", format: "der" }));
  }

  /** This CA, to be made again on another thread (a TLS worker): its certificate and both keys. */
  share(): CaShare {
    return { certPem: this.certPem, caKeyPem: this.caKeyPem, leafKeyPem: this.leafKeyPem, cacheSize: this.cacheSize, lifetime: this.lifetime };
  }

  /** The CA a share() describes, its bursts minted by `mintAsync`. */
  static fromShare(s: CaShare, mintAsync?: (task: MintTask) => Promise<string>): CertificateAuthority {
    return new CertificateAuthority({ certPem: s.certPem, keyPem: s.caKeyPem, leafKeyPem: s.leafKeyPem, cacheSize: s.cacheSize, leafLifetimeMs: s.lifetime, mintAsync });
  }

  /**
   * A TLS secure context presenting a leaf for `host` (a DNS name or an IP address), chained to
   * the CA. `user` (a sandbox's proxy) is who asks: the cache is shared, but a full cache gives up
   * a leaf of whoever holds the most, so one sandbox minting name after name evicts its own
   * leaves, not its neighbours'.
   */
  contextFor(host: string, user: object = ANYONE): SecureContext {
    const key = host.toLowerCase();
    const now = Date.now();
    const hit = this.leaves.get(key);
    if (hit && hit.renewAt > now) {
      this.leaves.delete(key); // most recently used goes last
      this.leaves.set(key, hit);
      this.useBy(hit, user);
      return hit.context;
    }
    this.lastMintAt = now;
    return this.cache(key, this.mint(key, now), now, user).context;
  }

  /** A minted leaf (PEM) made into a secure context and cached. */
  private cache(key: string, pem: string, now: number, user: object): Leaf {
    // ca: the CA itself, so the context does not load the whole default root store (~1 ms each).
    const leaf: Leaf = { context: createSecureContext({ key: this.leafKeyPem, cert: pem + this.certPem, ca: this.certPem }), renewAt: now + this.lifetime - HOUR, pem, user };
    const old = this.leaves.get(key);
    if (old) this.forget(key, old);
    this.leaves.set(key, leaf);
    this.held.set(user, (this.held.get(user) ?? 0) + 1);
    while (this.leaves.size > this.cacheSize) this.evict();
    return leaf;
  }

  /** The leaf is now `user`'s (its last user): counted against it. */
  private useBy(leaf: Leaf, user: object): void {
    if (leaf.user === user) return;
    this.release(leaf.user);
    leaf.user = user;
    this.held.set(user, (this.held.get(user) ?? 0) + 1);
  }

  private release(user: object): void {
    const n = (this.held.get(user) ?? 1) - 1;
    if (n > 0) this.held.set(user, n);
    else this.held.delete(user);
  }

  private forget(key: string, leaf: Leaf): void {
    this.leaves.delete(key);
    this.release(leaf.user);
  }

  /** The least recently used leaf of the user holding the most (a few users; a miss costs a mint anyway). */
  private evict(): void {
    let heaviest: object | undefined;
    let most = 0;
    for (const [user, n] of this.held) if (n > most) { most = n; heaviest = user; }
    for (const [key, leaf] of this.leaves) {
      if (leaf.user === heaviest) return this.forget(key, leaf);
    }
    const [key, leaf] = this.leaves.entries().next().value!; // (counts always match the leaves)
    this.forget(key, leaf);
  }

  /** The leaf certificate (PEM) currently served for `host`, if one was minted. */
  leafPem(host: string): string | undefined {
    return this.leaves.get(host.toLowerCase())?.pem;
  }

  get cached(): number {
    return this.leaves.size;
  }

  private mint(host: string, now: number): string {
    this.minted++;
    return mintLeaf({ host, now, lifetime: this.lifetime, caSubjectDer: this.caSubjectDer, leafSpki: this.leafSpki }, this.caKey);
  }

  /**
   * contextFor(), with a leaf that is not cached minted on a thread of the minting pool (piscina)
   * while names come in a burst — another mint under way, or one done here in the last
   * BURST_MS: minting then grows with cores, and the thread serving the proxies (a TLS worker, its
   * bursts sent through the main thread to the pool) is not held up. A lone mint is done here, at once (a pool thread's start would cost more
   * than the mint).
   */
  async contextForAsync(host: string, onMint?: () => void, user: object = ANYONE): Promise<SecureContext> {
    const key = host.toLowerCase();
    const hit = this.leaves.get(key);
    if (hit && hit.renewAt > Date.now()) return this.contextFor(key, user);
    const pending = this.minting.get(key);
    if (pending) return pending;
    const now = Date.now();
    if (this.minting.size === 0 && now - this.lastMintAt > BURST_MS) {
      onMint?.();
      return this.contextFor(key, user);
    }
    const p = this.mintAsync({ host: key, now, lifetime: this.lifetime, caSubjectDer: this.caSubjectDer, leafSpki: this.leafSpki, caKeyPem: this.caKeyPem })
      .then((pem: string) => {
        this.minted++;
        this.mintedOnPool++;
        onMint?.();
        return this.cache(key, pem, now, user).context;
      }, () => {
        // The pool failed or did not answer: minted here, as a lone name is.
        onMint?.();
        return this.cache(key, this.mint(key, now), now, user).context;
      })
      .finally(() => this.minting.delete(key));
    this.minting.set(key, p);
    return p;
  }

  private readonly minting = new Map<string, Promise<SecureContext>>();
  private lastMintAt = 0;
}

/** What a leaf is minted from (all structured-clonable: it travels to a pool thread). */
export interface LeafSpec { host: string; now: number; lifetime: number; caSubjectDer: Buffer; leafSpki: Buffer }
export interface MintTask extends LeafSpec { caKeyPem: string }

/** A leaf certificate (PEM) for `spec.host`, signed with `caKey`: the one thing minting is. */
export function mintLeaf(spec: LeafSpec, caKey: KeyObject): string {
  const { host, now } = spec;
  const ip = ipaddr.isValid(host) ? ipaddr.parse(host) : undefined;
  // subjectAltName: dNSName [2] or iPAddress [7] (4 or 16 bytes).
  const san = ip
    ? asn1.create(asn1.Class.CONTEXT_SPECIFIC, 7, false, Buffer.from(ip.toByteArray()).toString("binary"))
    : asn1.create(asn1.Class.CONTEXT_SPECIFIC, 2, false, host);
  const tbs = seq([
    asn1.create(asn1.Class.CONTEXT_SPECIFIC, 0, true, [int(Buffer.from([2]))]),
    int(serial()),
    seq([]),
    fromDer(Buffer.from(spec.caSubjectDer)),
    seq([time(new Date(now - HOUR)), time(new Date(now + spec.lifetime))]),
    name(host.length <= 64 ? host : host.slice(0, 64)),
    fromDer(Buffer.from(spec.leafSpki)),
    asn1.create(asn1.Class.CONTEXT_SPECIFIC, 3, true, [seq([
      extension(OID.basicConstraints, true, seq([])),
      extension(OID.keyUsage, true, asn1.create(U, T.BITSTRING, false, "\x07\x80")), // digitalSignature
      extension(OID.extKeyUsage, false, seq([oid(OID.serverAuth)])),
      extension(OID.subjectAltName, false, seq([san])),
      // No authorityKeyIdentifier: a user's CA may identify its key differently than we would
      // compute it, and a mismatch makes verifiers miss the issuer; the issuer name suffices.
    ])]),
  ]);
  return signCertificate(tbs, caKey);
}

let pool: Piscina | undefined;
/** The minting pool: up to a thread per core, started on the first burst, idle threads ending after a minute. */
export function mintPool(): Piscina {
  pool ??= new Piscina({
    filename: new URL("./mint-worker.js", import.meta.url).href,
    minThreads: 0,
    maxThreads: availableParallelism(),
    idleTimeout: 60_000,
  });
  return pool;
}
