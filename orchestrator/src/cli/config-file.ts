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

const TOP_KEYS = ["network", "sandbox"] as const;
const SANDBOX_KEYS = ["user", "env"] as const;
const NETWORK_KEYS = ["policy", "maxConnections", "limits", "denyResponse", "auditLog", "auditLogMaxBytes", "auditLogIntervalMs", "exitGraceMs", "dns", "ports", "defaultIngress", "tls", "secrets", "secretViolation"] as const;
const SECRET_KEYS = ["env", "valueFrom", "allowedHosts", "placeholder", "inject"] as const;
const TLS_KEYS = ["intercept", "ports", "bypass", "caCert", "caKey", "upstreamCa", "verifyUpstream", "blockQuic", "caOut", "trustHostCas"] as const;
const POLICY_KEYS = ["preset", "defaultAction", "rules"] as const;
const DNS_KEYS = ["blockDomains", "blockDomainSuffixes", "nameservers", "queryTimeoutMs", "rebindProtection", "blockedResponse"] as const;
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

/** Check an already-parsed configuration; `source` (usually the file's path) starts every error. */
export function parseConfig(json: unknown, source: string): MoatConfig {
  const fail: Ctx["fail"] = (path, problem, hint) => {
    throw new ConfigError(`${source}: ${path === "" ? "" : `${path}: `}${problem}`, hint);
  };
  const ctx: Ctx = { source, fail };

  const top = object(ctx, json, "", "the top level", TOP_KEYS, `e.g. { "network": { "policy": { "preset": "public-only" } } }`);
  const config: MoatConfig = {};
  if (top.sandbox !== undefined) {
    const sb = object(ctx, top.sandbox, "sandbox", "sandbox", SANDBOX_KEYS, `e.g. "sandbox": { "user": "1000:1000" }`);
    config.sandbox = {};
    if (sb.user !== undefined) {
      if (typeof sb.user !== "string") fail("sandbox.user", `is ${describe(sb.user)}, not "UID[:GID]"`, `e.g. "user": "1000:1000"`);
      config.sandbox.user = parseUser(sb.user as string, `${source}: sandbox.user`);
    }
    if (sb.env !== undefined) {
      const env = sb.env as Record<string, unknown>;
      if (typeof env !== "object" || env === null || Array.isArray(env)) fail("sandbox.env", `is ${describe(sb.env)}, not an object`, `e.g. "env": { "LOG_LEVEL": "debug" }`);
      for (const [k, v] of Object.entries(env)) {
        if (!/^[^\s=]+$/.test(k) || typeof v !== "string") fail(`sandbox.env.${k}`, `is ${describe(v)}`, `names without spaces or "=", values strings: "LOG_LEVEL": "debug"`);
      }
      config.sandbox.env = { ...env } as Record<string, string>;
    }
  }
  if (top.network === undefined) return config;

  const net = object(ctx, top.network, "network", "network", NETWORK_KEYS, `e.g. "network": { "policy": { "preset": "public-only" } }`);
  const network: NonNullable<MoatConfig["network"]> = {};
  if (net.policy !== undefined) network.policy = policy(ctx, net.policy);
  if (net.maxConnections !== undefined) network.maxConnections = positiveInteger(ctx, net.maxConnections, "network.maxConnections", "e.g. 256");
  if (net.limits !== undefined) {
    const l = object(ctx, net.limits, "network.limits", "network.limits", LIMIT_KEYS, `e.g. "limits": { "egress": "50mbit", "connRate": 20 }`);
    const limits: Record<string, unknown> = {};
    for (const k of LIMIT_KEYS) if (l[k] !== undefined) limits[k] = validateLimit(k, l[k], `${source}: network.limits.${k}`);
    network.limits = limits as RateLimits;
  }
  if (net.denyResponse !== undefined) network.denyResponse = oneOf(ctx, net.denyResponse, "network.denyResponse", ["drop", "reject", "http"] as const);
  if (net.auditLog !== undefined) {
    if (typeof net.auditLog !== "string" || net.auditLog === "") fail("network.auditLog", `is ${describe(net.auditLog)}, not a file path`, `e.g. "auditLog": "/var/log/moat-audit.jsonl"`);
    network.auditLog = net.auditLog as string;
  }
  if (net.auditLogMaxBytes !== undefined) network.auditLogMaxBytes = positiveInteger(ctx, net.auditLogMaxBytes, "network.auditLogMaxBytes", "e.g. 67108864 (64 MiB)");
  if (net.auditLogIntervalMs !== undefined) network.auditLogIntervalMs = positiveInteger(ctx, net.auditLogIntervalMs, "network.auditLogIntervalMs", "e.g. 10000");
  if (net.exitGraceMs !== undefined) {
    const g = net.exitGraceMs;
    if (typeof g !== "number" || !Number.isInteger(g) || g < 0 || g > 600000) fail("network.exitGraceMs", `is ${describe(g)}, not a whole number of milliseconds from 0 to 600000`, `e.g. "exitGraceMs": 5000 (0: cut connections at once)`);
    network.exitGraceMs = g as number;
  }
  if (net.dns !== undefined) network.dns = dns(ctx, net.dns);
  if (net.tls !== undefined) {
    const t = object(ctx, net.tls, "network.tls", "network.tls", TLS_KEYS, `e.g. "tls": { "intercept": true, "bypass": ["*.pinned.example"] }`);
    const tlsOut: TlsOptions = {};
    for (const k of ["intercept", "verifyUpstream", "blockQuic", "trustHostCas"] as const) {
      if (t[k] !== undefined) {
        if (typeof t[k] !== "boolean") fail(`network.tls.${k}`, `is ${describe(t[k])}, not true or false`, `e.g. "${k}": true`);
        tlsOut[k] = t[k] as boolean;
      }
    }
    for (const k of ["caCert", "caKey", "caOut"] as const) {
      if (t[k] !== undefined) {
        if (typeof t[k] !== "string" || t[k] === "") fail(`network.tls.${k}`, `is ${describe(t[k])}, not a file path`, `e.g. "${k}": "/etc/moat/ca.pem"`);
        tlsOut[k] = t[k] as string;
      }
    }
    if (t.bypass !== undefined) tlsOut.bypass = stringList(ctx, t.bypass, "network.tls.bypass", "*.pinned.example");
    if (t.upstreamCa !== undefined) tlsOut.upstreamCa = stringList(ctx, t.upstreamCa, "network.tls.upstreamCa", "/etc/moat/upstream-ca.pem");
    if (t.ports !== undefined) {
      if (!Array.isArray(t.ports) || t.ports.some((p) => !Number.isInteger(p) || (p as number) < 1 || (p as number) > 65535)) fail("network.tls.ports", `is ${describe(t.ports)}, not a list of ports`, `e.g. "ports": [443, 8443]`);
      tlsOut.ports = t.ports as number[];
    }
    network.tls = tlsOut;
  }
  if (net.secretViolation !== undefined) network.secretViolation = oneOf(ctx, net.secretViolation, "network.secretViolation", ["block", "block-and-log", "block-and-terminate"] as const);
  if (net.secrets !== undefined) {
    if (!Array.isArray(net.secrets)) fail("network.secrets", `is ${describe(net.secrets)}, not a list`, `e.g. "secrets": [{ "env": "API_KEY", "allowedHosts": ["api.example.com"] }]`);
    network.secrets = (net.secrets as unknown[]).map((x, i) => {
      const path = `network.secrets[${i}]`;
      const o = object(ctx, x, path, path, SECRET_KEYS, `e.g. { "env": "API_KEY", "allowedHosts": ["api.example.com"], "valueFrom": { "env": "REAL_KEY" } }`);
      if (typeof o.env !== "string") fail(`${path}.env`, `is ${describe(o.env)}, not a variable name`, `e.g. "env": "API_KEY"`);
      const spec: SecretSpec = { env: o.env as string, allowedHosts: stringList(ctx, o.allowedHosts, `${path}.allowedHosts`, "api.example.com") };
      if (o.valueFrom !== undefined) {
        const v = o.valueFrom as Record<string, unknown>;
        if (typeof v !== "object" || v === null || (typeof v.env !== "string" && typeof v.file !== "string") || Object.keys(v).length !== 1) {
          fail(`${path}.valueFrom`, `is ${describe(o.valueFrom)}`, `use { "env": "VARIABLE" } or { "file": "/path/to/value" }`);
        }
        spec.valueFrom = typeof v.env === "string" ? { env: v.env } : { file: v.file as string };
      }
      if (o.placeholder !== undefined) spec.placeholder = String(o.placeholder);
      if (o.inject !== undefined) spec.inject = o.inject as SecretSpec["inject"];
      return spec;
    });
  }
  if (net.defaultIngress !== undefined) network.defaultIngress = oneOf(ctx, net.defaultIngress, "network.defaultIngress", ["allow", "deny"] as const);
  if (net.ports !== undefined) {
    if (!Array.isArray(net.ports)) fail("network.ports", `is ${describe(net.ports)}, not a list`, `e.g. "ports": ["8080:80", { "host": 5353, "guest": 53, "protocol": "udp" }]`);
    network.ports = (net.ports as unknown[]).map((p, i) => {
      const where = `${source}: network.ports[${i}]`;
      return typeof p === "string" ? parsePublish(p, where) : validatePort(p as PortSpec, where);
    });
  }
  config.network = network;
  return config;
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

function dns(ctx: Ctx, value: unknown): DnsConfig {
  const d = object(ctx, value, "network.dns", "network.dns", DNS_KEYS, `e.g. "dns": { "blockDomainSuffixes": [".tracking.example"] }`);
  const out: DnsConfig = {};
  const names = (key: "blockDomains" | "blockDomainSuffixes", suffix: boolean): string[] =>
    stringList(ctx, d[key], `network.dns.${key}`, suffix ? ".tracking.example" : "malware.example.com").map((s, i) => {
      try {
        return normalizeName(suffix ? s.replace(/^\*?\./, "") : s);
      } catch (e) {
        if (!(e instanceof ConfigError)) throw e;
        return ctx.fail(`network.dns.${key}[${i}]`, `${JSON.stringify(s)} is not a domain name${suffix ? " suffix" : ""}`,
          suffix ? `e.g. ".tracking.example" or "*.tracking.example"` : `e.g. "malware.example.com"`);
      }
    });
  if (d.blockDomains !== undefined) out.blockDomains = names("blockDomains", false);
  if (d.blockDomainSuffixes !== undefined) out.blockDomainSuffixes = names("blockDomainSuffixes", true);
  if (d.nameservers !== undefined) {
    out.nameservers = stringList(ctx, d.nameservers, "network.dns.nameservers", "192.0.2.53").map((s, i) => {
      const cidr = strictCidr(s.replace(/^\[(.*)\]$/, "$1"));
      if (typeof cidr !== "string" || /\/\d+$/.test(s)) {
        return ctx.fail(`network.dns.nameservers[${i}]`, `${JSON.stringify(s)} is not an IP address`, `e.g. "192.0.2.53" or "2001:db8::53"`);
      }
      return ipaddr.parse(cidr.slice(0, cidr.lastIndexOf("/"))).toString();
    });
  }
  if (d.queryTimeoutMs !== undefined) out.queryTimeoutMs = positiveInteger(ctx, d.queryTimeoutMs, "network.dns.queryTimeoutMs", "e.g. 2000");
  if (d.rebindProtection !== undefined) {
    if (typeof d.rebindProtection !== "boolean") ctx.fail("network.dns.rebindProtection", `is ${describe(d.rebindProtection)}, not true or false`, `e.g. "rebindProtection": true`);
    out.rebindProtection = d.rebindProtection as boolean;
  }
  if (d.blockedResponse !== undefined) out.blockedResponse = oneOf(ctx, d.blockedResponse, "network.dns.blockedResponse", ["refused", "nxdomain"] as const);
  return out;
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

function positiveInteger(ctx: Ctx, value: unknown, path: string, example: string): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value <= 0) {
    ctx.fail(path, `is ${describe(value)}, not a positive integer`, example);
  }
  return value as number;
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
