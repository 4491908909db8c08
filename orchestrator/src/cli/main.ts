// main.ts — the `moat` command line.
import { readFileSync } from "node:fs";
import { constants as osConstants } from "node:os";
import { parseFlags, flagHelp, type FlagSpec } from "./args.js";
import { option, optionsOf, OPTIONS, type OptionEntry } from "../gateway/schema.js";
import type { GatewayOptions } from "../gateway/options.js";
import type { VmOptions } from "../vm/vm-sandbox.js";
import { NetnsSandbox, type NetnsSandboxOptions } from "../sandbox/netns-sandbox.js";
import type { GuestSandbox } from "../sandbox/sandbox.js";
import { MoatError, ConfigError, CommandError } from "../errors.js";
import { NetworkPolicy } from "../model/policy.js";
import { parseRule } from "../policy/rule-parser.js";
import { loadConfigFile, type MoatConfig } from "./config-file.js";
import { parsePublish, describePort } from "../gateway/ports.js";
import { parseSecretFlag } from "../secrets/secrets.js";
import { serveGateway } from "../sandbox/serve.js";
import { cleanupLeftovers } from "../sandbox/cleanup.js";
import { hostRoot, reexecRootless } from "../sandbox/rootless.js";
import type { LinkSpec } from "../links/link.js";
import { setEngineThreads } from "../engine/engine-host.js";
import { parseListenAddress, serveMetrics, renderMetrics, type GatewaySample } from "../gateway/metrics.js";
import { ControlServer, defaultControlPath, type ControlEntry, type ControlHooks } from "../control/server.js";
import { expectOk, stream as streamCall } from "../control/client.js";
import type { GatewayEvent } from "../gateway/events.js";
import { LIMIT_FLAGS, LIMIT_KEYS, validateLimit, type RateLimits } from "../gateway/limits.js";

const VERSION = (JSON.parse(readFileSync(new URL("../../../../package.json", import.meta.url), "utf8")) as { version: string }).version;

// Every flag is an entry of the options schema (gateway/schema.ts): its type, range and help.
const RUN_FLAGS = optionsOf("run");
const CONTROL_FLAG = option("control");
/** What `moat policy` and PUT /v1/sandboxes/NAME/policy take: the policy flags of run. */
const POLICY_FLAGS = optionsOf("policy");
/** What `moat limit` takes: the --limit-* flags of run. */
const LIMIT_FLAGS_OF_RUN = optionsOf("limit");
const SERVE_LINK_FLAGS = ["vhost-user", "stream", "attach", "tap"].map(option);
// Everything about the network is shared with run; what only a command run by moat has is not.
const SERVE_FLAGS = optionsOf("serve");

const MAIN_HELP = `moat ${VERSION} — a userspace network gateway for sandboxes

Usage:
  moat run [OPTIONS] [--] COMMAND [ARGS...]   run COMMAND in a fresh network namespace (or,
                                              with --vm, a QEMU microVM) whose network is
                                              served by moat's engine
  moat serve (--vhost-user PATH | --stream PATH | --attach IFNAME | --tap IFNAME) [OPTIONS]
                                              serve the NIC of a VM someone else runs (their
                                              VMM connects, or holds the TAP), until SIGTERM
  moat daemon [--control PATH] [--metrics [ADDR:]PORT] [--engine-threads N]
                                              own many sandboxes, driven over a control
                                              socket (HTTP/1.1 + JSON, docs/control-api.yaml),
                                              until SIGTERM (which removes them all)
  moat create [--control PATH] [RUN OPTIONS]  a sandbox in the daemon (--name NAME; --vm)
  moat ps | inspect NAME | rm NAME            list, describe, remove the daemon's sandboxes
  moat exec [-i] NAME -- COMMAND [ARGS...]    run COMMAND in a sandbox; its output and status
  moat policy NAME [--net ...] [--net-rule RULE ...] [--net-default-egress ACTION]
                                              replace a sandbox's policy (new connections)
  moat limit NAME [--limit-egress RATE[:BURST]|none] [--limit-ingress ...]
       [--limit-conn-rate N[:BURST]|none] [--limit-dns-rate ...]
                                              change a sandbox's rate limits (open flows too);
                                              without options, show them
  moat publish NAME [BIND:]HOST:GUEST[/udp] | moat unpublish NAME HOSTPORT[/udp]
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
125 if moat itself failed (a bad option included). With --vm, COMMAND runs in a QEMU microVM
instead (its own kernel and a busybox userland, eth0 configured by DHCP from the same gateway,
IPv6 as below); the policy, DNS, port, TLS and secret options apply to both.

Inside the sandbox:
  who          (a namespace; a VM's command is root of its own kernel) root, with no
               privilege on this host: uid 0 inside is an unprivileged uid outside (--user;
               default: the user who ran sudo, else nobody), with Docker's default
               capabilities over the sandbox's own namespaces only (none to
               reconfigure eth0 or undo mounts), no_new_privs, a session of its own
  processes    its own PID namespace and /proc: only the sandbox's processes (PID 1 is
               moat's holder); moat's and the host's cannot be seen, signalled or joined
  files        the host's filesystem read-only, as that uid; /tmp, /run and /dev/shm empty
               and private to the sandbox (the host's sockets there out of reach); a minimal
               /dev; /etc/resolv.conf and /etc/ssl moat's. The command starts in the current
               directory where that uid can reach it, else in /
  environment  PATH, HOME, TERM and LANG, what -e and --env-file give, and moat's own
               variables (placeholders, SSL_CERT_FILE & co.); nothing else of moat's
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
               SSL_CERT_FILE & co. inside it: the distribution's CA set and moat's CA, not
               CAs added on this host unless --tls-trust-host-cas; the host's store is
               untouched), and re-originated to the original address, verified
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

Requirements: Linux 5.12 or later with user namespaces, /dev/net/tun, iproute2 (\`ip\`), and
root; or, run by an ordinary user (moat then runs itself in a user namespace of yours, and the
sandbox's root is you): unprivileged user namespaces allowed and a /dev/net/tun you can open
(Debian's default mode 0666). moat says what is missing. --vm needs neither root nor these.

Examples:
  moat run -- ip -4 addr show eth0      # its address; \`ip route\` shows the gateway
  moat run --net allow-all -- curl http://10.0.0.5/
  moat run --net-rule allow@group:private:tcp:5432 --audit-log /tmp/denied.jsonl -- psql -h 10.1.2.3
  moat run --net-default-egress deny --net-rule allow@203.0.113.0/24:tcp:443 \\
    -- curl https://203.0.113.7/
  moat run --dns-nameserver 192.0.2.53 --dns-block-suffix ads.example -- dig example.test
  moat run --net-default-egress deny --net-rule allow@api.example.com:tcp:443 \\
    -- curl https://api.example.com/
  moat run --stats -- sh -c 'echo hello | socat - UDP:203.0.113.10:7'
  moat run --tls-intercept --tls-bypass '*.pinned.example' -- curl https://example.com/
  OPENAI_API_KEY=sk-... moat run --secret OPENAI_API_KEY@api.openai.com -- python3 agent.py
  sudo moat run -e LOG_LEVEL=debug --env-file agent.env -- python3 agent.py  # runs as you
  moat run -p 8080:8000 -- python3 -m http.server 8000      # then: curl http://127.0.0.1:8080/
  moat run -p 5353:53/udp --net-default-ingress deny --net-rule allow:ingress@127.0.0.1 \\
    -- dnsmasq -d
  moat run --vm --vm-memory 512 -- sh -c 'uname -r; nslookup example.com'   # a microVM
`;

const SERVE_HELP = `Usage: moat serve (--vhost-user PATH | --stream PATH | --attach IFNAME | --tap IFNAME) [OPTIONS]

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

--attach IFNAME: IFNAME is an interface of moat's network namespace: a TAP device (a VMM holds
its fd; what the guest sends arrives on IFNAME, what moat sends on it goes to the guest) or a
veth end. Only point-to-point links: anything else (a bridge, a NIC) is refused. Leave IFNAME
without addresses: moat is the guest's gateway, not the host. Frames are up to IFNAME's MTU,
which is also the gateway's (given to the guest by DHCP) unless --mtu asks for less; a TAP's
is 1500 unless raised (ip link set IFNAME mtu 9000, before moat starts). The guest may use
checksum and TCP segmentation offloads (moat completes and cuts them). When the VMM goes
away moat keeps serving, and if IFNAME is deleted and created again (a TAP that was not
persistent, the VMM restarted), the new one is served.

With --secret, the placeholders the guest must be given are printed as NAME=PLACEHOLDER lines on
stdout; with --tls-intercept, give the guest the CA from --tls-ca-out.

Options: those of \`moat run\` (see moat run --help), but --no-net and --exit-grace-ms.

Examples:
  moat serve --vhost-user /run/vm1.sock --net public-only &
  qemu-system-x86_64 -accel kvm -m 512 \\
    -object memory-backend-memfd,id=mem,size=512M,share=on -machine q35,memory-backend=mem \\
    -chardev socket,id=c0,path=/run/vm1.sock,reconnect=1 -netdev vhost-user,id=n0,chardev=c0 \\
    -device virtio-net-pci,netdev=n0 ...      # under TCG, QEMU 7.2 needs vectors=0 on the device
  moat serve --stream /run/vm2.sock --net-default-egress deny \\
    --net-rule allow@api.example.com:tcp:443
  ip tuntap add dev tap0 mode tap      # Firecracker: "network-interfaces": [{"iface_id": "eth0",
  moat serve --attach tap0 &           #   "host_dev_name": "tap0"}]; the guest runs a DHCP client
  moat serve --tap tap1 --audit-log /var/log/vm3-denied.jsonl   # moat holds tap1
`;

const DAEMON_HELP = `Usage: moat daemon [OPTIONS]

Owns many sandboxes, created and driven over a unix socket (HTTP/1.1 + JSON;
docs/control-api.yaml) by moat create/ps/inspect/exec/policy/limit/publish/rm or any HTTP client.
Sandboxes outlive the clients that made them; SIGTERM or SIGINT removes them all and exits.

Options:
${flagHelp(optionsOf("daemon"))}
`;

const CREATE_HELP = `Usage: moat create [--control PATH] [--name NAME] [OPTIONS of moat run]

Creates a sandbox in the daemon and prints its description (moat inspect). Commands run in it
with moat exec.
`;

const CONTROL_OPTION = `Options:\n${flagHelp([CONTROL_FLAG])}\n`;

/** The daemon's client commands and moat cleanup: what each does, from --help. */
const CLIENT_HELP = {
  ps: `Usage: moat ps [--control PATH]\n\nLists the daemon's sandboxes: name, kind, guest address, published ports, creation time.\n\n${CONTROL_OPTION}`,
  inspect: `Usage: moat inspect [--control PATH] NAME\n\nDescribes a sandbox as JSON: addresses, policy, limits, ports, flows, counters, DNS and TLS\nfigures, events.\n\n${CONTROL_OPTION}`,
  exec: `Usage: moat exec [--control PATH] [-i] NAME -- COMMAND [ARGS...]\n\nRuns COMMAND in sandbox NAME (namespace or VM), its output streamed back; moat exec's exit\nstatus is the command's.\n\nOptions:\n${flagHelp([CONTROL_FLAG, ...optionsOf("exec")])}\n`,
  policy: `Usage: moat policy [--control PATH] NAME [POLICY FLAGS of moat run]\n\nPrints sandbox NAME's policy, or with flags replaces it: new flows see it at once, live ones\nstay. e.g. moat policy web --net-default-egress deny --net-rule allow@api.example.com:tcp:443\n\nOptions:\n${flagHelp([CONTROL_FLAG, ...POLICY_FLAGS])}\n`,
  limit: `Usage: moat limit [--control PATH] NAME [--limit-* FLAGS]\n\nPrints sandbox NAME's rate limits, or changes those given (none removes one); the flows\nalready open are held to them too.\n\nOptions:\n${flagHelp([CONTROL_FLAG, ...LIMIT_FLAGS_OF_RUN])}\n`,
  publish: `Usage: moat publish [--control PATH] NAME [BIND:]HOST:GUEST[/udp]\n\nPublishes a port of sandbox NAME on the host (HOST 0: any free port, printed).\n\n${CONTROL_OPTION}`,
  unpublish: `Usage: moat unpublish [--control PATH] NAME HOSTPORT[/tcp|/udp]\n\nStops publishing a host port of sandbox NAME.\n\n${CONTROL_OPTION}`,
  rm: `Usage: moat rm [--control PATH] NAME...\n\nRemoves sandboxes: their commands, namespaces or VMs, ports and leases.\n\n${CONTROL_OPTION}`,
  cleanup: `Usage: moat cleanup\n\nRemoves what a moat that ended without cleaning up left behind (namespaces, leases,\ntemporary directories) and whose owner is gone; a running moat's are left alone.\n`,
};
type ClientCommand = keyof typeof CLIENT_HELP;

/** Asked for help: --help (or -h) among a command's own arguments, before any "--". */
function wantsHelp(args: string[]): boolean {
  for (const a of args) {
    if (a === "--") return false;
    if (a === "--help" || a === "-h") return true;
  }
  return false;
}

/** The help of `moat`, or of one of its commands (what --help prints). */
export function helpText(command?: "run" | "serve" | "daemon" | "create" | ClientCommand): string {
  if (command !== undefined && command in CLIENT_HELP) return CLIENT_HELP[command as ClientCommand];
  return command === undefined ? MAIN_HELP : { run: RUN_HELP, serve: SERVE_HELP, daemon: DAEMON_HELP, create: CREATE_HELP }[command as "run"];
}

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

/** The --config file, checked (nothing without the flag). */
function configFile(flags: Map<string, string | number | boolean>): MoatConfig {
  return flags.has("config") ? loadConfigFile(flags.get("config") as string) : {};
}

/**
 * The sandbox options from the flags, over the --config file if one was given: the preset (or
 * the file's policy), then --net-rule rules in front of the preset's own, then the default.
 */
function runOptions(flags: Map<string, string | number | boolean>, lists: Map<string, string[]>, config: MoatConfig): NetnsSandboxOptions {
  const file = config.network ?? {};
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
  const { vm: _vm, ...plain } = plainOptions(flags, lists, config);
  return {
    ...plain,
    policy,
    limits: { ...file.limits, ...limitFlags(flags) },
    ports: [...(file.ports ?? []), ...(lists.get("publish") ?? []).map((t) => parsePublish(t, "-p"))],
    secrets: [...(file.secrets ?? []), ...(lists.get("secret") ?? []).map(parseSecretFlag)],
    user: (flags.get("user") as string | undefined) ?? config.sandbox?.user,
    pcap: pcapOption(flags),
  };
}

/**
 * The options of one plain value (schema entries with an api path and no grammar of their own):
 * each flag given over its config file value, a list's flags after the file's where the entry
 * says append; laid out at the entries' api paths ({ dns: { queryTimeoutMs }, vm: { cpus } ...}).
 */
function plainOptions(flags: Map<string, string | number | boolean>, lists: Map<string, string[]>, config: MoatConfig): GatewayOptions & { vm?: VmOptions } {
  const out: Record<string, unknown> = {};
  const at = (o: object, path: string): unknown => path.split(".").reduce<unknown>((v, k) => (v as Record<string, unknown> | undefined)?.[k], o);
  for (const e of OPTIONS as readonly OptionEntry[]) {
    if (e.api === undefined || e.parse !== undefined) continue;
    const file = e.config === undefined ? undefined : at(config, e.config);
    const given = e.type === "list" ? lists.get(e.flag)?.map((v) => (e.item === "int" ? Number(v) : v))
      : e.type === "bool" ? (flags.get(e.flag) ? !e.negate : undefined) : flags.get(e.flag);
    const value = e.append && (file !== undefined || given !== undefined) ? [...(file as unknown[] ?? []), ...(given as unknown[] ?? [])] : given ?? file;
    if (value === undefined) continue;
    const keys = e.api.split(".");
    const parent = keys.slice(0, -1).reduce((o, k) => (o[k] ??= {}) as Record<string, unknown>, out);
    parent[keys.at(-1)!] = value;
  }
  return out as GatewayOptions & { vm?: VmOptions };
}

/** The --limit-* flags given, checked (an error names the flag, the value and the forms it takes); "none" is null. */
function limitFlags(flags: Map<string, string | number | boolean>): RateLimits {
  const out: Record<string, unknown> = {};
  for (const k of LIMIT_KEYS) {
    const text = flags.get(LIMIT_FLAGS[k].slice(2));
    if (typeof text === "string") out[k] = validateLimit(k, text, LIMIT_FLAGS[k]);
  }
  return out as RateLimits;
}

/**
 * The variables asked for COMMAND (config "sandbox.env", then --env-file FILE..., then -e), as
 * docker reads them: NAME=VALUE literally; a bare NAME takes moat's own value, if it has one.
 */
function commandEnv(lists: Map<string, string[]>, fromConfig: Record<string, string> | undefined): Record<string, string> {
  const env: Record<string, string> = { ...fromConfig };
  const add = (text: string, where: string) => {
    const eq = text.indexOf("=");
    const name = eq < 0 ? text : text.slice(0, eq);
    if (!/^[^\s=]+$/.test(name)) throw new ConfigError(`${where}: "${text}" is not NAME or NAME=VALUE`, "e.g. -e LOG_LEVEL=debug, or -e HOME to pass moat's own");
    if (eq >= 0) env[name] = text.slice(eq + 1);
    else if (process.env[name] !== undefined) env[name] = process.env[name]!;
  };
  for (const file of lists.get("env-file") ?? []) {
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch (e) {
      throw new ConfigError(`--env-file ${file}: cannot read it: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, "give the path of a file of NAME=VALUE lines");
    }
    text.split(/\r?\n/).forEach((line, i) => {
      const l = line.trimStart();
      if (l !== "" && !l.startsWith("#")) add(l, `--env-file ${file}:${i + 1}`);
    });
  }
  for (const e of lists.get("env") ?? []) add(e, "-e");
  return env;
}

function pcapOption(flags: Map<string, string | number | boolean>): { path: string; maxBytes?: number } | undefined {
  const maxBytes = flags.get("pcap-max-bytes") as number | undefined;
  if (!flags.has("pcap")) {
    if (maxBytes !== undefined) throw new ConfigError("--pcap-max-bytes needs --pcap", "add --pcap FILE");
    return undefined;
  }
  return { path: flags.get("pcap") as string, maxBytes };
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
  // An ordinary user: moat again, in a user namespace of the user's own (rootless.ts). A VM
  // needs none: QEMU and vhost-user run as the user.
  if (!flags.get("vm") && process.getuid?.() !== 0) return reexecRootless(["run", ...args]);
  const config = configFile(flags);
  const options = runOptions(flags, lists, config);
  const env = commandEnv(lists, config.sandbox?.env);
  checkObserverFlags(flags);
  const vmFlags = ["vm-memory", "vm-cpus", "vm-link", "vm-accel"].filter((f) => flags.has(f));
  if (vmFlags.length && !flags.get("vm")) throw new ConfigError(`run: --${vmFlags[0]} needs --vm`, "add --vm to run the command in a microVM");
  if (flags.has("user") && flags.get("vm")) throw new ConfigError("run: --user is for namespace sandboxes", "a VM's command runs as root of its own kernel: drop --user");
  if (flags.get("vm")) return runInVm(flags, options, rest, env);
  const sandbox = await NetnsSandbox.create(options);
  reportChosenPorts(sandbox, options);
  const stopObservers = await observe(flags, sandbox);
  let child: ReturnType<NetnsSandbox["spawn"]>;
  try {
    child = sandbox.spawn(rest, "inherit", env);
  } catch (e) {
    await stopObservers();
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
  return finishRun(sandbox, flags, options, status, stopObservers);
}

/**
 * --metrics and --stats-interval for whatever serves guests (`sample` gives each one's figures);
 * the returned function stops both. The address is checked by checkObserverFlags, before.
 */
async function startObservers(flags: Map<string, string | number | boolean>, sample: () => Promise<GatewaySample[]>): Promise<() => Promise<void>> {
  const stops: (() => Promise<void>)[] = [];
  if (flags.has("metrics")) {
    const { host, port } = parseListenAddress(flags.get("metrics") as string, "--metrics");
    const m = await serveMetrics(host, port, async () => renderMetrics(await sample()));
    process.stderr.write(`moat: metrics on http://${host.includes(":") ? `[${host}]` : host}:${m.port}/metrics\n`);
    stops.push(() => m.close());
  }
  const interval = flags.get("stats-interval") as number | undefined;
  if (interval) {
    const timer = setInterval(() => {
      void sample().then((all) => {
        for (const s of all) process.stderr.write(statsLine(s) + "\n");
      }, () => {});
    }, interval * 1000);
    timer.unref();
    stops.push(async () => clearInterval(timer));
  }
  return async () => { for (const s of stops) await s(); };
}

/** One --stats-interval line: the figures of --metrics as JSON (engine counters that are not zero). */
function statsLine(s: GatewaySample): string {
  const counters = Object.fromEntries(Object.entries(s.counters).filter(([, v]) => v !== 0));
  const { latencyBuckets: _b, ...dns } = s.dns;
  return JSON.stringify({ v: 1, time: new Date().toISOString(), sandbox: s.sandbox, kind: "stats", counters, flows: s.flows, dns, tls: s.tls, events: s.events });
}

/** --metrics's address is checked before anything starts. */
function checkObserverFlags(flags: Map<string, string | number | boolean>): void {
  if (flags.has("metrics")) parseListenAddress(flags.get("metrics") as string, "--metrics");
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
async function finishRun(sandbox: GuestSandbox, flags: Map<string, string | number | boolean>, options: NetnsSandboxOptions, status: number, stopObservers: () => Promise<void>): Promise<number> {
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
  if (flags.has("stats-interval")) process.stderr.write(statsLine(await sandbox.sample()) + "\n");
  await stopObservers();
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
  const links = SERVE_LINK_FLAGS.filter((f) => flags.has(f.flag));
  if (links.length !== 1) {
    throw new ConfigError(links.length ? `serve: --${links[0]!.flag} and --${links[1]!.flag} both given` : "serve: no link given",
      "give exactly one of --vhost-user PATH, --stream PATH, --attach IFNAME, --tap IFNAME");
  }
  const value = flags.get(links[0]!.flag) as string;
  const kind = links[0]!.flag;
  const link: LinkSpec = kind === "tap" ? { kind: "tap", netnsPath: "", ifname: value } : kind === "attach" ? { kind: "attach", ifname: value }
    : kind === "stream" ? { kind: "stream", path: value } : { kind: "vhost-user", path: value };
  const serveOptions = runOptions(flags, lists, configFile(flags));
  checkObserverFlags(flags);
  const served = await serveGateway(serveOptions, link);
  let stopObservers: () => Promise<void>;
  try {
    stopObservers = await startObservers(flags, async () => [await served.gateway.sample()]);
  } catch (e) {
    await served.stop({ graceMs: 0 });
    throw e;
  }
  const a = served.gateway.addresses;
  process.stderr.write(`moat: serving ${link.kind} ${value}: guest ${a.guestIp4}/${a.prefixLen4} (DHCP) and ${a.guestIp6}, gateway ${a.gatewayIp4}, MTU ${served.gateway.mtu}; SIGTERM stops\n`);
  for (const [k, v] of Object.entries(served.gateway.placeholders)) process.stdout.write(`${k}=${v}\n`);
  let control: ControlServer | undefined;
  if (flags.has("control")) {
    try {
      control = await ControlServer.listen(flags.get("control") as string, {
        policyFromArgs,
        createRefused: "moat serve serves one guest; moat daemon creates sandboxes",
      });
      control.add(served.gateway.name, { kind: "served", created: new Date().toISOString(), target: served.gateway });
      process.stderr.write(`moat: control socket ${control.path}\n`);
    } catch (e) {
      await stopObservers();
      await served.stop({ graceMs: 0 });
      throw e;
    }
  }
  const sigs: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];
  let onSignal: (s: NodeJS.Signals) => void = () => {};
  const signal = new Promise<NodeJS.Signals>((resolve) => { onSignal = resolve; });
  for (const s of sigs) process.on(s, onSignal); // kept until the end: a second signal during the stop is not fatal
  const why = await Promise.race([signal, served.terminated.then((reason) => ({ reason }))]);
  if (flags.get("stats")) process.stderr.write(`moat: engine counters: ${JSON.stringify(served.gateway.counters(true))}\n`);
  await stopObservers();
  await control?.close();
  if (typeof why === "object") {
    await served.stop({ graceMs: 0 });
    process.stderr.write(`moat: guest cut off: ${why.reason} (--secret-violation block-and-terminate)\n`);
    return EXIT_MOAT_FAILED;
  }
  process.stderr.write(`moat: ${why}: stopping\n`);
  await served.stop();
  return 0;
}

/** --metrics and --stats-interval for a sandbox just made (destroyed again if they cannot start). */
async function observe(flags: Map<string, string | number | boolean>, sandbox: GuestSandbox): Promise<() => Promise<void>> {
  try {
    return await startObservers(flags, async () => [await sandbox.sample()]);
  } catch (e) {
    await sandbox.destroy({ graceMs: 0 });
    throw e;
  }
}

/** `moat run --vm`: the command in a QEMU microVM, with this process's stdio; its exit status. */
async function runInVm(flags: Map<string, string | number | boolean>, options: NetnsSandboxOptions, command: string[], env: Record<string, string>): Promise<number> {
  const { VmSandbox } = await import("../vm/vm-sandbox.js");
  const sandbox = await VmSandbox.create({
    ...options,
    vm: plainOptions(flags, new Map(), {}).vm,
  });
  process.stderr.write(`moat: VM up in ${(sandbox.bootMs / 1000).toFixed(2)} s (${sandbox.accel}${sandbox.accel === "tcg" ? ": software emulation, KVM unavailable or unable to boot the guest here" : ""})\n`);
  reportChosenPorts(sandbox, options);
  const stopObservers = await observe(flags, sandbox);
  const sigs: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];
  const forward = (sig: NodeJS.Signals) => sandbox.signal(signalNumber(sig));
  for (const s of sigs) process.on(s, forward);
  let status: number;
  try {
    status = await sandbox.run(command, { env, stdin: process.stdin.isTTY ? null : process.stdin, stdout: process.stdout, stderr: process.stderr });
  } catch (e) {
    if (!sandbox.terminatedBy) throw e;
    status = EXIT_MOAT_FAILED; // the VM was killed for a secret violation: said by finishRun
  } finally {
    for (const s of sigs) process.removeListener(s, forward);
    process.stdin.pause();
  }
  return finishRun(sandbox, flags, options, status, stopObservers);
}

function runGraceText(grace: number): string {
  return `${grace} ms without progress (--exit-grace-ms)`;
}

/** The policy and deny response of run's policy flags, alone (moat policy, the control socket's PUT policy). */
function policyFromArgs(args: string[]): { policy: NetworkPolicy; denyResponse?: "drop" | "reject" | "http" } {
  const specs = POLICY_FLAGS;
  const { flags, lists, rest } = parseFlags(args, specs, "policy");
  if (rest.length) throw new ConfigError(`policy: unexpected argument "${rest[0]}"`, "give only --net, --net-rule, --net-default-egress, --deny-response or --config");
  if (flags.size === 0 && lists.size === 0) throw new ConfigError("policy: no policy given", "e.g. --net-default-egress deny --net-rule allow@203.0.113.0/24:tcp:443");
  const o = runOptions(flags, lists, configFile(flags));
  return { policy: o.policy as NetworkPolicy, denyResponse: o.denyResponse };
}

/** `moat daemon`: sandboxes created, driven and removed over the control socket, until SIGTERM. */
async function cmdDaemon(args: string[]): Promise<number> {
  const specs = optionsOf("daemon");
  const { flags, rest } = parseFlags(args, specs, "daemon");
  if (flags.has("engine-threads")) setEngineThreads(flags.get("engine-threads") as number);
  if (flags.get("help")) {
    process.stdout.write(DAEMON_HELP);
    return 0;
  }
  if (rest.length) throw new ConfigError(`daemon: unexpected argument "${rest[0]}"`, "see moat daemon --help");
  checkObserverFlags(flags);
  const path = (flags.get("control") as string | undefined) ?? defaultControlPath();
  const hooks: ControlHooks = {
    policyFromArgs,
    create: async ({ name, args: createArgs, vm }) => {
      const specs = optionsOf("create").filter((f) => f.flag !== "help");
      const parsed = parseFlags(createArgs, specs, "create");
      if (parsed.rest.length) throw new ConfigError(`create: unexpected argument "${parsed.rest[0]}"`, "a sandbox of the daemon runs no command at creation: moat exec runs them");
      if (name !== undefined) parsed.flags.set("name", name);
      // What the sandbox emits before the control socket subscribes (sandbox-created, ports
      // published at creation) is held for its event streams.
      let early: GatewayEvent[] | undefined = [];
      const takeEarlyEvents = () => { const e = early ?? []; early = undefined; return e; };
      const options = { ...runOptions(parsed.flags, parsed.lists, configFile(parsed.flags)), onEvent: (e: GatewayEvent) => { early?.push(e); } };
      const created = new Date().toISOString();
      if (vm || parsed.flags.get("vm")) {
        const { VmSandbox } = await import("../vm/vm-sandbox.js");
        const sandbox = await VmSandbox.create({ ...options, vm: { ...plainOptions(parsed.flags, new Map(), {}).vm, onProgress: () => {} } });
        return { kind: "vm", created, target: sandbox, args: createArgs, takeEarlyEvents, run: (c, o) => sandbox.run(c, o), destroy: () => sandbox.destroy() } satisfies ControlEntry;
      }
      const sandbox = await NetnsSandbox.create(options);
      return { kind: "namespace", created, target: sandbox, args: createArgs, takeEarlyEvents, extra: { netns: sandbox.netns }, run: (c, o) => sandbox.run(c, o), destroy: () => sandbox.destroy() } satisfies ControlEntry;
    },
  };
  const control = await ControlServer.listen(path, hooks);
  const stopObservers = await startObservers(flags, () => Promise.all(control.names.map((n) => control.entry(n)!.target.sample())));
  process.stderr.write(`moat: daemon listening at ${path}; SIGTERM removes every sandbox and stops\n`);
  const sigs: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];
  let onSignal: (s: NodeJS.Signals) => void = () => {};
  const signal = new Promise<NodeJS.Signals>((resolve) => { onSignal = resolve; });
  for (const s of sigs) process.on(s, onSignal);
  // The daemon lives until a signal, whatever its clients do; the socket keeps the loop alive.
  const why = await signal;
  process.stderr.write(`moat: ${why}: removing ${control.names.length} sandbox(es)\n`);
  await stopObservers();
  const names = control.names;
  await Promise.all(names.map(async (n) => {
    try {
      await control.entry(n)!.destroy?.();
    } catch (e) {
      process.stderr.write(`moat: removing ${n}: ${(e as Error).message}\n`);
    }
  }));
  // The event streams see every sandbox-destroyed before they end.
  for (const n of names) control.remove(n);
  await control.close();
  return 0;
}

/** Client commands' flags: --control, and for each its own. */
function clientArgs(cmd: string, args: string[], extra: readonly FlagSpec[] = []): { path: string; name: string | undefined; flags: Map<string, string | number | boolean>; lists: Map<string, string[]>; rest: string[] } {
  const specs = [CONTROL_FLAG, ...extra];
  const first = parseFlags(args, specs, cmd);
  const name = first.rest[0] === "--" ? undefined : first.rest[0];
  // Flags may come after NAME too (moat policy NAME --net-rule ...).
  const second = name === undefined ? { flags: new Map(), lists: new Map(), rest: first.rest } : parseFlags(first.rest.slice(1), specs, cmd);
  const flags = new Map([...first.flags, ...second.flags]);
  const lists = new Map<string, string[]>([...first.lists]);
  for (const [k, v] of second.lists) lists.set(k, [...(lists.get(k) ?? []), ...v]);
  const path = (flags.get("control") as string | undefined) ?? defaultControlPath();
  flags.delete("control");
  return { path, name, flags, lists, rest: second.rest };
}

function needName(cmd: string, name: string | undefined): string {
  if (!name) throw new ConfigError(`${cmd}: no sandbox name given`, `e.g. moat ${cmd} NAME (moat ps lists them)`);
  return encodeURIComponent(name);
}

/** Flags as given again (for the server, which parses them with the same specs). */
function flagArgs(flags: Map<string, string | number | boolean>, lists: Map<string, string[]>): string[] {
  const out: string[] = [];
  for (const [k, v] of flags) out.push(...(v === true ? [`--${k}`] : [`--${k}`, String(v)]));
  for (const [k, vs] of lists) for (const v of vs) out.push(`--${k}`, v);
  return out;
}

async function cmdClient(cmd: string, args: string[]): Promise<number> {
  if (cmd !== "create" && wantsHelp(args)) {
    process.stdout.write(helpText(cmd as ClientCommand));
    return 0;
  }
  switch (cmd) {
    case "ps": {
      const { path, name } = clientArgs(cmd, args);
      if (name) throw new ConfigError(`ps: unexpected argument "${name}"`, "moat ps takes no arguments (moat inspect NAME describes one)");
      const list = await expectOk(path, "GET", "/v1/sandboxes") as { name: string; kind: string; created: string; guest: { ipv4: string }; ports: { bind: string; host: number; guest: number; protocol: string }[] }[];
      const rows = [["NAME", "KIND", "GUEST", "PORTS", "CREATED"], ...list.map((s) => [s.name, s.kind, s.guest.ipv4, s.ports.map((p) => `${p.bind}:${p.host}->${p.guest}/${p.protocol}`).join(",") || "-", s.created])];
      const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
      for (const r of rows) process.stdout.write(r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(w[i]! + 2))).join("") + "\n");
      return 0;
    }
    case "inspect": {
      const { path, name } = clientArgs(cmd, args);
      process.stdout.write(JSON.stringify(await expectOk(path, "GET", `/v1/sandboxes/${needName(cmd, name)}`), null, 2) + "\n");
      return 0;
    }
    case "rm": {
      const { path, name, rest } = clientArgs(cmd, args);
      for (const n of [name, ...rest]) await expectOk(path, "DELETE", `/v1/sandboxes/${needName(cmd, n)}`);
      return 0;
    }
    case "create": {
      const { path, flags, lists, rest, name } = clientArgs(cmd, [...args], optionsOf("create"));
      if (flags.get("help")) {
        process.stdout.write(CREATE_HELP);
        return 0;
      }
      if (name !== undefined || rest.length) throw new ConfigError(`create: unexpected argument "${name ?? rest[0]}"`, "a sandbox is created without a command: moat exec NAME -- COMMAND runs one");
      process.stdout.write(JSON.stringify(await expectOk(path, "POST", "/v1/sandboxes", { args: flagArgs(flags, lists) }), null, 2) + "\n");
      return 0;
    }
    case "exec": {
      const { path, name, rest, flags } = clientArgs(cmd, args, optionsOf("exec"));
      const command = rest[0] === "--" ? rest.slice(1) : rest;
      if (command.length === 0) throw new ConfigError("exec: no command given", "e.g. moat exec NAME -- ip addr");
      let stdin: string | undefined;
      if (flags.get("interactive")) {
        const chunks: Buffer[] = [];
        let size = 0;
        for await (const c of process.stdin) {
          size += (c as Buffer).length;
          if (size > 768 * 1024) throw new ConfigError("exec -i: stdin is over 768 KiB", "give the command its input another way (a file in the sandbox's view, a published port)");
          chunks.push(c as Buffer);
        }
        stdin = Buffer.concat(chunks).toString("utf8");
      }
      let status = 125;
      await streamCall(path, "POST", `/v1/sandboxes/${needName(cmd, name)}/exec`, { command, stream: true, env: { PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin" }, ...(stdin !== undefined ? { stdin } : {}) }, (v) => {
        if (typeof v.status === "number") status = v.status;
        else if (typeof v.data === "string") (v.stream === "stderr" ? process.stderr : process.stdout).write(Buffer.from(v.data, "base64"));
      });
      return status;
    }
    case "policy": {
      const { path, name, flags, lists, rest } = clientArgs(cmd, args, POLICY_FLAGS);
      if (rest.length) throw new ConfigError(`policy: unexpected argument "${rest[0]}"`, "e.g. moat policy NAME --net-default-egress deny --net-rule allow@api.example.com:tcp:443");
      const n = needName(cmd, name);
      const p = flags.size || lists.size ? await expectOk(path, "PUT", `/v1/sandboxes/${n}/policy`, { args: flagArgs(flags, lists) }) : await expectOk(path, "GET", `/v1/sandboxes/${n}/policy`);
      process.stdout.write(JSON.stringify(p, null, 2) + "\n");
      return 0;
    }
    case "limit": {
      const { path, name, flags, rest } = clientArgs(cmd, args, LIMIT_FLAGS_OF_RUN);
      if (rest.length) throw new ConfigError(`limit: unexpected argument "${rest[0]}"`, "e.g. moat limit NAME --limit-egress 10mbit --limit-conn-rate 20 (none removes a limit)");
      const n = needName(cmd, name);
      const change = limitFlags(flags); // checked here, so an error names the flag
      const l = Object.keys(change).length ? await expectOk(path, "PUT", `/v1/sandboxes/${n}/limits`, change) : await expectOk(path, "GET", `/v1/sandboxes/${n}/limits`);
      process.stdout.write(JSON.stringify(l, null, 2) + "\n");
      return 0;
    }
    case "publish": {
      const { path, name, rest } = clientArgs(cmd, args);
      if (rest.length !== 1) throw new ConfigError("publish: give NAME and one [BIND:]HOST:GUEST[/udp]", "e.g. moat publish web 8080:80");
      const p = await expectOk(path, "POST", `/v1/sandboxes/${needName(cmd, name)}/ports`, { spec: rest[0] }) as { bind: string; host: number; guest: number; protocol: string };
      process.stdout.write(`${p.bind.includes(":") ? `[${p.bind}]` : p.bind}:${p.host} -> ${p.guest}/${p.protocol}\n`);
      return 0;
    }
    case "unpublish": {
      const { path, name, rest } = clientArgs(cmd, args);
      const m = rest.length === 1 ? /^(\d{1,5})(?:\/(tcp|udp))?$/.exec(rest[0]!) : null;
      if (!m) throw new ConfigError("unpublish: give NAME and HOSTPORT[/tcp|/udp]", "e.g. moat unpublish web 8080");
      await expectOk(path, "DELETE", `/v1/sandboxes/${needName(cmd, name)}/ports/${m[1]}${m[2] ? `?protocol=${m[2]}` : ""}`);
      return 0;
    }
  }
  throw new Error(`unreachable: ${cmd}`);
}

function cmdCleanup(args: string[]): number {
  if (wantsHelp(args)) {
    process.stdout.write(helpText("cleanup"));
    return 0;
  }
  if (args.length) throw new ConfigError(`cleanup: unexpected argument "${args[0]}"`, "moat cleanup takes no arguments");
  if (!hostRoot()) {
    process.stdout.write("0 leftover(s) removed: without root, a sandbox's namespaces die with its moat and leave no name behind\n");
    return 0;
  }
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
      case "daemon":
        return await cmdDaemon(args);
      case "ps":
      case "inspect":
      case "rm":
      case "create":
      case "exec":
      case "policy":
      case "limit":
      case "publish":
      case "unpublish":
        return await cmdClient(cmd, args);
      default:
        process.stderr.write(`moat: unknown command "${cmd}"\nmoat: hint: the commands are run, serve, daemon, create, ps, inspect, exec, policy, limit, publish, unpublish, rm and cleanup; see moat --help\n`);
        return EXIT_MOAT_FAILED;
    }
  } catch (e) {
    return report(e);
  }
}
