// config-file.ts — moat's JSON configuration file. Everything in it is checked: an unknown key, a
// value of the wrong type or an invalid rule is an error naming the file and the JSON path, never
// silently ignored.
//
//   {
//     "network": {
//       "policy": {
//         "preset": "public-only",            // or "none" (offline), "allow-all"; default public-only
//         "defaultAction": "deny",            // overrides the preset's default
//         "rules": [                          // tried before the preset's rules; first match wins
//           "allow@group:private:tcp:5432",   // --net-rule syntax, or the model's shape:
//           { "action": "deny", "direction": "outbound", "destination": { "kind": "cidr", "cidr": "10.0.0.0/8" } }
//         ]
//       },
//       "maxConnections": 256,
//       "limits": { "egress": "50mbit", "ingress": "100mbit:1m", "connRate": 20, "dnsRate": "50:100" },
//       "denyResponse": "reject",             // or "drop"
//       "auditLog": "/var/log/moat-audit.jsonl",
//       "auditLogMaxBytes": 67108864,           // the audit log stops here (with a last line saying so)
//       "auditLogIntervalMs": 10000,            // repeats of one event within this are one summary line
//       "exitGraceMs": 5000,                    // when the command ends: how long idle connections are served
//       "ports": ["8080:80", { "bind": "::1", "host": 5353, "guest": 53, "protocol": "udp" }],
//       "defaultIngress": "allow",              // peers on published ports no ingress rule matched
//       "dns": { "blockDomains": [], "blockDomainSuffixes": [], "nameservers": [], "queryTimeoutMs": 2000,
//                "rebindProtection": true, "blockedResponse": "nxdomain" }
//     },
//     "sandbox": {
//       "user": "1000:1000",                    // the host uid[:gid] a namespace sandbox's root is
//       "env": { "LOG_LEVEL": "debug" }         // variables for the command (besides PATH, HOME, TERM, LANG)
//     }
//   }
import { readFileSync } from "node:fs";
import ipaddr from "ipaddr.js";
import { ConfigError } from "../errors.js";
import { NetworkPolicy, normalizeName, validateRule, type Action, type Rule } from "../model/policy.js";
import { parseRule, strictCidr } from "../policy/rule-parser.js";
import type { DnsOptions } from "../gateway/options.js";
import { parsePublish, validatePort, type PortSpec } from "../gateway/ports.js";
import type { TlsOptions } from "../tls/setup.js";
import type { SecretSpec, ViolationAction } from "../secrets/secrets.js";
import { OPTIONS, type OptionEntry } from "../gateway/schema.js";
import { parseUser, type SandboxUser } from "../sandbox/containment.js";
import { LIMIT_KEYS, validateLimit, type RateLimits } from "../gateway/limits.js";

/** The config file's "dns" section: the same settings as the library's DnsOptions. */
export type DnsConfig = DnsOptions;

export interface MoatConfig {
  network?: {
    policy?: NetworkPolicy;
    maxConnections?: number;
    /** Rate limits (gateway/limits.ts), checked. */
    limits?: RateLimits;
    denyResponse?: "drop" | "reject" | "http";
    auditLog?: string;
    auditLogMaxBytes?: number;
    auditLogIntervalMs?: number;
    exitGraceMs?: number;
    dns?: DnsConfig;
    ports?: PortSpec[];
    defaultIngress?: Action;
    tls?: TlsOptions;
    secrets?: SecretSpec[];
    secretViolation?: ViolationAction;
  };
  sandbox?: {
    /** The host uid and gid a namespace sandbox's root is. */
    user?: SandboxUser;
    /** Variables for the command, over its clean environment (-e and --env-file win). */
    env?: Record<string, string>;
  };
}

export type Preset = "none" | "public-only" | "allow-all";
const PRESETS: Readonly<Record<Preset, () => NetworkPolicy>> = {
  "none": NetworkPolicy.none,
  "public-only": NetworkPolicy.publicOnly,
  "allow-all": NetworkPolicy.allowAll,
};

const SECRET_KEYS = ["env", "valueFrom", "allowedHosts", "placeholder", "inject"] as const;
const POLICY_KEYS = ["preset", "defaultAction", "rules"] as const;
const RULE_KEYS = ["action", "direction", "destination", "protocol", "ports"] as const;
const PORTS_KEYS = ["start", "end"] as const;
const DESTINATION_KEYS: Readonly<Record<string, readonly string[]>> = {
  "any": ["kind"],
  "cidr": ["kind", "cidr"],
  "domain": ["kind", "name"],
  "domain-suffix": ["kind", "suffix"],
  "group": ["kind", "group"],
};

/** Read and check a JSON configuration file. */
export function loadConfigFile(path: string): MoatConfig {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new ConfigError(`cannot read config file ${path}: ${err.message}`,
      err.code === "ENOENT" ? "check the path (relative paths are from the current directory)" : "check the file's permissions and that it is a regular file");
  }
  let json: unknown;
  try {
    json = JSON.parse(text.replace(/^\uFEFF/, ""));
  } catch (e) {
    throw new ConfigError(`${path}: not valid JSON: ${(e as Error).message}`, "the config file is plain JSON: no comments, no trailing commas, keys in double quotes");
  }
  return parseConfig(json, path);
}

/**
 * Check an already-parsed configuration; `source` (usually the file's path) starts every error.
 * Its keys are the options schema's config paths (gateway/schema.ts): a plain value is checked by
 * its entry's type, range or choices; the sections and values of a grammar of their own
 * (the policy, ports, secrets, limits, DNS names, the sandbox's user and env) by CUSTOM.
 */
export function parseConfig(json: unknown, source: string): MoatConfig {
  const fail: Ctx["fail"] = (path, problem, hint) => {
    throw new ConfigError(`${source}: ${path === "" ? "" : `${path}: `}${problem}`, hint);
  };
  return section({ source, fail }, json, "") as MoatConfig;
}

/** The keys under `path` ("" the top level, "network.dns"...) in the schema's config paths. */
function keysUnder(path: string): string[] {
  const prefix = path === "" ? "" : `${path}.`;
  const paths = (OPTIONS as readonly OptionEntry[]).flatMap((e) => (e.config?.startsWith(prefix) ? [e.config.slice(prefix.length)] : []));
  return [...new Set(paths.map((p) => p.split(".")[0]!))];
}

const SECTION_EXAMPLE: Readonly<Record<string, string>> = {
  "": `e.g. { "network": { "policy": { "preset": "public-only" } } }`,
  "sandbox": `e.g. "sandbox": { "user": "1000:1000" }`,
  "network": `e.g. "network": { "policy": { "preset": "public-only" } }`,
  "network.limits": `e.g. "limits": { "egress": "50mbit", "connRate": 20 }`,
  "network.dns": `e.g. "dns": { "blockDomainSuffixes": [".tracking.example"] }`,
  "network.tls": `e.g. "tls": { "intercept": true, "bypass": ["*.pinned.example"] }`,
};

/** A section of the file: its keys known, each value read by CUSTOM, its entry, or as a section. */
function section(ctx: Ctx, value: unknown, path: string): Record<string, unknown> {
  const known = keysUnder(path);
  const o = object(ctx, value, path, path === "" ? "the top level" : path, known, SECTION_EXAMPLE[path] ?? "");
  const out: Record<string, unknown> = {};
  for (const key of known) {
    if (o[key] === undefined) continue;
    const p = path === "" ? key : `${path}.${key}`;
    const entry = (OPTIONS as readonly OptionEntry[]).find((e) => e.config === p);
    out[key] = CUSTOM[p] ? CUSTOM[p](ctx, o[key], p) : entry ? plainValue(ctx, entry, o[key], p, key) : section(ctx, o[key], p);
  }
  return out;
}

/** A value of one plain option, checked against its schema entry. */
function plainValue(ctx: Ctx, e: OptionEntry, v: unknown, path: string, key: string): unknown {
  const range = `from ${e.min} to ${e.max}`;
  switch (e.type) {
    case "int": {
      const unit = e.unit === " ms" ? " of milliseconds" : e.unit === " bytes" ? " of bytes" : "";
      if (typeof v !== "number" || !Number.isSafeInteger(v) || v < e.min! || v > e.max!) {
        ctx.fail(path, `is ${describe(v)}, not a whole number${unit} ${range}`, `e.g. "${key}": ${e.default}${e.minNote ? ` (${e.min}: ${e.minNote})` : ""}`);
      }
      return v;
    }
    case "bool":
      if (typeof v !== "boolean") ctx.fail(path, `is ${describe(v)}, not true or false`, `e.g. "${key}": true`);
      return v;
    case "enum":
      return oneOf(ctx, v, path, e.choices!);
    case "list":
      if (e.item === "int") {
        if (!Array.isArray(v)) ctx.fail(path, `is ${describe(v)}, not a list`, `e.g. "${key}": [${e.default}]`);
        (v as unknown[]).forEach((x, i) => {
          if (typeof x !== "number" || !Number.isSafeInteger(x) || x < e.min! || x > e.max!) {
            ctx.fail(`${path}[${i}]`, `is ${describe(x)}, not a whole number ${range}`, `e.g. "${key}": [${e.default}]`);
          }
        });
        return v;
      }
      return stringList(ctx, v, path, e.example ?? e.metavar ?? "");
    default:
      if (typeof v !== "string" || v === "") ctx.fail(path, `is ${describe(v)}, not ${e.metavar === "FILE" ? "a file path" : "a string"}`, `e.g. "${key}": ${JSON.stringify(e.example ?? e.metavar)}`);
      return v;
  }
}

/** The values of a grammar of their own, by config path. */
const CUSTOM: Readonly<Record<string, (ctx: Ctx, value: unknown, path: string) => unknown>> = {
  "sandbox.user": (ctx, v, path) => {
    if (typeof v !== "string") ctx.fail(path, `is ${describe(v)}, not "UID[:GID]"`, `e.g. "user": "1000:1000"`);
    return parseUser(v as string, `${ctx.source}: ${path}`);
  },
  "sandbox.env": (ctx, v, path) => {
    const env = v as Record<string, unknown>;
    if (typeof env !== "object" || env === null || Array.isArray(env)) ctx.fail(path, `is ${describe(v)}, not an object`, `e.g. "env": { "LOG_LEVEL": "debug" }`);
    for (const [k, x] of Object.entries(env)) {
      if (!/^[^\s=]+$/.test(k) || typeof x !== "string") ctx.fail(`${path}.${k}`, `is ${describe(x)}`, `names without spaces or "=", values strings: "LOG_LEVEL": "debug"`);
    }
    return { ...env };
  },
  "network.policy": (ctx, v) => policy(ctx, v),
  "network.secrets": (ctx, v, path) => secrets(ctx, v, path),
  "network.ports": (ctx, v, path) => {
    if (!Array.isArray(v)) ctx.fail(path, `is ${describe(v)}, not a list`, `e.g. "ports": ["8080:80", { "host": 5353, "guest": 53, "protocol": "udp" }]`);
    return (v as unknown[]).map((p, i) => {
      const where = `${ctx.source}: ${path}[${i}]`;
      return typeof p === "string" ? parsePublish(p, where) : validatePort(p as PortSpec, where);
    });
  },
  ...Object.fromEntries(LIMIT_KEYS.map((k) => [`network.limits.${k}`, (ctx: Ctx, v: unknown, path: string) => validateLimit(k, v, `${ctx.source}: ${path}`)])),
  "network.dns.blockDomains": (ctx, v, path) => domainNames(ctx, v, path, false),
  "network.dns.blockDomainSuffixes": (ctx, v, path) => domainNames(ctx, v, path, true),
  "network.dns.nameservers": (ctx, v, path) => stringList(ctx, v, path, "192.0.2.53").map((x, i) => {
    const cidr = strictCidr(x.replace(/^\[(.*)\]$/, "$1"));
    if (typeof cidr !== "string" || /\/\d+$/.test(x)) {
      return ctx.fail(`${path}[${i}]`, `${JSON.stringify(x)} is not an IP address`, `e.g. "192.0.2.53" or "2001:db8::53"`);
    }
    return ipaddr.parse(cidr.slice(0, cidr.lastIndexOf("/"))).toString();
  }),
};

function secrets(ctx: Ctx, value: unknown, where: string): SecretSpec[] {
  if (!Array.isArray(value)) ctx.fail(where, `is ${describe(value)}, not a list`, `e.g. "secrets": [{ "env": "API_KEY", "allowedHosts": ["api.example.com"] }]`);
  return (value as unknown[]).map((x, i) => {
    const path = `${where}[${i}]`;
    const o = object(ctx, x, path, path, SECRET_KEYS, `e.g. { "env": "API_KEY", "allowedHosts": ["api.example.com"], "valueFrom": { "env": "REAL_KEY" } }`);
    if (typeof o.env !== "string") ctx.fail(`${path}.env`, `is ${describe(o.env)}, not a variable name`, `e.g. "env": "API_KEY"`);
    const spec: SecretSpec = { env: o.env as string, allowedHosts: stringList(ctx, o.allowedHosts, `${path}.allowedHosts`, "api.example.com") };
    if (o.valueFrom !== undefined) {
      const v = o.valueFrom as Record<string, unknown>;
      if (typeof v !== "object" || v === null || (typeof v.env !== "string" && typeof v.file !== "string") || Object.keys(v).length !== 1) {
        ctx.fail(`${path}.valueFrom`, `is ${describe(o.valueFrom)}`, `use { "env": "VARIABLE" } or { "file": "/path/to/value" }`);
      }
      spec.valueFrom = typeof v.env === "string" ? { env: v.env } : { file: v.file as string };
    }
    if (o.placeholder !== undefined) spec.placeholder = String(o.placeholder);
    if (o.inject !== undefined) spec.inject = o.inject as SecretSpec["inject"];
    return spec;
  });
}

interface Ctx {
  source: string;
  fail: (path: string, problem: string, hint: string) => never;
}

function policy(ctx: Ctx, value: unknown): NetworkPolicy {
  const p = object(ctx, value, "network.policy", "network.policy", POLICY_KEYS, `e.g. "policy": { "preset": "public-only", "rules": ["allow@group:private:tcp:5432"] }`);
  const preset: Preset = p.preset === undefined ? "public-only" : oneOf(ctx, p.preset, "network.policy.preset", Object.keys(PRESETS) as Preset[]);
  if (preset === "none") {
    // An offline sandbox has no interface: a default action or rules could never apply.
    for (const key of ["defaultAction", "rules"] as const) {
      if (p[key] !== undefined) {
        ctx.fail(`network.policy.${key}`, `has no effect with preset "none" (the sandbox has no network interface)`,
          `remove "${key}", or use preset "public-only" or "allow-all" with your rules`);
      }
    }
    return NetworkPolicy.none();
  }
  let result = PRESETS[preset]();
  if (p.defaultAction !== undefined) {
    const action: Action = oneOf(ctx, p.defaultAction, "network.policy.defaultAction", ["allow", "deny"] as const);
    result = new NetworkPolicy(action, result.rules, result.offline);
  }
  if (p.rules !== undefined) {
    if (!Array.isArray(p.rules)) {
      ctx.fail("network.policy.rules", `is ${describe(p.rules)}, not a list`, `e.g. "rules": ["deny@169.254.169.254", "allow@group:private:tcp:5432"]`);
    }
    // Your rules go in front of the preset's own (first match wins), as with --net-rule: a deny
    // placed after public-only's "allow group:public" could never match.
    result = new NetworkPolicy(result.defaultAction, [...(p.rules as unknown[]).map((r, i) => rule(ctx, r, `network.policy.rules[${i}]`)), ...result.rules], result.offline);
  }
  return result;
}

function rule(ctx: Ctx, value: unknown, path: string): Rule {
  if (typeof value === "string") return parseRule(value, `${ctx.source}: ${path}`);
  const shape = `a rule string such as "allow@api.example.com:tcp:443" or { "action", "direction", "destination", "protocol"?, "ports"? }`;
  const r = object(ctx, value, path, path, RULE_KEYS, `expected ${shape}`);
  // Shape checks first, so that validateRule's messages are about values, not missing objects.
  if (r.destination === undefined) ctx.fail(`${path}.destination`, "is missing", `e.g. "destination": { "kind": "group", "group": "public" }`);
  const d = object(ctx, r.destination, `${path}.destination`, `${path}.destination`, ["kind", "cidr", "name", "suffix", "group"],
    `e.g. { "kind": "cidr", "cidr": "10.0.0.0/8" }`);
  const kindKeys = typeof d.kind === "string" ? DESTINATION_KEYS[d.kind] : undefined;
  if (kindKeys === undefined) {
    ctx.fail(`${path}.destination.kind`, `is ${describe(d.kind)}`, `expected one of ${Object.keys(DESTINATION_KEYS).map((k) => JSON.stringify(k)).join(", ")}`);
  }
  for (const key of Object.keys(d)) {
    if (!kindKeys!.includes(key)) {
      ctx.fail(`${path}.destination`, `unknown key "${key}" for kind ${JSON.stringify(d.kind)}`, `known keys for this kind: ${kindKeys!.join(", ")}`);
    }
  }
  const field = kindKeys![1];
  const destination: Record<string, unknown> = { ...d };
  if (field !== undefined) {
    const v = d[field];
    if (typeof v !== "string") ctx.fail(`${path}.destination.${field}`, `is ${describe(v)}, not a string`, `e.g. { "kind": ${JSON.stringify(d.kind)}, "${field}": ${JSON.stringify(EXAMPLE[field] ?? "...")} }`);
    if (d.kind === "cidr") {
      const cidr = strictCidr((v as string).replace(/^\[(.*)\](\/\d+)?$/, "$1$2"));
      if (typeof cidr !== "string") ctx.fail(`${path}.destination.cidr`, cidr.problem.replace(/ must be in brackets$/, " is not valid"), cidr.hint);
      destination.cidr = cidr;
    }
  }
  if (r.ports !== undefined) {
    const p = object(ctx, r.ports, `${path}.ports`, `${path}.ports`, PORTS_KEYS, `e.g. "ports": { "start": 8000, "end": 8080 }`);
    for (const key of PORTS_KEYS) {
      if (typeof p[key] !== "number") ctx.fail(`${path}.ports.${key}`, `is ${describe(p[key])}, not a number`, `e.g. "ports": { "start": 443, "end": 443 }`);
    }
  }
  try {
    return validateRule({ ...r, destination } as unknown as Rule, path);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    throw new ConfigError(`${ctx.source}: ${e.message}`, e.hint);
  }
}

const EXAMPLE: Readonly<Record<string, string>> = { cidr: "10.0.0.0/8", name: "api.example.com", suffix: "example.com", group: "private" };

function domainNames(ctx: Ctx, value: unknown, path: string, suffix: boolean): string[] {
  return stringList(ctx, value, path, suffix ? ".tracking.example" : "malware.example.com").map((s, i) => {
    try {
      return normalizeName(suffix ? s.replace(/^\*?\./, "") : s);
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
      return ctx.fail(`${path}[${i}]`, `${JSON.stringify(s)} is not a domain name${suffix ? " suffix" : ""}`,
        suffix ? `e.g. ".tracking.example" or "*.tracking.example"` : `e.g. "malware.example.com"`);
    }
  });
}

// --- generic checks ---------------------------------------------------------------------------

/** `value` as a JSON object whose keys are all in `known`. */
function object(ctx: Ctx, value: unknown, path: string, where: string, known: readonly string[], example: string): Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    ctx.fail(path, `${path === "" ? "the configuration " : ""}is ${describe(value)}, not an object`, example);
  }
  const o = value as Record<string, unknown>;
  for (const key of Object.keys(o)) {
    if (!known.includes(key)) {
      ctx.fail(path === "" ? key : `${path}.${key}`, `unknown key "${key}" in ${where}`, `known keys in ${where}: ${known.join(", ")}`);
    }
  }
  return o;
}

function oneOf<T extends string>(ctx: Ctx, value: unknown, path: string, choices: readonly T[]): T {
  if (typeof value !== "string" || !(choices as readonly string[]).includes(value)) {
    ctx.fail(path, `is ${describe(value)}`, `expected ${choices.map((c) => JSON.stringify(c)).join(" or ")}`);
  }
  return value as T;
}

function stringList(ctx: Ctx, value: unknown, path: string, example: string): string[] {
  if (!Array.isArray(value)) ctx.fail(path, `is ${describe(value)}, not a list`, `e.g. [${JSON.stringify(example)}]`);
  (value as unknown[]).forEach((v, i) => {
    if (typeof v !== "string") ctx.fail(`${path}[${i}]`, `is ${describe(v)}, not a string`, `e.g. [${JSON.stringify(example)}]`);
  });
  return value as string[];
}

function describe(value: unknown): string {
  if (value === undefined) return "missing";
  if (Array.isArray(value)) return "a list";
  if (value === null) return "null";
  if (typeof value === "object") return "an object";
  const s = JSON.stringify(value);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}
