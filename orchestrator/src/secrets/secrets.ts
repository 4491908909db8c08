// secrets.ts — secret injection (DESIGN §8): the guest holds a placeholder; the real value is put
// on the wire only in requests to the hosts the secret is for.
//
// Theory of operation
// Each secret gets a placeholder, `moat-ph-` and 24 random [a-z0-9] characters (or the user's),
// stable for the sandbox's life; the command's environment carries NAME=placeholder and the real
// value stays in moat's memory (never in the sandbox's environment, files, logs or audit events).
// Where the placeholder may turn into the value is decided in the TLS proxy (http-filter.ts):
// intercepted TLS whose SNI matches the secret's host patterns, whose address this sandbox's DNS
// pinned to that name, and whose HTTP Host equals the SNI. Everywhere else the placeholder is a
// violation: in the other hosts' plaintext, in DNS names — in its raw form and in the encodings an
// exfiltrating program would reach for first (base64 at every alignment, base64url, %XX, JSON
// \u00XX), also split across writes (PlaceholderScanner keeps what could be the start of one).
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { ConfigError } from "../errors.js";
import { normalizeName } from "../model/policy.js";
import { matchesPattern } from "../model/names.js";
import { placeholderForms } from "../model/placeholders.js";

export type ViolationAction = "block" | "block-and-log" | "block-and-terminate";
export const ViolationAction = { Block: "block", BlockAndLog: "block-and-log", BlockAndTerminate: "block-and-terminate" } as const;

/** A secret as configured (API, config file, CLI). */
export interface SecretSpec {
  /** The environment variable the command sees (holding the placeholder). */
  env: string;
  /** Where the real value comes from: an environment variable of moat's, or a file. Default: { env: env }. */
  valueFrom?: { env: string } | { file: string };
  /** Hosts the value may be sent to: names, or "*.suffix" (which also matches the suffix). */
  allowedHosts: string[];
  /** The placeholder the guest sees (default: moat-ph- and a random token). */
  placeholder?: string;
  /** Where it is substituted: headers (default true), basicAuth (default true). */
  inject?: { headers?: boolean; basicAuth?: boolean; query?: boolean; body?: boolean };
}

export interface Secret {
  env: string;
  value: string;
  placeholder: string;
  hosts: string[];
  headers: boolean;
  basicAuth: boolean;
  /** Substitute in the request target's query string (percent-encoded value); default false. */
  query: boolean;
  /** Substitute in HTTP/1.1 request bodies (held whole, up to 1 MiB, not compressed ones); default false. */
  body: boolean;
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

export function validateSecrets(specs: readonly SecretSpec[], environment: NodeJS.ProcessEnv = process.env): Secret[] {
  const seen = new Set<string>();
  return specs.map((s, i) => {
    const where = `secrets[${i}]`;
    if (typeof s !== "object" || s === null) throw new ConfigError(`${where} is not a secret`, "expected { env, allowedHosts, valueFrom? }");
    if (typeof s.env !== "string" || !ENV_NAME.test(s.env)) throw new ConfigError(`${where}.env ${JSON.stringify(s.env)} is not an environment variable name`, "e.g. OPENAI_API_KEY");
    if (seen.has(s.env)) throw new ConfigError(`secret ${s.env} is given twice`, "give each secret once, with all its hosts");
    seen.add(s.env);
    if (!Array.isArray(s.allowedHosts) || s.allowedHosts.length === 0) throw new ConfigError(`secret ${s.env} has no allowed hosts`, `e.g. --secret ${s.env}@api.example.com`);
    const hosts = s.allowedHosts.map((h) => {
      const wild = typeof h === "string" && h.startsWith("*.");
      try {
        return (wild ? "*." : "") + normalizeName(wild ? h.slice(2) : h);
      } catch {
        throw new ConfigError(`secret ${s.env}: allowed host ${JSON.stringify(h)} is not a name or *.suffix`, "e.g. api.example.com or *.example.com (addresses are not allowed: the value goes only where DNS and SNI agree)");
      }
    });
    const from = s.valueFrom ?? { env: s.env };
    let value: string | undefined;
    if ("env" in from) {
      value = environment[from.env];
      if (value === undefined || value === "") throw new ConfigError(`secret ${s.env}: moat's environment has no ${from.env}`, `export ${from.env}=... before starting moat (the value is never given on the command line)`);
    } else if ("file" in from) {
      try {
        value = readFileSync(from.file, "utf8").replace(/\r?\n$/, "");
      } catch (e) {
        throw new ConfigError(`secret ${s.env}: cannot read ${from.file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, "give a readable file holding the value");
      }
      if (value === "") throw new ConfigError(`secret ${s.env}: ${from.file} is empty`, "the file holds the secret's value");
    } else {
      throw new ConfigError(`${where}.valueFrom is neither { env } nor { file }`, `e.g. "valueFrom": { "env": "MY_KEY" }`);
    }
    if (/[\r\n\0]/.test(value)) throw new ConfigError(`secret ${s.env}: the value holds a line break or NUL`, "a header value cannot carry it");
    const placeholder = s.placeholder ?? `moat-ph-${token()}`;
    if (!/^[A-Za-z0-9._~-]{16,40}$/.test(placeholder)) throw new ConfigError(`secret ${s.env}: placeholder ${JSON.stringify(placeholder)} is not 16-40 characters of [A-Za-z0-9._~-]`, "leave it out for a random one");
    if (value.includes(placeholder)) throw new ConfigError(`secret ${s.env}: the value contains the placeholder`, "choose another placeholder");
    return { env: s.env, value, placeholder, hosts, headers: s.inject?.headers ?? true, basicAuth: s.inject?.basicAuth ?? true, query: s.inject?.query ?? false, body: s.inject?.body ?? false };
  });
}

/** 24 characters of [a-z0-9] (~124 bits). */
function token(): string {
  const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
  return Array.from(randomBytes(24), (b) => alphabet[b % 36]).join("");
}

/** Parse the CLI form: NAME@HOST[,HOST...] or NAME=ENVVAR@HOST[,HOST...]. */
export function parseSecretFlag(text: string): SecretSpec {
  const m = /^([A-Za-z_][A-Za-z0-9_]*)(?:=([A-Za-z_][A-Za-z0-9_]*))?@(.+)$/.exec(text);
  if (!m) throw new ConfigError(`--secret "${text}" is not NAME@HOST[,HOST...] or NAME=ENVVAR@HOST[,...]`, "e.g. --secret OPENAI_API_KEY@api.openai.com (the value comes from moat's environment)");
  return { env: m[1]!, valueFrom: { env: m[2] ?? m[1]! }, allowedHosts: m[3]!.split(",").map((h) => h.trim()).filter(Boolean) };
}

/** Which secret's placeholder a stream carried, and in what form. */
export interface Found { secret: Secret; form: string }

/** `text` with every %XX decoded (latin1), or undefined when it holds none. */
function percentDecoded(text: string): string | undefined {
  if (!text.includes("%")) return undefined;
  const d = text.replace(/%([0-9A-Fa-f]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
  return d === text ? undefined : d;
}

/** Every form of every secret, computed once per secret. */
const formCache = new WeakMap<Secret, string[]>();
function formsOf(secret: Secret): string[] {
  let f = formCache.get(secret);
  if (!f) formCache.set(secret, (f = placeholderForms(secret.placeholder)));
  return f;
}

/**
 * Finds placeholders in a stream given chunk by chunk. push() returns how many bytes of what it
 * has seen may be forwarded: everything but a tail that could be the start of a placeholder
 * form (held back until the next chunk says otherwise), or a hit.
 */
export class PlaceholderScanner {
  private readonly forms: { text: string; secret: Secret }[];
  private readonly firsts: Set<string>;
  private readonly maxLen: number;
  private carry = "";

  constructor(secrets: readonly Secret[]) {
    this.forms = secrets.flatMap((secret) => formsOf(secret).map((text) => ({ text, secret })));
    this.firsts = new Set(this.forms.map((f) => f.text[0]!));
    this.maxLen = Math.max(0, ...this.forms.map((f) => f.text.length));
  }

  get active(): boolean {
    return this.forms.length > 0;
  }

  /** The longest form's length (what a carry across chunks must keep, less one). */
  get maxFormLength(): number {
    return this.maxLen;
  }

  /**
   * A form in `text` (no history), if any; also after decoding every %XX in it, so a placeholder
   * percent-encoded in part (`moat-ph-ab%63d...`) is found too.
   */
  find(text: string): Found | undefined {
    for (const f of this.forms) {
      if (text.includes(f.text)) return { secret: f.secret, form: describeForm(f.text, f.secret.placeholder) };
    }
    const decoded = this.forms.length ? percentDecoded(text) : undefined;
    if (decoded !== undefined) {
      for (const f of this.forms) if (decoded.includes(f.text)) return { secret: f.secret, form: "percent-encoded" };
    }
    return undefined;
  }

  /** Scan `chunk` after what was held back. */
  push(chunk: Buffer): { found?: Found; release: Buffer } {
    const hay = this.carry ? this.carry + chunk.toString("latin1") : chunk.toString("latin1");
    const found = this.find(hay);
    if (found) return { found, release: Buffer.alloc(0) };
    // Hold back the longest tail that is a proper prefix of some form: only a tail beginning
    // with a form's first character can be one.
    let keep = 0;
    for (let p = Math.max(0, hay.length - this.maxLen + 1); p < hay.length && !keep; p++) {
      if (!this.firsts.has(hay[p]!)) continue;
      const tail = hay.slice(p);
      if (this.forms.some((f) => f.text.startsWith(tail))) keep = hay.length - p;
    }
    // Where %XX escapes are about, a form may be spread over up to three times its length.
    const wide = 3 * this.maxLen;
    const pct = hay.lastIndexOf("%");
    if (pct >= 0 && pct >= hay.length - wide) keep = Math.max(keep, Math.min(hay.length, wide - 1));
    if (!keep && !this.carry) {
      return { release: chunk };
    }
    this.carry = keep ? hay.slice(hay.length - keep) : "";
    return { release: Buffer.from(keep ? hay.slice(0, hay.length - keep) : hay, "latin1") };
  }

  /** The stream ended: what was held back may go. */
  flush(): Buffer {
    const b = Buffer.from(this.carry, "latin1");
    this.carry = "";
    return b;
  }
}

function describeForm(form: string, placeholder: string): string {
  if (form === placeholder) return "raw";
  if (form.startsWith("%")) return "percent-encoded";
  if (form.startsWith("\\u")) return "JSON-escaped";
  return "base64";
}

/** The secrets whose value may go on a connection to `sni`: its patterns match, and DNS pinned the address to it. */
export function secretsFor(secrets: readonly Secret[], sni: string | undefined, pinned: boolean): Secret[] {
  return sni && pinned ? secrets.filter((s) => matchesPattern(sni, s.hosts)) : [];
}

/** A header value with the placeholders of `allowed` secrets replaced, Basic auth decoded and encoded again. */
export function substituteHeader(allowed: readonly Secret[], name: string, value: string): string {
  for (const s of allowed) {
    if (s.basicAuth && name === "authorization" && /^basic\s+/i.test(value)) {
      const scheme = value.slice(0, value.search(/\s/));
      const decoded = Buffer.from(value.slice(scheme.length).trim(), "base64").toString("latin1");
      if (decoded.includes(s.placeholder)) value = `${scheme} ${Buffer.from(decoded.split(s.placeholder).join(s.value), "latin1").toString("base64")}`;
    }
    if (s.headers && value.includes(s.placeholder)) value = value.split(s.placeholder).join(s.value);
  }
  return value;
}

/** `target` (a request path) with the placeholder replaced in its query string only, percent-encoded. */
export function substituteQuery(secret: Secret, target: string): string {
  const q = target.indexOf("?");
  if (q < 0) return target;
  return target.slice(0, q + 1) + target.slice(q + 1).split(secret.placeholder).join(encodeURIComponent(secret.value));
}
