// main.ts — the `moat` command line.
import { readFileSync } from "node:fs";
import { constants as osConstants } from "node:os";
import { parseFlags, flagHelp, type FlagSpec } from "./args.js";
import { NetnsSandbox, DEFAULT_MTU, type NetnsSandboxOptions } from "../sandbox/netns-sandbox.js";
import type { GuestSandbox } from "../sandbox/sandbox.js";
import { MoatError, ConfigError, CommandError } from "../errors.js";
import { NetworkPolicy } from "../policy/model.js";
import { parseRule } from "../policy/rule-parser.js";
import { loadConfigFile } from "../policy/config-file.js";
import { parsePublish, describePort } from "../sandbox/ports.js";
import type { TlsOptions } from "../tls/setup.js";
import { parseSecretFlag, type ViolationAction } from "../secrets/secrets.js";
import { serveGateway } from "../gateway/serve.js";
import { cleanupLeftovers } from "../sandbox/cleanup.js";
import type { LinkSpec } from "../links/link.js";

const VERSION = (JSON.parse(readFileSync(new URL("../../../../package.json", import.meta.url), "utf8")) as { version: string }).version;

const RUN_FLAGS: readonly FlagSpec[] = [
  { name: "net", kind: "string", metavar: "PRESET", choices: ["public-only", "allow-all", "none"], help: "policy preset: public-only (default: the internet, not the host, metadata,\nloopback, private, link-local or multicast ranges), allow-all, or none\n(no network interface at all)" },
  { name: "no-net", kind: "bool", help: "the same as --net none (the reference's spelling)" },
  { name: "net-rule", kind: "string", metavar: "RULE", repeat: true, help: "a rule, ACTION[:DIRECTION]@TARGET[:PROTO[:PORTS]], tried in order before\nthe preset's own (first match wins). ACTION allow|deny; DIRECTION egress|\ningress; TARGET any, IP, CIDR ([v6] in brackets), name, .suffix, *.suffix,\ngroup:NAME (host, metadata, loopback, private, link-local, multicast,\npublic); PROTO tcp|udp|icmp|icmpv6|any; PORTS N or N-M.\nExample: allow@group:private:tcp:5432" },
  { name: "net-default-egress", kind: "string", metavar: "ACTION", choices: ["allow", "deny"], help: "what happens to traffic no rule matched. Without --net (or a --config\npolicy) the preset's rules are left out: deny + --net-rule = an allowlist" },
  { name: "net-default-ingress", kind: "string", metavar: "ACTION", choices: ["allow", "deny"], help: "what happens to a peer on a published port that no ingress rule matched\n(default allow: publishing a port is the permission)" },
  { name: "publish", short: "p", kind: "string", metavar: "[BIND:]HOST:GUEST", repeat: true, help: "publish guest port GUEST on this machine's HOST port: connections to\nBIND:HOST (default 127.0.0.1; [::1] for IPv6) reach the sandbox, coming\nfrom the gateway's address. /udp for UDP (default tcp). HOST 0 picks a free\nport (printed). Judged by ingress rules, e.g. deny:ingress@10.0.0.0/8.\nA bind beyond loopback (0.0.0.0, a LAN address) prints a warning" },
  { name: "deny-response", kind: "string", metavar: "HOW", choices: ["drop", "reject", "http"], help: "drop (default: silence, as on a firewalled network), reject (TCP\nreset, ICMP administratively prohibited: fails fast), or http (reject,\nand a denied HTTP request on port 80 — or HTTPS, when intercepted — gets\n403 naming the host and the rule, so an agent learns why)" },
  { name: "max-connections", kind: "int", metavar: "N", min: 1, max: 16384, help: "most TCP + UDP connections at once (default 4096)" },
  { name: "config", kind: "string", metavar: "FILE", help: "JSON file with the same model as the library ({\"network\": {...}});\nflags given as well take precedence" },
  { name: "audit-log", kind: "string", metavar: "FILE", help: "append every denied flow (and DNS block/rebinding event) as a JSON line to FILE" },
  { name: "audit-log-max-bytes", kind: "int", metavar: "N", min: 4096, max: 2 ** 50, help: "stop writing the audit log at N bytes, with a last line saying so (default\n64 MiB)" },
  { name: "audit-log-interval-ms", kind: "int", metavar: "MS", min: 1, max: 86400000, help: "repeats of one event (same rule, destination, port) within MS after its\nfirst are counted and written as one summary line (default 10000)" },
  { name: "dns-block", kind: "string", metavar: "NAME", repeat: true, help: "answer NAME locally as blocked (REFUSED), never asking upstream" },
  { name: "dns-block-suffix", kind: "string", metavar: "SUFFIX", repeat: true, help: "block SUFFIX and every name under it (.ads.example or *.ads.example)" },
  { name: "dns-nameserver", kind: "string", metavar: "ADDR", repeat: true, help: "upstream for DNS to the gateway, tried in order: IP, IP:PORT, [IPv6]:PORT,\nHOST or HOST:PORT (default: the host's /etc/resolv.conf)" },
  { name: "dns-query-timeout-ms", kind: "int", metavar: "MS", min: 10, max: 60000, help: "per upstream attempt before failing over (default 5000)" },
  { name: "no-dns-rebind-protection", kind: "bool", help: "let answers carry private, loopback, link-local or metadata addresses" },
  { name: "dns-blocked-response", kind: "string", metavar: "RCODE", choices: ["refused", "nxdomain"], help: "the answer to a blocked name (default refused)" },
  { name: "mtu", kind: "int", metavar: "BYTES", min: 1280, max: 65520, help: `MTU of the sandbox's eth0 (default ${DEFAULT_MTU}; large frames are cheap)` },
  { name: "dns-forward", kind: "string", metavar: "ADDR", help: "shorthand for the upstreams: host (every nameserver of the host's\n/etc/resolv.conf, in order, with failover; the default), none (DNS\nfails), or one IP, IP:PORT or [IPv6]:PORT" },
  { name: "udp-idle-ms", kind: "int", metavar: "MS", min: 100, max: 86400000, help: "close a UDP flow after this long without traffic (default 60000)" },
  { name: "max-udp-flows", kind: "int", metavar: "N", min: 1, max: 16384, help: "most UDP flows the sandbox may hold at once (default 4096)" },
  { name: "ipv4-pool", kind: "string", metavar: "CIDR", help: "pool carved into one /30 per sandbox (default 172.30.0.0/16)" },
  { name: "exit-grace-ms", kind: "int", metavar: "MS", min: 0, max: 600000, help: "when COMMAND ends, keep serving the guest's TCP connections until they\nfinish or move no data for MS (default 5000; 0: cut at once). Connections\nstill open then are reset, so their peers never mistake them for complete" },
  { name: "tls-intercept", kind: "bool", help: "intercept TLS (DESIGN §8): connections to --tls-port ports are terminated\nwith a leaf certificate from moat's CA (which the sandbox trusts) and\nre-originated to the original address, verified; DoT is answered by moat's\nDNS; QUIC to those ports is dropped. Any other --tls-* option implies it" },
  { name: "tls-port", kind: "string", metavar: "N", repeat: true, help: "a TCP port to intercept (default 443)" },
  { name: "tls-bypass", kind: "string", metavar: "PATTERN", repeat: true, help: "pass TLS for this SNI through untouched: a name, or *.suffix (which also\nmatches the suffix itself)" },
  { name: "tls-ca-cert", kind: "string", metavar: "FILE", help: "intercept with this CA certificate (PEM; with --tls-ca-key) instead of an\nephemeral one" },
  { name: "tls-ca-key", kind: "string", metavar: "FILE", help: "the key of --tls-ca-cert (PEM, RSA or EC)" },
  { name: "tls-ca-out", kind: "string", metavar: "FILE", help: "write the CA certificate clients must trust to FILE" },
  { name: "tls-upstream-ca", kind: "string", metavar: "FILE", repeat: true, help: "also trust this CA (PEM) for upstream servers, besides the host's roots" },
  { name: "tls-no-verify-upstream", kind: "bool", help: "do not verify upstream servers' certificates" },
  { name: "tls-no-block-quic", kind: "bool", help: "let UDP to intercepted ports (QUIC) through" },
  { name: "secret", kind: "string", metavar: "NAME@HOSTS", repeat: true, help: "NAME[=ENVVAR]@HOST[,HOST...]: the command sees NAME as a placeholder;\nmoat puts the real value (its own environment variable NAME, or ENVVAR)\ninto HTTP headers and Basic auth of requests to HOST (a name or *.suffix)\nover intercepted TLS, where DNS, SNI and Host agree. The placeholder\nheaded anywhere else (another host, DNS names, request bodies; raw,\nbase64, %XX, JSON-escaped) is blocked. Implies --tls-intercept" },
  { name: "secret-violation", kind: "string", metavar: "ACTION", choices: ["block", "block-and-log", "block-and-terminate"], help: "block (default: the request never leaves; HTTP gets a 403 saying why),\nblock-and-log (and an audit event: secret, host, where; never the value),\nblock-and-terminate (and the sandbox is destroyed: moat exits 125)" },
  { name: "vm", kind: "bool", help: "run COMMAND in a QEMU microVM instead of a namespace: its own kernel and\nfilesystem (moat's initramfs: busybox), its NIC served by moat over\nvhost-user, stdin/stdout/stderr and the exit status carried over\nvirtio-serial. The guest image is built from Debian's packages on first use\n(cached in ~/.cache/moat)" },
  { name: "vm-memory", kind: "int", metavar: "MiB", min: 64, max: 65536, help: "guest RAM (default 256)" },
  { name: "vm-cpus", kind: "int", metavar: "N", min: 1, max: 64, help: "guest vCPUs (default 1)" },
  { name: "vm-link", kind: "string", metavar: "KIND", choices: ["vhost-user", "stream"], help: "how the guest's NIC reaches moat: vhost-user (default: virtqueues in\nshared memory) or stream (QEMU -netdev stream, portable)" },
  { name: "vm-accel", kind: "string", metavar: "ACCEL", choices: ["auto", "kvm", "tcg"], help: "auto (default: KVM where the guest boots on it, else TCG), kvm or tcg" },
  { name: "name", kind: "string", metavar: "NAME", help: "the sandbox's name (audit events, MAC addresses), unique among this host's\nlive sandboxes (default moat-<pool tag>-<slot>, the namespace's name)" },
  { name: "pcap", kind: "string", metavar: "FILE", help: "write every frame at the sandbox's link to FILE (pcap, nanosecond\ntimestamps, Ethernet: tcpdump -r FILE, wireshark)" },
  { name: "pcap-max-bytes", kind: "int", metavar: "N", min: 0, max: 2 ** 50, help: "stop capturing (saying so once) before FILE exceeds N bytes (default\n256 MiB; 0: no bound)" },
  { name: "stats", kind: "bool", help: "print the engine's counters to stderr when the command ends" },
  { name: "help", kind: "bool", help: "show this help" },
];

const SERVE_LINK_FLAGS: readonly FlagSpec[] = [
  { name: "vhost-user", kind: "string", metavar: "PATH", help: "listen at unix socket PATH as a vhost-user-net backend: QEMU (-chardev\nsocket,path=PATH,reconnect=1 -netdev vhost-user,chardev=…, guest memory\nshared: memory-backend-memfd,share=on) or cloud-hypervisor connects" },
  { name: "stream", kind: "string", metavar: "PATH", help: "listen at unix socket PATH for QEMU -netdev stream (addr.type=unix,\naddr.path=PATH, server=off): 4-byte length + frame" },
  { name: "tap", kind: "string", metavar: "IFNAME", help: "attach to the existing TAP device IFNAME (e.g. Firecracker's tap)" },
];
// Everything about the network is shared with run; what only a command run by moat has is not.
const SERVE_FLAGS: readonly FlagSpec[] = [...SERVE_LINK_FLAGS, ...RUN_FLAGS.filter((f) => !["no-net", "exit-grace-ms"].includes(f.name))];

const MAIN_HELP = `moat ${VERSION} — a userspace network gateway for sandboxes

Usage:
  moat run [OPTIONS] [--] COMMAND [ARGS...]   run COMMAND in a fresh network namespace (or,
                                              with --vm, a QEMU microVM) whose network is
                                              served by moat's engine
  moat serve (--vhost-user PATH | --stream PATH | --tap IFNAME) [OPTIONS]
                                              serve the NIC of a VM someone else runs (their
                                              VMM connects), until SIGTERM
  moat cleanup                                remove what moat processes that died left
                                              (namespaces, leases, directories), any pool
  moat --version | --help

Run \`moat run --help\` or \`moat serve --help\` for their options.
`;

const RUN_HELP = `Usage: moat run [OPTIONS] [--] COMMAND [ARGS...]

Creates a network namespace whose only interface, eth0, is a TAP device served by the moat
engine, and runs COMMAND inside it with your stdin/stdout/stderr. moat removes the namespace
afterwards, also when interrupted, and exits as docker does: with COMMAND's exit status (128+N
if it was killed by signal N), 127 if COMMAND was not found, 126 if it could not be executed,
125 if moat itself failed (a bad option included). With --vm, COMMAND runs in a QEMU microVM instead (its own kernel and a busybox
userland, eth0 configured by DHCP from the same gateway, IPv6 as below); the policy, DNS,
port, TLS and secret options apply to both.

Inside the sandbox:
  address      the second address of slot N's /30 of the pool — 172.30.0.(4N+2)/30 in the
               default pool, e.g. 172.30.0.2, 172.30.0.6 (N: the first free slot) — and
               fd6d:6f61:7400:N::2/64
  gateway      the first: 172.30.0.(4N+1), and fe80::1 — answers ARP, NDP, DHCP, router
               solicitations and ping (\`ip route\` in the sandbox shows it)
  ports        -p publishes a sandbox port on this machine: connections to it come into
               the sandbox from the gateway's address (the host's loopback cannot be
               shown to a guest as a source), judged by ingress rules
  TLS          with --tls-intercept (or --secret): port 443 (--tls-port) is terminated by
               moat with a certificate from its CA, which the sandbox trusts (/etc/ssl and
               SSL_CERT_FILE & co. inside it; the host's store is untouched), and
               re-originated to the original address, verified
  secrets      --secret NAME@HOST: the command sees NAME as a placeholder; moat puts the
               value into requests to HOST only, and stops the placeholder anywhere else
  DNS          /etc/resolv.conf points at the gateway. Every query on port 53, to any
               address, is intercepted: block lists, rebinding protection, and the
               answers pin names to addresses for domain rules. DoT, DoQ, mDNS, LLMNR and
               NetBIOS-NS are refused so stubs fall back to port 53.
  TCP, UDP     to any address: every connection ends in moat's engine and is re-originated
               from a socket on this machine (no kernel NAT, no forwarding)
  ping         to other hosts through unprivileged ICMP sockets: the host's
               net.ipv4.ping_group_range must include moat's group (e.g. "0 2147483647")
  policy       public-only unless told otherwise: the internet is reachable; the host
               (the gateway's address, except its DNS), cloud metadata, loopback, private,
               link-local and multicast ranges are not. Rules with domain names match only
               addresses that this sandbox's DNS answers bound to the name, within the
               answer's TTL (or while a connection they admitted lives).

Options:
${flagHelp(RUN_FLAGS)}

Requirements: Linux, root, /dev/net/tun, iproute2 (\`ip\`).

Examples:
  moat run -- ip -4 addr show eth0      # its address; \`ip route\` shows the gateway
  moat run --net allow-all -- curl http://10.0.0.5/
  moat run --net-rule allow@group:private:tcp:5432 --audit-log /tmp/denied.jsonl -- psql -h 10.1.2.3
  moat run --net-default-egress deny --net-rule allow@203.0.113.0/24:tcp:443 -- curl https://203.0.113.7/
  moat run --dns-nameserver 192.0.2.53 --dns-block-suffix ads.example -- dig example.test
  moat run --net-default-egress deny --net-rule allow@api.example.com:tcp:443 -- curl https://api.example.com/
  moat run --stats -- sh -c 'echo hello | socat - UDP:203.0.113.10:7'
  moat run --tls-intercept --tls-bypass '*.pinned.example' -- curl https://example.com/
  OPENAI_API_KEY=sk-... moat run --secret OPENAI_API_KEY@api.openai.com -- python3 agent.py
  moat run -p 8080:8000 -- python3 -m http.server 8000      # then: curl http://127.0.0.1:8080/
  moat run -p 5353:53/udp --net-default-ingress deny --net-rule allow:ingress@127.0.0.1 -- dnsmasq -d
  moat run --vm --vm-memory 512 -- sh -c 'uname -r; nslookup example.com'   # a microVM
`;

const SERVE_HELP = `Usage: moat serve (--vhost-user PATH | --stream PATH | --tap IFNAME) [OPTIONS]

Serves the network interface of a guest that moat does not run: your own QEMU, cloud-hypervisor
or Firecracker VM. moat is the guest's whole network, as in \`moat run\`: its gateway answers
ARP, NDP and DHCP (the guest configures itself by DHCP: address, router, DNS, MTU), terminates
every flow and judges it by the policy, and intercepts DNS. The VMM may disconnect and
reconnect (a guest reboot, a VMM restart); moat keeps serving until SIGTERM or SIGINT.

Link (exactly one):
${flagHelp(SERVE_LINK_FLAGS)}

The socket is created mode 0600 (whoever connects is the guest's NIC); a stale socket at PATH
is replaced, anything else there is an error. The guest's addresses are printed at start (one
/30 of --ipv4-pool; IPv6 by router adverts).
With --secret, the placeholders the guest must be given are printed as NAME=PLACEHOLDER lines on
stdout; with --tls-intercept, give the guest the CA from --tls-ca-out.

Options: those of \`moat run\` (see moat run --help), but --no-net and --exit-grace-ms.

Examples:
  moat serve --vhost-user /run/vm1.sock --net public-only &
  qemu-system-x86_64 -accel kvm -m 512 \\
    -object memory-backend-memfd,id=mem,size=512M,share=on -machine q35,memory-backend=mem \\
    -chardev socket,id=c0,path=/run/vm1.sock,reconnect=1 -netdev vhost-user,id=n0,chardev=c0 \\
    -device virtio-net-pci,netdev=n0 ...      # under TCG, QEMU 7.2 needs vectors=0 on the device
  moat serve --stream /run/vm2.sock --net-default-egress deny --net-rule allow@api.example.com:tcp:443
  moat serve --tap tap0 --audit-log /var/log/vm3-denied.jsonl
`;

function signalNumber(sig: NodeJS.Signals): number {
  return (osConstants.signals as Record<string, number>)[sig] ?? 0;
}

/**
 * Exit statuses, as docker's: 125 moat's own failure (bad flags included), 126 the command cannot
 * be executed, 127 it was not found; otherwise the command's status (128+N for signal N).
 */
const EXIT_MOAT_FAILED = 125;

function report(e: unknown): number {
  if (e instanceof MoatError) {
    process.stderr.write(`moat: ${e.message}\n`);
    if (e.hint) process.stderr.write(`moat: hint: ${e.hint}\n`);
    return e instanceof CommandError ? e.status : EXIT_MOAT_FAILED;
  }
  process.stderr.write(`moat: internal error: ${(e as Error)?.stack ?? String(e)}\n`);
  return EXIT_MOAT_FAILED;
}

/**
 * The sandbox options from the flags, over the --config file if one was given: the preset (or
 * the file's policy), then --net-rule rules in front of the preset's own, then the default.
 */
function runOptions(flags: Map<string, string | number | boolean>, lists: Map<string, string[]>): NetnsSandboxOptions {
  const file = flags.has("config") ? loadConfigFile(flags.get("config") as string).network ?? {} : {};
  let preset = flags.get("net") as string | undefined;
  if (flags.get("no-net")) {
    if (preset !== undefined && preset !== "none") throw new ConfigError(`--no-net contradicts --net ${preset}`, "give one of them");
    preset = "none";
  }
  let policy = preset === "none" ? NetworkPolicy.none() : preset === "allow-all" ? NetworkPolicy.allowAll()
    : preset === "public-only" ? NetworkPolicy.publicOnly() : file.policy ?? NetworkPolicy.publicOnly();
  const rules = (lists.get("net-rule") ?? []).map((text) => parseRule(text));
  if (rules.length && policy.offline) {
    throw new ConfigError("--net none has no interface, so --net-rule has nothing to apply to", "drop --net none, or the rules");
  }
  policy = new NetworkPolicy(policy.defaultAction, [...rules, ...policy.rules], policy.offline); // --net-rule first
  // --net-default-egress without --net builds an allow- or deny-list from the rules alone (the
  // preset's own rules would otherwise still allow the public internet); with --net it only
  // changes what happens to traffic no rule matched.
  const dflt = flags.get("net-default-egress") as "allow" | "deny" | undefined;
  if (dflt) policy = new NetworkPolicy(dflt, preset || file.policy ? policy.rules : rules, policy.offline);
  return {
    policy,
    denyResponse: (flags.get("deny-response") as "drop" | "reject" | "http" | undefined) ?? file.denyResponse,
    maxConnections: (flags.get("max-connections") as number | undefined) ?? file.maxConnections,
    auditLog: (flags.get("audit-log") as string | undefined) ?? file.auditLog,
    auditLogOptions: {
      maxBytes: (flags.get("audit-log-max-bytes") as number | undefined) ?? file.auditLogMaxBytes,
      intervalMs: (flags.get("audit-log-interval-ms") as number | undefined) ?? file.auditLogIntervalMs,
    },
    dns: {
      blockDomains: [...(file.dns?.blockDomains ?? []), ...(lists.get("dns-block") ?? [])],
      blockDomainSuffixes: [...(file.dns?.blockDomainSuffixes ?? []), ...(lists.get("dns-block-suffix") ?? [])],
      nameservers: lists.get("dns-nameserver") ?? file.dns?.nameservers,
      queryTimeoutMs: (flags.get("dns-query-timeout-ms") as number | undefined) ?? file.dns?.queryTimeoutMs,
      rebindProtection: flags.get("no-dns-rebind-protection") ? false : file.dns?.rebindProtection,
      blockedResponse: (flags.get("dns-blocked-response") as "refused" | "nxdomain" | undefined) ?? file.dns?.blockedResponse,
    },
    mtu: flags.get("mtu") as number | undefined,
    dnsForward: flags.get("dns-forward") as string | undefined,
    udpIdleMs: flags.get("udp-idle-ms") as number | undefined,
    maxUdpFlows: flags.get("max-udp-flows") as number | undefined,
    ipv4Pool: flags.get("ipv4-pool") as string | undefined,
    name: flags.get("name") as string | undefined,
    exitGraceMs: (flags.get("exit-grace-ms") as number | undefined) ?? file.exitGraceMs,
    ports: [...(file.ports ?? []), ...(lists.get("publish") ?? []).map((t) => parsePublish(t, "-p"))],
    tls: tlsOptions(flags, lists, file.tls),
    secrets: [...(file.secrets ?? []), ...(lists.get("secret") ?? []).map(parseSecretFlag)],
    onSecretViolation: (flags.get("secret-violation") as ViolationAction | undefined) ?? file.secretViolation,
    defaultIngress: (flags.get("net-default-ingress") as "allow" | "deny" | undefined) ?? file.defaultIngress,
    pcap: pcapOption(flags),
  };
}

function pcapOption(flags: Map<string, string | number | boolean>): { path: string; maxBytes?: number } | undefined {
  const maxBytes = flags.get("pcap-max-bytes") as number | undefined;
  if (!flags.has("pcap")) {
    if (maxBytes !== undefined) throw new ConfigError("--pcap-max-bytes needs --pcap", "add --pcap FILE");
    return undefined;
  }
  return { path: flags.get("pcap") as string, maxBytes };
}

/** --tls-* over the config file's tls section; undefined when nothing asks for interception. */
function tlsOptions(flags: Map<string, string | number | boolean>, lists: Map<string, string[]>, file: TlsOptions | undefined): TlsOptions | undefined {
  const ports = lists.get("tls-port")?.map((p) => {
    if (!/^\d+$/.test(p) || Number(p) < 1 || Number(p) > 65535) throw new ConfigError(`run: --tls-port "${p}" is not a port`, "e.g. --tls-port 8443");
    return Number(p);
  });
  const o: TlsOptions = {
    ...file,
    ...(flags.get("tls-intercept") ? { intercept: true } : {}),
    ...(ports ? { ports } : {}),
    ...(lists.get("tls-bypass") ? { bypass: [...(file?.bypass ?? []), ...lists.get("tls-bypass")!] } : {}),
    ...(flags.has("tls-ca-cert") ? { caCert: flags.get("tls-ca-cert") as string } : {}),
    ...(flags.has("tls-ca-key") ? { caKey: flags.get("tls-ca-key") as string } : {}),
    ...(flags.has("tls-ca-out") ? { caOut: flags.get("tls-ca-out") as string } : {}),
    ...(lists.get("tls-upstream-ca") ? { upstreamCa: [...(file?.upstreamCa ?? []), ...lists.get("tls-upstream-ca")!] } : {}),
    ...(flags.get("tls-no-verify-upstream") ? { verifyUpstream: false } : {}),
    ...(flags.get("tls-no-block-quic") ? { blockQuic: false } : {}),
  };
  return Object.keys(o).length ? o : undefined;
}

async function cmdRun(args: string[]): Promise<number> {
  const { flags, lists, rest } = parseFlags(args, RUN_FLAGS, "run");
  if (flags.get("help")) {
    process.stdout.write(RUN_HELP);
    return 0;
  }
  if (rest.length === 0) {
    throw new MoatError("ERR_BAD_ARGUMENT", "run: no command given", "put the command after the options, e.g. moat run -- ip addr");
  }
  const options = runOptions(flags, lists);
  const vmFlags = ["vm-memory", "vm-cpus", "vm-link", "vm-accel"].filter((f) => flags.has(f));
  if (vmFlags.length && !flags.get("vm")) throw new ConfigError(`run: --${vmFlags[0]} needs --vm`, "add --vm to run the command in a microVM");
  if (flags.get("vm")) return runInVm(flags, options, rest);
  const sandbox = await NetnsSandbox.create(options);
  reportChosenPorts(sandbox, options);
  let child: ReturnType<NetnsSandbox["spawn"]>;
  try {
    child = sandbox.spawn(rest);
  } catch (e) {
    await sandbox.destroy();
    throw e; // a CommandError: 127 or 126, as a shell (and docker) say
  }
  // Signals meant for the command are passed on; moat cleans up once the command has ended.
  let forwarded = 0;
  const forward = (sig: NodeJS.Signals) => {
    forwarded++;
    child.kill(sig);
    if (forwarded >= 3) child.kill("SIGKILL");
  };
  const sigs: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];
  for (const s of sigs) process.on(s, forward);
  const status = await new Promise<number>((resolve) => {
    child.once("error", (e) => {
      process.stderr.write(`moat: cannot start ${rest[0]}: ${e.message}\n`);
      resolve(EXIT_MOAT_FAILED);
    });
    child.once("exit", (code, signal) => resolve(code ?? 128 + signalNumber(signal ?? "SIGKILL")));
  });
  for (const s of sigs) process.removeListener(s, forward);
  return finishRun(sandbox, flags, options, status);
}

/** A port the kernel chose is worth saying; one the user named is not. */
function reportChosenPorts(sandbox: GuestSandbox, options: NetnsSandboxOptions): void {
  sandbox.ports.forEach((p, i) => {
    if (options.ports?.[i]?.host === 0) process.stderr.write(`moat: published ${describePort(p)} -> sandbox port ${p.guest}\n`);
  });
}

/**
 * After the command (of either kind of sandbox): its connections drained, --stats, the sandbox
 * removed; moat's exit status (125 when a secret violation terminated it).
 */
async function finishRun(sandbox: GuestSandbox, flags: Map<string, string | number | boolean>, options: NetnsSandboxOptions, status: number): Promise<number> {
  // The command is gone, but its kernel may still hold data for its connections: serve them to
  // their end (or the grace), then cut what is left with resets. A signal now ends the wait
  // (and the cleanup still runs): nobody should have to wait out a grace to get their prompt.
  const sigs: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];
  const stopWaiting = new AbortController();
  const onSignal = () => stopWaiting.abort();
  for (const s of sigs) process.on(s, onSignal);
  const cut = await sandbox.drain(undefined, stopWaiting.signal);
  if (cut > 0) process.stderr.write(`moat: ${cut} connection(s) still open when the command ended were reset after ${runGraceText(options.exitGraceMs ?? 5000)}\n`);
  if (flags.get("stats")) {
    process.stderr.write(`moat: engine counters: ${JSON.stringify(sandbox.counters(true))}\n`);
    const d = sandbox.flowDecisions();
    process.stderr.write(`moat: flows allowed ${d.allowed}, denied ${d.denied}\n`);
    if (options.tls) process.stderr.write(`moat: tls ${JSON.stringify(sandbox.tlsStats())}\n`);
  }
  await sandbox.destroy({ graceMs: 0 });
  for (const s of sigs) process.removeListener(s, onSignal);
  if (sandbox.terminatedBy) {
    process.stderr.write(`moat: sandbox terminated: ${sandbox.terminatedBy} (--secret-violation block-and-terminate)\n`);
    return EXIT_MOAT_FAILED;
  }
  return status;
}

async function cmdServe(args: string[]): Promise<number> {
  const { flags, lists, rest } = parseFlags(args, SERVE_FLAGS, "serve");
  if (flags.get("help")) {
    process.stdout.write(SERVE_HELP);
    return 0;
  }
  if (rest.length) throw new ConfigError(`serve: unexpected argument "${rest[0]}"`, "serve runs no command; see moat serve --help");
  const links = SERVE_LINK_FLAGS.filter((f) => flags.has(f.name));
  if (links.length !== 1) {
    throw new ConfigError(links.length ? `serve: --${links[0]!.name} and --${links[1]!.name} both given` : "serve: no link given",
      "give exactly one of --vhost-user PATH, --stream PATH, --tap IFNAME");
  }
  const value = flags.get(links[0]!.name) as string;
  const link: LinkSpec = links[0]!.name === "tap" ? { kind: "tap", netnsPath: "", ifname: value }
    : links[0]!.name === "stream" ? { kind: "stream", path: value } : { kind: "vhost-user", path: value };
  const served = await serveGateway(runOptions(flags, lists), link);
  const a = served.gateway.addresses;
  process.stderr.write(`moat: serving ${link.kind} ${value}: guest ${a.guestIp4}/${a.prefixLen4} (DHCP) and ${a.guestIp6}, gateway ${a.gatewayIp4}, MTU ${served.gateway.mtu}; SIGTERM stops\n`);
  for (const [k, v] of Object.entries(served.gateway.placeholders)) process.stdout.write(`${k}=${v}\n`);
  const sigs: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];
  let onSignal: (s: NodeJS.Signals) => void = () => {};
  const signal = new Promise<NodeJS.Signals>((resolve) => { onSignal = resolve; });
  for (const s of sigs) process.on(s, onSignal); // kept until the end: a second signal during the stop is not fatal
  const why = await Promise.race([signal, served.terminated.then((reason) => ({ reason }))]);
  if (flags.get("stats")) process.stderr.write(`moat: engine counters: ${JSON.stringify(served.gateway.counters(true))}\n`);
  if (typeof why === "object") {
    await served.stop({ graceMs: 0 });
    process.stderr.write(`moat: guest cut off: ${why.reason} (--secret-violation block-and-terminate)\n`);
    return EXIT_MOAT_FAILED;
  }
  process.stderr.write(`moat: ${why}: stopping\n`);
  await served.stop();
  return 0;
}

/** `moat run --vm`: the command in a QEMU microVM, with this process's stdio; its exit status. */
async function runInVm(flags: Map<string, string | number | boolean>, options: NetnsSandboxOptions, command: string[]): Promise<number> {
  const { VmSandbox } = await import("../vm/vm-sandbox.js");
  const sandbox = await VmSandbox.create({
    ...options,
    vm: {
      memoryMiB: flags.get("vm-memory") as number | undefined,
      cpus: flags.get("vm-cpus") as number | undefined,
      link: flags.get("vm-link") as "vhost-user" | "stream" | undefined,
      accel: flags.get("vm-accel") as "auto" | "kvm" | "tcg" | undefined,
    },
  });
  process.stderr.write(`moat: VM up in ${(sandbox.bootMs / 1000).toFixed(2)} s (${sandbox.accel}${sandbox.accel === "tcg" ? ": software emulation, KVM unavailable or unable to boot the guest here" : ""})\n`);
  reportChosenPorts(sandbox, options);
  const sigs: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];
  const forward = (sig: NodeJS.Signals) => sandbox.signal(signalNumber(sig));
  for (const s of sigs) process.on(s, forward);
  let status: number;
  try {
    status = await sandbox.run(command, { stdin: process.stdin.isTTY ? null : process.stdin, stdout: process.stdout, stderr: process.stderr });
  } catch (e) {
    if (!sandbox.terminatedBy) throw e;
    status = EXIT_MOAT_FAILED; // the VM was killed for a secret violation: said by finishRun
  } finally {
    for (const s of sigs) process.removeListener(s, forward);
    process.stdin.pause();
  }
  return finishRun(sandbox, flags, options, status);
}

function runGraceText(grace: number): string {
  return `${grace} ms without progress (--exit-grace-ms)`;
}

function cmdCleanup(args: string[]): number {
  if (args.length) throw new ConfigError(`cleanup: unexpected argument "${args[0]}"`, "moat cleanup takes no arguments");
  const removed = cleanupLeftovers();
  for (const line of removed) process.stdout.write(`removed ${line}\n`);
  process.stdout.write(`${removed.length} leftover(s) removed\n`);
  return 0;
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...args] = argv;
  try {
    switch (cmd) {
      case undefined:
      case "-h":
      case "--help":
      case "help":
        if (cmd === "help" && args[0] === "run") { process.stdout.write(RUN_HELP); return 0; }
        if (cmd === "help" && args[0] === "serve") { process.stdout.write(SERVE_HELP); return 0; }
        if (cmd === undefined) {
          process.stderr.write(MAIN_HELP);
          return EXIT_MOAT_FAILED;
        }
        process.stdout.write(MAIN_HELP);
        return 0;
      case "-V":
      case "--version":
        process.stdout.write(`moat ${VERSION}\n`);
        return 0;
      case "run":
        return await cmdRun(args);
      case "serve":
        return await cmdServe(args);
      case "cleanup":
        return cmdCleanup(args);
      default:
        process.stderr.write(`moat: unknown command "${cmd}"\nmoat: hint: the commands are run, serve and cleanup; see moat --help\n`);
        return EXIT_MOAT_FAILED;
    }
  } catch (e) {
    return report(e);
  }
}
