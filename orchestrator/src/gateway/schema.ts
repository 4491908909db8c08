// schema.ts — every option of moat, in one table (OPTIONS): its flag, type, range, default,
// where it lives in the library's options (api) and in the config file (config), and its help.
// The rest is derived from it, as gvisor-tap-vsock's one Configuration struct: the CLI's flags
// and --help (cli/main.ts, cli/args.ts), the config file's keys and their checks
// (cli/config-file.ts), the library's option types and their validation (gateway/options.ts),
// and the README's table of options (npm run docs:options; test/unit/options-schema.test.ts).
//
// Adding an option is one entry here, plus its use. An option of a grammar of its own (a rule,
// a port, a rate) names the function that reads it (`parse`) and keeps it; its flag, config path,
// help and README row still come from here. Source lines stay within 100 columns (tested).
import { layout as L } from "../engine/layout.js";
import { MAX_ENGINE_THREADS } from "../engine/engine-host.js";
import { DEFAULT_POOL4 } from "./addressing.js";
import type { TlsOptions } from "../tls/setup.js";
import type { AuditLogOptions } from "../policy/audit.js";

export const DEFAULT_MTU = L.MTU_DEFAULT;

/** The commands that take flags; "client": every command that talks to a daemon. */
export type Command =
  "run" | "serve" | "create" | "daemon" | "policy" | "limit" | "exec" | "client";

export interface OptionEntry {
  /** The flag, without its leading "--". */
  readonly flag: string;
  /** A one-letter alias (-X). */
  readonly short?: string;
  /** int and enum are one value each; list may be given many times (its items strings, or ints). */
  readonly type: "int" | "string" | "bool" | "enum" | "list";
  readonly item?: "int";
  readonly metavar?: string;
  readonly choices?: readonly string[];
  /** An int's range (a list of ints: its items'). */
  readonly min?: number;
  readonly max?: number;
  readonly default?: string | number | boolean;
  /** The default, in words, when it is not a value (the README shows it). */
  readonly defaultText?: string;
  /** A bool flag that turns off what the api/config value turns on (--no-dns-rebind-protection). */
  readonly negate?: true;
  /** A list whose flags are added to the config file's (rather than replacing them). */
  readonly append?: true;
  /** Its path in the library's options (GatewayOptions, VmOptions: "dns.queryTimeoutMs"). */
  readonly api?: string;
  /** Its path in the config file ("network.dns.queryTimeoutMs"). */
  readonly config?: string;
  /** The function that reads a value of a grammar of its own (the type is then the flag's). */
  readonly parse?: string;
  /** In messages about a bad value: what it is ("exit grace"), its unit (" ms"), what its
   * minimum means. */
  readonly noun?: string;
  readonly unit?: string;
  readonly minNote?: string;
  /** A config value for a hint ("/var/log/moat-audit.jsonl"). */
  readonly example?: string;
  readonly commands: readonly Command[];
  /** One paragraph; --help and the README wrap it. */
  readonly help: string;
}

const SANDBOX = ["run", "serve", "create"] as const;
const CLIENTS = ["client"] as const;

export const OPTIONS = [
  { flag: "vhost-user", type: "string", metavar: "PATH", parse: "LinkSpec",
    commands: ["serve"],
    help: "listen at unix socket PATH as a vhost-user-net backend: QEMU (-chardev " +
      "socket,path=PATH,reconnect=1 -netdev vhost-user,chardev=…, guest memory shared: " +
      "memory-backend-memfd,share=on) or cloud-hypervisor connects",
  },
  { flag: "stream", type: "string", metavar: "PATH", parse: "LinkSpec",
    commands: ["serve"],
    help: "listen at unix socket PATH for QEMU -netdev stream (addr.type=unix, addr.path=PATH, " +
      "server=off): 4-byte length + frame",
  },
  { flag: "attach", type: "string", metavar: "IFNAME", parse: "LinkSpec",
    commands: ["serve"],
    help: "serve interface IFNAME from its kernel side (AF_PACKET): the TAP device a VMM holds " +
      "(Firecracker's host_dev_name, cloud-hypervisor's or QEMU's tap), or a veth end whose " +
      "peer is the guest's. It must exist; moat brings it up",
  },
  { flag: "tap", type: "string", metavar: "IFNAME", parse: "LinkSpec",
    commands: ["serve"],
    help: "open the existing TAP device IFNAME as its one holder (the kernel side is the " +
      "guest's). It must exist and not be held: a TAP a VMM holds is --attach's",
  },
  { flag: "control", type: "string", metavar: "PATH", commands: ["daemon", ...CLIENTS],
    help: "the control socket (default /run/moat/control.sock as root, else " +
      "$XDG_RUNTIME_DIR/moat/control.sock)",
  },
  { flag: "net", type: "enum", metavar: "PRESET", choices: ["public-only", "allow-all", "none"],
    default: "public-only", api: "policy", config: "network.policy.preset",
    parse: "NetworkPolicy presets", commands: [...SANDBOX, "policy"],
    help: "policy preset: public-only (default: the internet, not the host, metadata, " +
      "loopback, private, link-local or multicast ranges), allow-all, or none (no network " +
      "interface at all)",
  },
  { flag: "no-net", type: "bool", api: "policy", parse: "NetworkPolicy.none()",
    commands: ["run", "create"],
    help: "the same as --net none (the reference's spelling)",
  },
  { flag: "net-rule", type: "list", metavar: "RULE", api: "policy.rules",
    config: "network.policy.rules", parse: "parseRule", commands: [...SANDBOX, "policy"],
    help: "a rule, ACTION[:DIRECTION]@TARGET[:PROTO[:PORTS]], tried in order before the " +
      "preset's own (first match wins). ACTION allow|deny; DIRECTION egress|ingress; TARGET " +
      "any, IP, CIDR ([v6] in brackets), name, .suffix, *.suffix, group:NAME (host, metadata, " +
      "loopback, private, link-local, multicast, public); PROTO tcp|udp|icmp|icmpv6|any; PORTS " +
      "N or N-M. Example: allow@group:private:tcp:5432",
  },
  { flag: "net-default-egress", type: "enum", metavar: "ACTION", choices: ["allow", "deny"],
    api: "policy.defaultAction", config: "network.policy.defaultAction", parse: "NetworkPolicy",
    commands: [...SANDBOX, "policy"],
    help: "what happens to traffic no rule matched. Without --net (or a --config policy) the " +
      "preset's rules are left out: deny + --net-rule = an allowlist",
  },
  { flag: "net-default-ingress", type: "enum", metavar: "ACTION", choices: ["allow", "deny"],
    default: "allow", api: "defaultIngress", config: "network.defaultIngress",
    noun: "default ingress", commands: SANDBOX,
    help: "what happens to a peer on a published port that no ingress rule matched (default " +
      "allow: publishing a port is the permission)",
  },
  { flag: "publish", short: "p", type: "list", metavar: "[BIND:]HOST:GUEST", append: true,
    api: "ports", config: "network.ports", parse: "parsePublish", commands: SANDBOX,
    help: "publish guest port GUEST on this machine's HOST port: connections to BIND:HOST " +
      "(default 127.0.0.1; [::1] for IPv6) reach the sandbox, coming from the gateway's " +
      "address. /udp for UDP (default tcp). HOST 0 picks a free port (printed). Judged by " +
      "ingress rules, e.g. deny:ingress@10.0.0.0/8. A bind beyond loopback (0.0.0.0, a LAN " +
      "address) prints a warning",
  },
  { flag: "deny-response", type: "enum", metavar: "HOW", choices: ["drop", "reject", "http"],
    default: "drop", api: "denyResponse", config: "network.denyResponse", noun: "deny response",
    commands: [...SANDBOX, "policy"],
    help: "drop (default: silence, as on a firewalled network), reject (TCP reset, ICMP " +
      "administratively prohibited: fails fast), or http (reject, and a denied HTTP request on " +
      "port 80 — or HTTPS, when intercepted — gets 403 naming the host and the rule, so an " +
      "agent learns why)",
  },
  { flag: "max-connections", type: "int", metavar: "N", min: 1, max: L.FLOW_CAPACITY, default: 4096,
    api: "maxConnections", config: "network.maxConnections", noun: "max connections",
    commands: SANDBOX,
    help: "most TCP + UDP connections at once (default 4096)",
  },
  { flag: "limit-egress", type: "string", metavar: "RATE[:BURST]", api: "limits.egress",
    config: "network.limits.egress", parse: "validateLimit", commands: [...SANDBOX, "limit"],
    help: "most bandwidth from the sandbox: RATE in bit, kbit, mbit or gbit a second (×1000, " +
      "as tc: 10mbit, 1.5gbit), BURST in bytes, a number or with k, m or g (×1024; default 100 " +
      "ms of RATE, at least 256k; at least 64k): 50mbit:512k. TCP is paced by the window the " +
      "guest is offered, never dropped; UDP and ICMP over it are dropped. Payload bytes count. " +
      "none: no limit",
  },
  { flag: "limit-ingress", type: "string", metavar: "RATE[:BURST]", api: "limits.ingress",
    config: "network.limits.ingress", parse: "validateLimit", commands: [...SANDBOX, "limit"],
    help: "most bandwidth to the sandbox, as --limit-egress: TCP is paced by reading the host " +
      "socket no faster (the sender's TCP slows down); UDP and ICMP over it are dropped",
  },
  { flag: "limit-conn-rate", type: "string", metavar: "N[:BURST]", api: "limits.connRate",
    config: "network.limits.connRate", parse: "validateLimit", commands: [...SANDBOX, "limit"],
    help: "most new connections (TCP, UDP and ICMP flows) the sandbox opens a second (20, or " +
      "0.5), BURST at once (default N/10, at least 1): 20:5. A TCP connection over it waits " +
      "(its SYN held; past 1024 held, reset); a new UDP or ICMP flow's datagram is dropped",
  },
  { flag: "limit-dns-rate", type: "string", metavar: "N[:BURST]", api: "limits.dnsRate",
    config: "network.limits.dnsRate", parse: "validateLimit", commands: [...SANDBOX, "limit"],
    help: "most DNS queries a second (UDP, TCP and DoT alike), BURST at once (default N, at " +
      "least 1); those over it are answered REFUSED",
  },
  { flag: "config", type: "string", metavar: "FILE", parse: "loadConfigFile",
    commands: [...SANDBOX, "policy"],
    help: "JSON file with the same model as the library ({\"network\": {...}}); flags given as " +
      "well take precedence",
  },
  { flag: "audit-log", type: "string", metavar: "FILE", api: "auditLog", config: "network.auditLog",
    example: "/var/log/moat-audit.jsonl", commands: SANDBOX,
    help: "append every event (denied flows, DNS blocks and rewrites, TLS refusals, secret " +
      "violations, ports, lifecycle, limits) as a JSON line to FILE " +
      "({\"v\":1,\"time\":…,\"sandbox\":…,\"kind\":…}; README, Events)",
  },
  { flag: "audit-log-max-bytes", type: "int", metavar: "N", min: 4096, max: 2 ** 50,
    default: 64 * 2 ** 20, api: "auditLogOptions.maxBytes", config: "network.auditLogMaxBytes",
    noun: "audit log size cap", unit: " bytes", commands: SANDBOX,
    help: "stop writing the audit log at N bytes, with a last line saying so (default 64 MiB)",
  },
  { flag: "audit-log-interval-ms", type: "int", metavar: "MS", min: 1, max: 86400000,
    default: 10000, api: "auditLogOptions.intervalMs", config: "network.auditLogIntervalMs",
    noun: "audit log interval", unit: " ms", commands: SANDBOX,
    help: "repeats of one event (same rule, destination, port) within MS after its first are " +
      "counted and written as one summary line (default 10000)",
  },
  { flag: "dns-block", type: "list", metavar: "NAME", append: true, api: "dns.blockDomains",
    config: "network.dns.blockDomains", commands: SANDBOX,
    help: "answer NAME locally as blocked (REFUSED), never asking upstream",
  },
  { flag: "dns-block-suffix", type: "list", metavar: "SUFFIX", append: true,
    api: "dns.blockDomainSuffixes", config: "network.dns.blockDomainSuffixes", commands: SANDBOX,
    help: "block SUFFIX and every name under it (.ads.example or *.ads.example)",
  },
  { flag: "dns-nameserver", type: "list", metavar: "ADDR",
    defaultText: "the host's /etc/resolv.conf", api: "dns.nameservers",
    config: "network.dns.nameservers", commands: SANDBOX,
    help: "upstream for DNS to the gateway, tried in order: IP, IP:PORT, [IPv6]:PORT, HOST or " +
      "HOST:PORT (default: the host's /etc/resolv.conf)",
  },
  { flag: "dns-query-timeout-ms", type: "int", metavar: "MS", min: 10, max: 60000, default: 5000,
    api: "dns.queryTimeoutMs", config: "network.dns.queryTimeoutMs", noun: "DNS query timeout",
    unit: " ms", commands: SANDBOX,
    help: "per upstream attempt before failing over (default 5000)",
  },
  { flag: "no-dns-rebind-protection", type: "bool", default: true, negate: true,
    api: "dns.rebindProtection", config: "network.dns.rebindProtection", commands: SANDBOX,
    help: "let answers carry private, loopback, link-local or metadata addresses",
  },
  { flag: "dns-blocked-response", type: "enum", metavar: "RCODE", choices: ["refused", "nxdomain"],
    default: "refused", api: "dns.blockedResponse", config: "network.dns.blockedResponse",
    noun: "DNS blocked response", commands: SANDBOX,
    help: "the answer to a blocked name (default refused)",
  },
  { flag: "mtu", type: "int", metavar: "BYTES", min: L.MTU_MIN, max: L.MTU_MAX,
    default: DEFAULT_MTU, api: "mtu", noun: "MTU", minNote: "the IPv6 minimum", commands: SANDBOX,
    help: `MTU of the sandbox's eth0 (default ${DEFAULT_MTU}; large frames are cheap)`,
  },
  { flag: "dns-forward", type: "string", metavar: "ADDR", default: "host", api: "dnsForward",
    commands: SANDBOX,
    help: "shorthand for the upstreams: host (every nameserver of the host's /etc/resolv.conf, " +
      "in order, with failover; the default), none (DNS fails), or one IP, IP:PORT or " +
      "[IPv6]:PORT",
  },
  { flag: "udp-idle-ms", type: "int", metavar: "MS", min: 100, max: 86400000, default: 60000,
    api: "udpIdleMs", noun: "UDP idle timeout", unit: " ms", commands: SANDBOX,
    help: "close a UDP flow after this long without traffic (default 60000)",
  },
  { flag: "max-udp-flows", type: "int", metavar: "N", min: 1, max: L.FLOW_CAPACITY, default: 4096,
    api: "maxUdpFlows", noun: "max UDP flows", commands: SANDBOX,
    help: "most UDP flows the sandbox may hold at once (default 4096)",
  },
  { flag: "ipv4-pool", type: "string", metavar: "CIDR", default: DEFAULT_POOL4, api: "ipv4Pool",
    commands: SANDBOX,
    help: "pool carved into one /30 per sandbox (default 172.30.0.0/16)",
  },
  { flag: "exit-grace-ms", type: "int", metavar: "MS", min: 0, max: 600000, default: 5000,
    api: "exitGraceMs", config: "network.exitGraceMs", noun: "exit grace", unit: " ms",
    minNote: "cut connections at once", commands: ["run", "create"],
    help: "when COMMAND ends, keep serving the guest's TCP connections until they finish or " +
      "move no data for MS (default 5000; 0: cut at once). Connections still open then are " +
      "reset, so their peers never mistake them for complete",
  },
  { flag: "tls-intercept", type: "bool", default: false, api: "tls.intercept",
    config: "network.tls.intercept", commands: SANDBOX,
    help: "intercept TLS (DESIGN §8): connections to --tls-port ports are terminated with a " +
      "leaf certificate from moat's CA (which the sandbox trusts) and re-originated to the " +
      "original address, verified; DoT is answered by moat's DNS; QUIC to those ports is " +
      "dropped. Any other --tls-* option implies it",
  },
  { flag: "tls-port", type: "list", item: "int", metavar: "N", min: 1, max: 65535, default: 443,
    api: "tls.ports", config: "network.tls.ports", commands: SANDBOX,
    help: "a TCP port to intercept (default 443)",
  },
  { flag: "tls-bypass", type: "list", metavar: "PATTERN", append: true, api: "tls.bypass",
    config: "network.tls.bypass", example: "*.pinned.example", commands: SANDBOX,
    help: "pass TLS for this SNI through untouched: a name, or *.suffix (which also matches " +
      "the suffix itself)",
  },
  { flag: "tls-ca-cert", type: "string", metavar: "FILE", api: "tls.caCert",
    config: "network.tls.caCert", example: "/etc/moat/ca.pem", commands: SANDBOX,
    help: "intercept with this CA certificate (PEM; with --tls-ca-key) instead of an ephemeral " +
      "one",
  },
  { flag: "tls-ca-key", type: "string", metavar: "FILE", api: "tls.caKey",
    config: "network.tls.caKey", example: "/etc/moat/ca.pem", commands: SANDBOX,
    help: "the key of --tls-ca-cert (PEM, RSA or EC)",
  },
  { flag: "tls-ca-out", type: "string", metavar: "FILE", api: "tls.caOut",
    config: "network.tls.caOut", example: "/etc/moat/ca.pem", commands: ["run", "serve"],
    help: "write the CA certificate clients must trust to FILE",
  },
  { flag: "tls-upstream-ca", type: "list", metavar: "FILE", append: true, api: "tls.upstreamCa",
    config: "network.tls.upstreamCa", example: "/etc/moat/upstream-ca.pem", commands: SANDBOX,
    help: "also trust this CA (PEM) for upstream servers, besides the host's roots",
  },
  { flag: "tls-no-verify-upstream", type: "bool", default: true, negate: true,
    api: "tls.verifyUpstream", config: "network.tls.verifyUpstream", commands: SANDBOX,
    help: "do not verify upstream servers' certificates",
  },
  { flag: "tls-no-block-quic", type: "bool", default: true, negate: true, api: "tls.blockQuic",
    config: "network.tls.blockQuic", commands: SANDBOX,
    help: "let UDP to intercepted ports (QUIC) through",
  },
  { flag: "tls-trust-host-cas", type: "bool", default: false, api: "tls.trustHostCas",
    config: "network.tls.trustHostCas", commands: SANDBOX,
    help: "the sandbox trusts this host's whole CA store besides moat's CA. Default: the " +
      "distribution's CA set (Debian: /usr/share/ca-certificates/mozilla) and moat's CA, not " +
      "CAs added on the host (/usr/local/share/ca-certificates): with this, a CA planted on " +
      "the host is trusted in every sandbox",
  },
  { flag: "secret", type: "list", metavar: "NAME@HOSTS", append: true, api: "secrets",
    config: "network.secrets", parse: "parseSecretFlag", commands: SANDBOX,
    help: "NAME[=ENVVAR]@HOST[,HOST...]: the command sees NAME as a placeholder; moat puts the " +
      "real value (its own environment variable NAME, or ENVVAR) into HTTP headers and Basic " +
      "auth of requests to HOST (a name or *.suffix) over intercepted TLS, where DNS, SNI and " +
      "Host agree. The placeholder headed anywhere else (another host, DNS names, request " +
      "bodies; raw, base64, %XX, JSON-escaped) is blocked. Implies --tls-intercept",
  },
  { flag: "secret-violation", type: "enum", metavar: "ACTION",
    choices: ["block", "block-and-log", "block-and-terminate"], default: "block",
    api: "onSecretViolation", config: "network.secretViolation", noun: "secret violation action",
    commands: SANDBOX,
    help: "block (default: the request never leaves; HTTP gets a 403 saying why), " +
      "block-and-log (and an audit event: secret, host, where; never the value), " +
      "block-and-terminate (and the sandbox is destroyed: moat exits 125)",
  },
  { flag: "env", short: "e", type: "list", metavar: "NAME[=VALUE]", config: "sandbox.env",
    parse: "commandEnv", commands: SANDBOX,
    help: "give COMMAND the variable NAME: =VALUE, or without it NAME's value in moat's " +
      "environment (left out when unset there). COMMAND's environment is otherwise clean: " +
      "PATH, HOME, TERM and LANG (a VM: its own PATH and HOME), moat's own variables " +
      "(placeholders, CA bundle), nothing else of moat's",
  },
  { flag: "env-file", type: "list", metavar: "FILE", parse: "commandEnv", commands: SANDBOX,
    help: "read variables from FILE: NAME=VALUE or NAME lines as for -e (the value is " +
      "everything after the =, quotes included), # comments, blank lines; -e wins over a file, " +
      "a later file over an earlier one",
  },
  { flag: "user", type: "string", metavar: "UID[:GID]", api: "user", config: "sandbox.user",
    parse: "parseUser", commands: ["run", "create"],
    help: "the host uid (and gid) the sandbox's root is: its processes and whatever they may " +
      "touch on the host are that uid's. Default: under sudo, the user who ran sudo (SUDO_UID, " +
      "SUDO_GID), else nobody (65534). Never 0. GID defaults to the uid's primary group. " +
      "Namespace sandboxes only",
  },
  { flag: "vm", type: "bool", default: false, commands: SANDBOX,
    help: "run COMMAND in a QEMU microVM instead of a namespace: its own kernel and filesystem " +
      "(moat's initramfs: busybox), its NIC served by moat over vhost-user, " +
      "stdin/stdout/stderr and the exit status carried over virtio-serial. The guest image is " +
      "built from Debian's packages on first use (cached in ~/.cache/moat)",
  },
  { flag: "vm-memory", type: "int", metavar: "MiB", min: 64, max: 65536, default: 256,
    api: "vm.memoryMiB", commands: SANDBOX,
    help: "guest RAM (default 256)",
  },
  { flag: "vm-cpus", type: "int", metavar: "N", min: 1, max: 64, default: 1, api: "vm.cpus",
    commands: SANDBOX,
    help: "guest vCPUs (default 1)",
  },
  { flag: "vm-link", type: "enum", metavar: "KIND", choices: ["vhost-user", "stream"],
    default: "vhost-user", api: "vm.link", commands: SANDBOX,
    help: "how the guest's NIC reaches moat: vhost-user (default: virtqueues in shared memory) " +
      "or stream (QEMU -netdev stream, portable)",
  },
  { flag: "vm-accel", type: "enum", metavar: "ACCEL", choices: ["auto", "kvm", "tcg"],
    default: "auto", api: "vm.accel", commands: SANDBOX,
    help: "auto (default: KVM where the guest boots on it, else TCG), kvm or tcg",
  },
  { flag: "name", type: "string", metavar: "NAME", defaultText: "moat-<pool tag>-<slot>",
    api: "name", commands: SANDBOX,
    help: "the sandbox's name (audit events, MAC addresses), unique among this host's live " +
      "sandboxes (default moat-<pool tag>-<slot>, the namespace's name)",
  },
  { flag: "pcap", type: "string", metavar: "FILE", api: "pcap", parse: "validatePcap",
    commands: SANDBOX,
    help: "write every frame at the sandbox's link to FILE (pcap, nanosecond timestamps, " +
      "Ethernet: tcpdump -r FILE, wireshark)",
  },
  { flag: "pcap-max-bytes", type: "int", metavar: "N", min: 0, max: 2 ** 50, default: 256 * 2 ** 20,
    api: "pcap.maxBytes", parse: "validatePcap", commands: SANDBOX,
    help: "stop capturing (saying so once) before FILE exceeds N bytes (default 256 MiB; 0: no " +
      "bound)",
  },
  { flag: "stats", type: "bool", commands: ["run", "serve"],
    help: "print the engine's counters to stderr when the command ends",
  },
  { flag: "stats-interval", type: "int", metavar: "SECONDS", min: 1, max: 86400,
    commands: ["run", "serve", "daemon"],
    help: "also print the counters of --metrics every SECONDS as one JSON line on stderr " +
      "({\"v\":1, \"kind\":\"stats\", \"sandbox\":..., \"counters\":{...}, \"dns\":...})",
  },
  { flag: "metrics", type: "string", metavar: "[ADDR:]PORT", parse: "parseListenAddress",
    commands: ["run", "serve", "daemon"],
    help: "serve Prometheus metrics (text format 0.0.4) at http://ADDR:PORT/metrics (ADDR " +
      "default 127.0.0.1; PORT 0 picks one, printed): flows, bytes and packets, drops by " +
      "reason, DNS, TLS, secrets, policy; a sandbox label each",
  },
  { flag: "engine-threads", type: "int", metavar: "N", min: 1, max: MAX_ENGINE_THREADS,
    defaultText: "one per core", commands: ["daemon"],
    help: "engine worker threads that serve all the sandboxes, and as many TLS worker threads " +
      "for their interception (default: one per core; each sandbox keeps its own engine " +
      "memory, flow table and policy on its engine thread)",
  },
  { flag: "help", type: "bool", commands: ["run", "serve", "create", "daemon"],
    help: "show this help",
  },
  { flag: "control", type: "string", metavar: "PATH", commands: ["serve"],
    help: "also serve a control socket at PATH (0600; docs/control-api.yaml): inspect, policy, " +
      "rate limits, ports, events and metrics of this guest (moat ps/inspect/policy/limit)",
  },
  { flag: "interactive", short: "i", type: "bool", commands: ["exec"],
    help: "send this process's stdin to the command (read to its end first, at most 768 KiB)",
  },
] as const satisfies readonly OptionEntry[];

export type Option = (typeof OPTIONS)[number];

/**
 * The entry whose flag (or api path) is the one given; the first, for --control has two (the
 * daemon's and serve's).
 */
export function option(which: string | { api: string }): OptionEntry {
  const o = (OPTIONS as readonly OptionEntry[])
    .find((e) => (typeof which === "string" ? e.flag === which : e.api === which.api));
  if (!o) throw new Error(`no option ${JSON.stringify(which)}`);
  return o;
}

/** The entries `command` takes, in the table's order. */
export function optionsOf(command: Command): OptionEntry[] {
  return (OPTIONS as readonly OptionEntry[]).filter((e) => e.commands.includes(command));
}

// --- the library's option types, from the table ------------------------------------------------

type ValueOf<E> = E extends { readonly choices: readonly (infer C)[] } ? C
  : E extends { readonly type: "list"; readonly item: "int" } ? number[]
  : E extends { readonly type: "list" } ? string[]
  : E extends { readonly type: "int" } ? number
  : E extends { readonly type: "bool" } ? boolean
  : string;

/**
 * The options under `prefix` ("" for the top level, "dns.", "tls."...) of the entries that are
 * one plain value (no `parse`): { queryTimeoutMs?: number; ... }.
 */
export type SchemaFields<Prefix extends string> = {
  -readonly [E in Option as E extends { readonly parse: string } ? never
    : E extends { readonly api: `${Prefix}${infer K}` }
      ? (K extends `${string}.${string}` ? never : K) : never]?: ValueOf<E>;
};

/** A compile-time check: true when A and B are the same type. */
type Same<A, B> =
  (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2) ? true : false;
type Holds<T extends true> = T;
// The option types a floor below declares (TLS, the audit log) are checked against the table
// here, where they cannot import it: an entry and its field must agree, or this does not compile.
export type SchemaAgrees = [
  Holds<Same<TlsOptions, SchemaFields<"tls.">>>,
  Holds<Same<Pick<AuditLogOptions, "maxBytes" | "intervalMs">, SchemaFields<"auditLogOptions.">>>,
];

// --- the README's table ------------------------------------------------------------------------

const CLIENT_COMMANDS = "ps, inspect, rm, create, exec, policy, limit";

/** The README's table of options (between its options:begin and options:end markers). */
export function optionsTable(): string {
  const cell = (s: string) => s.replace(/\|/g, "\\|");
  const code = (s: string | undefined) => (s === undefined ? "" : `\`${s}\``);
  const rows = (OPTIONS as readonly OptionEntry[]).map((e) => {
    const flag = `${e.short ? `-${e.short}, ` : ""}--${e.flag}${e.metavar ? ` ${e.metavar}` : ""}`;
    const value = e.choices ? e.choices.join(" | ")
      : e.type === "int" || e.item === "int" ? `${e.min}–${e.max}${e.unit ?? ""}`
        : e.type === "bool" && e.negate ? "sets it false" : "";
    const dflt = e.defaultText ?? (e.default === undefined ? "" : String(e.default));
    const commands = e.commands.map((c) => (c === "client" ? CLIENT_COMMANDS : c)).join(", ");
    const repeat = e.type === "list" ? " (repeatable)" : "";
    const cells = [cell(code(flag)) + repeat, commands, cell(value), cell(dflt), code(e.config),
      code(e.api), cell(e.help)];
    return `| ${cells.join(" | ")} |`;
  });
  const head = "| flag | commands | value | default | config file | library | what |";
  return [head, "|---|---|---|---|---|---|---|", ...rows].join("\n");
}
