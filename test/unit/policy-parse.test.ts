// policy-parse.test.ts — the text forms of the network policy: `--net-rule` strings
// (orchestrator/src/policy/rule-parser.ts) and the JSON config file (cli/config-file.ts).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseRule } from "../../orchestrator/src/policy/rule-parser.js";
import { loadConfigFile, parseConfig, type MoatConfig } from "../../orchestrator/src/cli/config-file.js";
import { NetworkPolicy, Rule, Destination, validatePolicy } from "../../orchestrator/src/model/policy.js";
import { ConfigError } from "../../orchestrator/src/errors.js";

// --- parseRule: what must parse ------------------------------------------------------------------

const GOOD: ReadonlyArray<readonly [string, Rule]> = [
  ["allow@group:private:tcp:5432",
    { action: "allow", direction: "outbound", destination: { kind: "group", group: "private" }, protocol: "tcp", ports: { start: 5432, end: 5432 } }],
  ["deny@169.254.169.254",
    { action: "deny", direction: "outbound", destination: { kind: "cidr", cidr: "169.254.169.254/32" } }],
  ["allow:egress@any:udp:53",
    { action: "allow", direction: "outbound", destination: { kind: "any" }, protocol: "udp", ports: { start: 53, end: 53 } }],
  ["deny:ingress@10.0.0.0/8",
    { action: "deny", direction: "inbound", destination: { kind: "cidr", cidr: "10.0.0.0/8" } }],
  ["allow@[2001:db8::]/32:tcp:443",
    { action: "allow", direction: "outbound", destination: { kind: "cidr", cidr: "2001:db8::/32" }, protocol: "tcp", ports: { start: 443, end: 443 } }],
  ["allow@[::1]:tcp",
    { action: "allow", direction: "outbound", destination: { kind: "cidr", cidr: "::1/128" }, protocol: "tcp" }],
  ["allow@api.example.com:tcp:443",
    { action: "allow", direction: "outbound", destination: { kind: "domain", name: "api.example.com" }, protocol: "tcp", ports: { start: 443, end: 443 } }],
  ["allow@*.example.com",
    { action: "allow", direction: "outbound", destination: { kind: "domain-suffix", suffix: "example.com" } }],
  ["allow@.example.com:tcp:80-90",
    { action: "allow", direction: "outbound", destination: { kind: "domain-suffix", suffix: "example.com" }, protocol: "tcp", ports: { start: 80, end: 90 } }],
  ["deny@group:metadata",
    { action: "deny", direction: "outbound", destination: { kind: "group", group: "metadata" } }],
  ["allow@group:public:icmp",
    { action: "allow", direction: "outbound", destination: { kind: "group", group: "public" }, protocol: "icmpv4" }],
  // Beyond the brief's examples: aliases, "any" protocol, IPv6 forms, case.
  ["allow@group:link_local",
    { action: "allow", direction: "outbound", destination: { kind: "group", group: "link-local" } }],
  ["allow@group:linklocal:icmpv6",
    { action: "allow", direction: "outbound", destination: { kind: "group", group: "link-local" }, protocol: "icmpv6" }],
  ["deny@[fd00::]/8:any",
    { action: "deny", direction: "outbound", destination: { kind: "cidr", cidr: "fd00::/8" } }],
  ["allow:ingress@[2001:DB8:0::7]:udp:5000-5010",
    { action: "allow", direction: "inbound", destination: { kind: "cidr", cidr: "2001:db8::7/128" }, protocol: "udp", ports: { start: 5000, end: 5010 } }],
  ["DENY:Egress@API.Example.COM.",
    { action: "deny", direction: "outbound", destination: { kind: "domain", name: "api.example.com" } }],
  ["allow@metadata.",
    { action: "allow", direction: "outbound", destination: { kind: "domain", name: "metadata" } }],
  // Multicast may be denied, and named in allows wider than it; only an allow of nothing else is refused.
  ["deny@group:multicast",
    { action: "deny", direction: "outbound", destination: { kind: "group", group: "multicast" } }],
  ["deny@224.0.0.251:udp:5353",
    { action: "deny", direction: "outbound", destination: { kind: "cidr", cidr: "224.0.0.251/32" }, protocol: "udp", ports: { start: 5353, end: 5353 } }],
  ["allow@192.0.0.0/2",
    { action: "allow", direction: "outbound", destination: { kind: "cidr", cidr: "192.0.0.0/2" } }],
  ["allow@[fe00::]/7",
    { action: "allow", direction: "outbound", destination: { kind: "cidr", cidr: "fe00::/7" } }],
];

for (const [text, expected] of GOOD) {
  test(`parseRule: ${text}`, () => {
    assert.deepEqual(parseRule(text), expected);
  });
}

// --- parseRule: what must not ------------------------------------------------------------------

/** [rule text, a fragment the message must contain besides the rule text itself] */
const BAD: ReadonlyArray<readonly [string, string, string]> = [
  ["bad action", "alow@any", `unknown action "alow"`],
  ["missing action", "@any", "missing action"],
  ["bad direction", "allow:sideways@any", `unknown direction "sideways"`],
  ["extra part before @", "allow:egress:now@any", `unexpected "now"`],
  ["missing @", "allow", `missing "@"`],
  ["two @", "allow@a@b.example", `more than one "@"`],
  ["empty target", "allow@", "empty target"],
  ["empty target before protocol", "allow@:tcp:80", "empty target"],
  ["bad group", "deny@group:cloud", `unknown group "cloud"`],
  ["empty group", "deny@group:", "missing group name"],
  ["bare group name", "deny@metadata", `"metadata" is a group name`],
  ["prefix too long", "deny@10.0.0.0/33", `"/33"`],
  ["host bits set", "deny@10.1.2.3/8", "host bits"],
  ["short IPv4 form", "deny@10/8", `"10" is not an IPv4 address`],
  ["octal IPv4", "deny@010.0.0.1", `"010.0.0.1" is not an IPv4 address`],
  ["octet out of range", "deny@10.0.0.256", `"10.0.0.256" is not an IPv4 address`],
  ["hex IPv4", "deny@0x7f.0.0.1", `"0x7f.0.0.1"`],
  ["bad IPv6 in brackets", "allow@[2001:db8::zz]:tcp", `"2001:db8::zz" is not an IPv6 address`],
  ["IPv4 in brackets", "allow@[192.0.2.7]", `"192.0.2.7" is not an IPv6 address`],
  ["IPv6 zone", "allow@[fe80::1%eth0]", `"fe80::1%eth0" is not an IPv6 address`],
  ["unclosed bracket", "allow@[::1:tcp", `"[" without a closing "]"`],
  ["text after bracket", "allow@[::1]x:tcp", `"[::1]x"`],
  ["IPv6 without brackets", "allow@2001:db8::1:tcp:443", `"2001:db8::1" must be in brackets`],
  ["IPv6 CIDR without brackets", "deny@fd00::/8", `"fd00::/8" must be in brackets`],
  ["bad domain", "allow@exa_mple..com", `"exa_mple..com"`],
  ["bad suffix", "allow@*example.com", `bad domain suffix "*example.com"`],
  ["unknown protocol", "allow@any:sctp", `unknown protocol "sctp"`],
  ["empty protocol", "allow@any:", "missing protocol"],
  ["ports with icmp", "allow@any:icmp:80", `ports "80" given with protocol icmp`],
  ["ports with any", "allow@any:any:80", `ports "80" given with protocol any`],
  ["ports with icmpv6", "allow@[::1]:icmpv6:1", `ports "1" given with protocol icmpv6`],
  ["port out of range", "allow@any:tcp:65536", "65536 is out of range"],
  ["port far out of range", "allow@any:tcp:99999999", `"99999999" is out of range`],
  ["reversed range", "allow@any:tcp:90-80", "90-80 is empty"],
  ["bad ports", "allow@any:udp:53-", `bad ports "53-"`],
  ["empty ports", "allow@any:udp:", "missing ports"],
  ["trailing garbage", "allow@any:tcp:80:extra", `unexpected "extra"`],
  // Multicast and broadcast are never forwarded: an allow of them alone could never take effect.
  ["an allow of group multicast", "allow@group:multicast", "never forwarded: group:multicast is multicast"],
  ["an allow of group multicast with ports", "allow@group:multicast:udp:5353", "never forwarded: group:multicast"],
  ["an allow of an IPv4 multicast group", "allow@224.0.0.251:udp:5353", "224.0.0.251/32 is multicast (224.0.0.0/4)"],
  ["an allow of IPv4 multicast space", "allow@239.0.0.0/8", "239.0.0.0/8 is multicast (224.0.0.0/4)"],
  ["an allow of the broadcast address", "allow@255.255.255.255:udp:67", "255.255.255.255/32 is reserved and broadcast space (240.0.0.0/4)"],
  ["an allow of 224.0.0.0/3", "allow@224.0.0.0/3", "224.0.0.0/3 is multicast and broadcast (224.0.0.0/3)"],
  ["an allow of an IPv6 multicast group", "allow@[ff02::fb]:udp:5353", "ff02::fb/128 is multicast (ff00::/8)"],
  ["an allow of IPv4 multicast spelled IPv4-mapped", "allow@[::ffff:224.0.0.251]", "::ffff:e000:fb/128 is multicast (224.0.0.0/4)"],
];

for (const [what, text, fragment] of BAD) {
  test(`parseRule rejects ${what}: ${text}`, () => {
    assert.throws(() => parseRule(text), (e: unknown) => {
      assert.ok(e instanceof ConfigError, `expected a ConfigError, got ${String(e)}`);
      assert.ok(e.message.includes(`"${text}"`), `message should quote the rule: ${e.message}`);
      assert.ok(e.message.includes(fragment), `message should contain ${fragment}: ${e.message}`);
      assert.ok(e.hint && /e\.g\.|did you mean/.test(e.hint), `hint should show an example: ${e.hint}`);
      return true;
    });
  });
}

test("an allow of multicast says what, where, and what to do instead — also through the API (validatePolicy)", () => {
  assert.throws(() => parseRule("allow@224.0.0.251:udp:5353"), {
    name: "ConfigError",
    message: `--net-rule "allow@224.0.0.251:udp:5353": this allows what is never forwarded: 224.0.0.251/32 is multicast (224.0.0.0/4)`,
    hint: "moat never carries multicast or broadcast out of a sandbox (they would reach every host on the host's network): " +
      "drop the rule, and reach the service at its unicast address, e.g. allow@192.168.1.20:udp:5353",
  });
  const api = NetworkPolicy.publicOnly().withRules(Rule.denyOutbound(Destination.any()), Rule.allowOutbound(Destination.group("multicast")));
  assert.throws(() => validatePolicy(api), { name: "ConfigError", message: "policy.rules[1] allows what is never forwarded: group:multicast is multicast (224.0.0.0/4, ff00::/8)" });
  assert.doesNotThrow(() => validatePolicy(NetworkPolicy.publicOnly().withRules(Rule.denyOutbound(Destination.group("multicast")))));
});

test("parseRule: errors start with the flag name and show the expected form", () => {
  assert.throws(() => parseRule("alow@any"), {
    name: "ConfigError",
    message: `--net-rule "alow@any": unknown action "alow"`,
    hint: "expected allow or deny, e.g. allow@group:private:tcp:5432",
  });
});

test("parseRule: a caller-given context replaces the flag name", () => {
  assert.throws(() => parseRule("deny@group:nope", "moat.json: network.policy.rules[0]"),
    { message: `moat.json: network.policy.rules[0] "deny@group:nope": unknown group "nope"` });
});

// --- config files ------------------------------------------------------------------------------

const dir = mkdtempSync(join(tmpdir(), "moat-policy-parse-"));
after(() => rmSync(dir, { recursive: true, force: true }));
let fileCount = 0;
function file(content: string): string {
  const path = join(dir, `config-${fileCount++}.json`);
  writeFileSync(path, content);
  return path;
}
const json = (v: unknown): string => JSON.stringify(v, null, 2);

/** Assert `fn` throws a ConfigError whose message contains every fragment. */
function throwsConfig(fn: () => unknown, ...fragments: string[]): ConfigError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof ConfigError, `expected a ConfigError, got ${String(caught)}`);
  for (const f of fragments) assert.ok(caught.message.includes(f), `message should contain ${f}: ${caught.message}`);
  return caught;
}

const FULL = {
  network: {
    policy: {
      preset: "public-only",
      defaultAction: "deny",
      rules: [
        "deny@169.254.169.254",
        { action: "allow", direction: "outbound", destination: { kind: "group", group: "private" }, protocol: "tcp", ports: { start: 5432, end: 5432 } },
        { action: "deny", direction: "inbound", destination: { kind: "cidr", cidr: "[fd00::]/8" } },
        "allow@.Example.com:tcp:80-90",
      ],
    },
    maxConnections: 256,
    denyResponse: "reject",
    auditLog: "/var/log/moat-audit.jsonl",
    dns: {
      blockDomains: ["Malware.Example.com."],
      blockDomainSuffixes: [".tracking.example", "*.ads.example"],
      nameservers: ["192.0.2.53", "2001:DB8::53"],
      queryTimeoutMs: 2000,
      rebindProtection: true,
      blockedResponse: "nxdomain",
    },
  },
};

const FULL_EXPECTED: MoatConfig = {
  network: {
    policy: new NetworkPolicy("deny", [
      { action: "deny", direction: "outbound", destination: { kind: "cidr", cidr: "169.254.169.254/32" } },
      { action: "allow", direction: "outbound", destination: { kind: "group", group: "private" }, protocol: "tcp", ports: { start: 5432, end: 5432 } },
      { action: "deny", direction: "inbound", destination: { kind: "cidr", cidr: "fd00::/8" } },
      { action: "allow", direction: "outbound", destination: { kind: "domain-suffix", suffix: "example.com" }, protocol: "tcp", ports: { start: 80, end: 90 } },
      { action: "allow", direction: "outbound", destination: { kind: "group", group: "public" } },
    ]),
    maxConnections: 256,
    denyResponse: "reject",
    auditLog: "/var/log/moat-audit.jsonl",
    dns: {
      blockDomains: ["malware.example.com"],
      blockDomainSuffixes: ["tracking.example", "ads.example"],
      nameservers: ["192.0.2.53", "2001:db8::53"],
      queryTimeoutMs: 2000,
      rebindProtection: true,
      blockedResponse: "nxdomain",
    },
  },
};

test("config: a full valid file loads to the expected config, its rules before the preset's", () => {
  assert.deepEqual(loadConfigFile(file(json(FULL))), FULL_EXPECTED);
});

test("config: a loaded policy written back as model-shaped rules loads to the same policy", () => {
  const first = loadConfigFile(file(json(FULL)));
  const p = first.network!.policy!;
  const again = loadConfigFile(file(json({ ...FULL, network: { ...FULL.network, policy: { preset: "allow-all", defaultAction: p.defaultAction, rules: p.rules } } })));
  assert.deepEqual(again, first);
});

test("config: an empty object and an empty network are valid and empty", () => {
  assert.deepEqual(parseConfig({}, "x.json"), {});
  assert.deepEqual(parseConfig({ network: {} }, "x.json"), { network: {} });
});

const PRESETS: ReadonlyArray<readonly [unknown, NetworkPolicy]> = [
  [undefined, NetworkPolicy.publicOnly()],
  ["public-only", NetworkPolicy.publicOnly()],
  ["allow-all", NetworkPolicy.allowAll()],
  ["none", NetworkPolicy.none()],
];
for (const [preset, expected] of PRESETS) {
  test(`config: preset ${String(preset)} gives ${expected.offline ? "an offline" : `a default-${expected.defaultAction}`} policy`, () => {
    const policy = parseConfig({ network: { policy: preset === undefined ? {} : { preset } } }, "x.json").network!.policy!;
    assert.deepEqual(policy, expected);
  });
}

test("config: preset none sets offline", () => {
  const policy = loadConfigFile(file(json({ network: { policy: { preset: "none" } } }))).network!.policy!;
  assert.equal(policy.offline, true);
  assert.equal(policy.defaultAction, "deny");
  assert.deepEqual(policy.rules, []);
});

test("config: rules with preset none are rejected (they could never apply)", () => {
  throwsConfig(() => parseConfig({ network: { policy: { preset: "none", rules: ["allow@any"] } } }, "x.json"),
    "x.json", "network.policy.rules", `preset "none"`);
});

test("config: defaultAction overrides the preset's default and keeps its rules", () => {
  const policy = parseConfig({ network: { policy: { preset: "public-only", defaultAction: "allow" } } }, "x.json").network!.policy!;
  assert.deepEqual(policy, new NetworkPolicy("allow", NetworkPolicy.publicOnly().rules));
});

const UNKNOWN_KEYS: ReadonlyArray<readonly [string, unknown, string, string]> = [
  ["top level", { netwrok: {} }, "netwrok", "network"],
  ["network", { network: { maxConnection: 5 } }, "network.maxConnection", "maxConnections"],
  ["policy", { network: { policy: { default: "deny" } } }, "network.policy.default", "defaultAction"],
  ["dns", { network: { dns: { servers: [] } } }, "network.dns.servers", "nameservers"],
  ["a rule", { network: { policy: { rules: [{ action: "allow", direction: "outbound", destination: { kind: "any" }, port: 80 }] } } },
    "network.policy.rules[0].port", "ports"],
  ["a destination", { network: { policy: { rules: [{ action: "allow", direction: "outbound", destination: { kind: "domain", name: "a.example", cidr: "10.0.0.0/8" } }] } } },
    "network.policy.rules[0].destination", "name"],
  ["ports", { network: { policy: { rules: [{ action: "allow", direction: "outbound", destination: { kind: "any" }, protocol: "tcp", ports: { from: 1, to: 2 } }] } } },
    "network.policy.rules[0].ports.from", "start, end"],
];
for (const [where, config, path, known] of UNKNOWN_KEYS) {
  test(`config: an unknown key in ${where} is rejected with its path and the known keys`, () => {
    const e = throwsConfig(() => loadConfigFile(file(json(config))), "config-", path, "unknown key");
    assert.ok(e.hint?.includes(known), `hint should list the known keys: ${e.hint}`);
  });
}

const BAD_RULES: ReadonlyArray<readonly [string, unknown, string[]]> = [
  ["a bad rule string", "alow@any", ["network.policy.rules[1]", `"alow@any"`, `unknown action "alow"`]],
  ["a bad destination group", { action: "deny", direction: "outbound", destination: { kind: "group", group: "cloud" } },
    ["network.policy.rules[1].destination", `"cloud"`]],
  ["a bad destination kind", { action: "deny", direction: "outbound", destination: { kind: "host" } },
    ["network.policy.rules[1].destination.kind", `"host"`]],
  ["a lenient IPv4 form", { action: "deny", direction: "outbound", destination: { kind: "cidr", cidr: "10/8" } },
    ["network.policy.rules[1].destination.cidr", `"10"`]],
  ["a cidr that is not a string", { action: "deny", direction: "outbound", destination: { kind: "cidr", cidr: 10 } },
    ["network.policy.rules[1].destination.cidr", "not a string"]],
  ["a missing destination", { action: "deny", direction: "outbound" }, ["network.policy.rules[1].destination", "missing"]],
  ["a bad action", { action: "block", direction: "outbound", destination: { kind: "any" } }, ["network.policy.rules[1].action", `"block"`]],
  ["ports without tcp or udp", { action: "allow", direction: "outbound", destination: { kind: "any" }, ports: { start: 1, end: 2 } },
    ["network.policy.rules[1]", "ports"]],
  ["ports that are not numbers", { action: "allow", direction: "outbound", destination: { kind: "any" }, protocol: "tcp", ports: { start: "80", end: 80 } },
    ["network.policy.rules[1].ports.start", "not a number"]],
  ["a rule that is a number", 42, ["network.policy.rules[1]", "not an object"]],
  ["an allow of multicast (a string)", "allow@[ff02::fb]", ["network.policy.rules[1]", `"allow@[ff02::fb]"`, "never forwarded", "ff02::fb/128 is multicast"]],
  ["an allow of multicast (an object)", { action: "allow", direction: "outbound", destination: { kind: "group", group: "multicast" } },
    ["network.policy.rules[1]", "never forwarded", "group:multicast"]],
];
for (const [what, bad, fragments] of BAD_RULES) {
  test(`config: ${what} is rejected with its rules[i] path`, () => {
    const path = file(json({ network: { policy: { rules: ["allow@any:udp:53", bad] } } }));
    throwsConfig(() => loadConfigFile(path), path, ...fragments);
  });
}

const BAD_VALUES: ReadonlyArray<readonly [string, unknown, string]> = [
  ["maxConnections zero", { network: { maxConnections: 0 } }, "network.maxConnections"],
  ["maxConnections fractional", { network: { maxConnections: 1.5 } }, "network.maxConnections"],
  ["denyResponse", { network: { denyResponse: "ignore" } }, "network.denyResponse"],
  ["auditLog", { network: { auditLog: "" } }, "network.auditLog"],
  ["auditLogMaxBytes", { network: { auditLogMaxBytes: 0 } }, "network.auditLogMaxBytes"],
  ["auditLogIntervalMs", { network: { auditLogIntervalMs: "10s" } }, "network.auditLogIntervalMs"],
  ["exitGraceMs negative", { network: { exitGraceMs: -1 } }, "network.exitGraceMs"],
  ["exitGraceMs too long", { network: { exitGraceMs: 600001 } }, "network.exitGraceMs"],
  ["preset", { network: { policy: { preset: "public" } } }, "network.policy.preset"],
  ["defaultAction", { network: { policy: { defaultAction: "Allow" } } }, "network.policy.defaultAction"],
  ["rules not a list", { network: { policy: { rules: "allow@any" } } }, "network.policy.rules"],
  ["blockDomains entry", { network: { dns: { blockDomains: ["bad name.example"] } } }, "network.dns.blockDomains[0]"],
  ["nameserver", { network: { dns: { nameservers: ["192.0.2.53", "dns.example"] } } }, "network.dns.nameservers[1]"],
  ["queryTimeoutMs", { network: { dns: { queryTimeoutMs: -1 } } }, "network.dns.queryTimeoutMs"],
  ["rebindProtection", { network: { dns: { rebindProtection: "yes" } } }, "network.dns.rebindProtection"],
  ["blockedResponse", { network: { dns: { blockedResponse: "servfail" } } }, "network.dns.blockedResponse"],
  ["network not an object", { network: [] }, "network"],
];
for (const [what, config, path] of BAD_VALUES) {
  test(`config: a bad ${what} is rejected with its path`, () => {
    throwsConfig(() => parseConfig(config, "moat.json"), "moat.json: ", path);
  });
}

test("config: the audit log's bounds and the exit grace are read (0 is a valid grace)", () => {
  const c = parseConfig({ network: { auditLogMaxBytes: 4096, auditLogIntervalMs: 250, exitGraceMs: 0 } }, "moat.json");
  assert.deepEqual([c.network?.auditLogMaxBytes, c.network?.auditLogIntervalMs, c.network?.exitGraceMs], [4096, 250, 0]);
});

test("config: a configuration that is not an object is rejected", () => {
  throwsConfig(() => parseConfig([], "moat.json"), "moat.json", "not an object");
});

test("config: a JSON syntax error names the file and the parser's complaint", () => {
  const path = file(`{ "network": { "maxConnections": 5, } }`);
  const e = throwsConfig(() => loadConfigFile(path), path, "not valid JSON");
  assert.match(e.message, /JSON|position|token/);
});

test("config: a missing file names the path and the OS error", () => {
  const path = join(dir, "does-not-exist.json");
  throwsConfig(() => loadConfigFile(path), path, "ENOENT");
});

test("config: the sandbox section gives the namespace sandbox's user and the command's variables", () => {
  const c = parseConfig({ sandbox: { user: "1234:2345", env: { LOG_LEVEL: "debug", EMPTY: "" } } }, "moat.json");
  assert.deepEqual(c.sandbox, { user: { uid: 1234, gid: 2345 }, env: { LOG_LEVEL: "debug", EMPTY: "" } });
  throwsConfig(() => parseConfig({ sandbox: { user: "0" } }, "moat.json"), "moat.json", "cannot be the host's root");
  throwsConfig(() => parseConfig({ sandbox: { user: 1000 } }, "moat.json"), "sandbox.user", "not \"UID[:GID]\"");
  throwsConfig(() => parseConfig({ sandbox: { env: { "A B": "x" } } }, "moat.json"), "sandbox.env.A B", "");
  throwsConfig(() => parseConfig({ sandbox: { env: { N: 1 } } }, "moat.json"), "sandbox.env.N", "1");
  throwsConfig(() => parseConfig({ sandbox: { uid: 1 } }, "moat.json"), "sandbox", "uid");
});
