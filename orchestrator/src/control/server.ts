// server.ts — the control socket (`moat daemon --control PATH`, `moat serve --control PATH`):
// HTTP/1.1 + JSON on a unix socket, documented in docs/control-api.yaml.
//
// Who may connect is who may open the socket: it is created mode 0600 (under a umask of 077, so
// it is never reachable more widely, even for an instant), owned by the user moat runs as, and
// its directory is created 0700 when moat creates it. A stale socket at PATH is replaced; any
// other file there is an error (never unlinked).
//
// What it does: a registry of the sandboxes this process serves, by name. Requests are bounded
// (a 1 MiB body, JSON only, every field checked) and every error is JSON: {error, hint?, code}.
// Sandboxes belong to the process, not to the connection that created them: a client that goes
// away leaves them running. close() stops listening; the owner destroys the sandboxes.
import { createServer, type IncomingMessage, type ServerResponse, type Server } from "node:http";
import { lstatSync, mkdirSync, unlinkSync, chmodSync } from "node:fs";
import { dirname } from "node:path";
import { connect } from "node:net";
import { Writable } from "node:stream";
import { ConfigError, MoatError } from "../errors.js";
import type { GatewayEvent } from "../gateway/events.js";
import { renderMetrics, CONTENT_TYPE, type GatewaySample } from "../gateway/metrics.js";
import type { NetworkPolicyShape } from "../model/policy.js";
import type { DenyResponse } from "../model/policy.js";
import type { SandboxAddresses } from "../gateway/addressing.js";
import { parsePublish, type PortSpec, type PublishedPort, type PortProtocol } from "../gateway/ports.js";
import type { RunOptions } from "../sandbox/sandbox.js";
import type { RateLimits, ValidLimits } from "../gateway/limits.js";

/** What the control socket needs of a sandbox (GuestSandbox and Gateway both have it). */
export interface Controlled {
  readonly name: string;
  readonly addresses: SandboxAddresses;
  readonly ports: PublishedPort[];
  on(name: "event", fn: (e: GatewayEvent) => void): () => void;
  sample(): Promise<GatewaySample>;
  policyInForce(): { defaultAction: string; rules: string[]; denyResponse: string; offline: boolean };
  setPolicy(policy: NetworkPolicyShape, denyResponse?: DenyResponse): void;
  readonly limits: ValidLimits;
  setLimits(change: RateLimits): Promise<ValidLimits>;
  publish(spec: PortSpec): Promise<PublishedPort>;
  unpublish(hostPort: number, protocol?: PortProtocol): Promise<void>;
}

export interface ControlEntry {
  kind: "namespace" | "vm" | "served";
  created: string;
  target: Controlled;
  /** Run a command in the guest (absent: the guest is not moat's to run commands in). */
  run?: (command: string[], options: RunOptions) => Promise<number>;
  /** Remove the sandbox (absent: it cannot be removed over the socket). */
  destroy?: () => Promise<void>;
  /** The options it was created with, as flags (what inspect shows). */
  args?: string[];
  /** More for inspect (e.g. the namespace's name). */
  extra?: Record<string, unknown>;
  /** Events the sandbox emitted before it was added (sandbox-created): streamed at add(), once. */
  takeEarlyEvents?: () => GatewayEvent[];
}

/** How the owner creates sandboxes and reads policy flags (the CLI's parsers: one meaning of each flag). */
export interface ControlHooks {
  /** Create a sandbox from `moat run` flags (absent: creation is refused, e.g. `moat serve`). */
  create?: (request: { name?: string; args: string[]; vm: boolean }) => Promise<ControlEntry>;
  /** The policy and deny response of `moat run` flags (--net, --net-rule, --net-default-egress, --deny-response, --config). */
  policyFromArgs: (args: string[]) => { policy: NetworkPolicyShape; denyResponse?: DenyResponse };
  /** Why creation is refused when `create` is absent. */
  createRefused?: string;
}

const MAX_BODY = 1 << 20;
/** Output an exec collects, per stream; beyond it the output is cut (and said so). */
const MAX_COLLECT = 16 << 20;

class HttpError extends Error {
  constructor(readonly status: number, message: string, readonly hint?: string, readonly code = "ERR_BAD_REQUEST") {
    super(message);
  }
}

/** The default control socket: /run/moat/control.sock as root, else $XDG_RUNTIME_DIR/moat/control.sock. */
export function defaultControlPath(): string {
  if (process.getuid?.() === 0) return "/run/moat/control.sock";
  const xdg = process.env.XDG_RUNTIME_DIR;
  if (!xdg) throw new ConfigError("no control socket path: not root and XDG_RUNTIME_DIR is not set", "give --control PATH");
  return `${xdg}/moat/control.sock`;
}

export class ControlServer {
  private readonly entries = new Map<string, ControlEntry>();
  private readonly server: Server;
  /** Event streams (GET /events) open now: each gets every sandbox's events. */
  private readonly streams = new Set<(e: GatewayEvent) => void>();
  private readonly unsubscribe = new Map<string, () => void>();
  /** Names being created: reserved so two requests cannot race for one. */
  private readonly creating = new Set<string>();

  private constructor(readonly path: string, private readonly hooks: ControlHooks) {
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((e: unknown) => this.fail(res, e));
    });
    this.server.keepAliveTimeout = 5000;
  }

  /** Listen at `path` (mode 0600); fails if something other than a stale socket is there. */
  static async listen(path: string, hooks: ControlHooks): Promise<ControlServer> {
    const c = new ControlServer(path, hooks);
    await prepareSocketPath(path);
    const old = process.umask(0o077);
    try {
      await new Promise<void>((resolve, reject) => {
        c.server.once("error", (e: NodeJS.ErrnoException) => reject(new MoatError("ERR_BAD_CONFIG", `cannot listen at control socket ${path}: ${e.message}`, "give another --control PATH")));
        c.server.listen(path, () => resolve());
      });
    } finally {
      process.umask(old);
    }
    chmodSync(path, 0o600);
    return c;
  }

  /** Add a sandbox to the registry (its events go to the /events streams). */
  add(name: string, entry: ControlEntry): void {
    this.entries.set(name, entry);
    this.unsubscribe.set(name, entry.target.on("event", (e) => {
      for (const s of this.streams) s(e);
      // A sandbox that ended by itself (a secret violation's block-and-terminate) leaves the registry.
      if (e.kind === "sandbox-destroyed" && entry.kind !== "served" && this.entries.get(name) === entry) setImmediate(() => this.remove(name));
    }));
    for (const e of entry.takeEarlyEvents?.() ?? []) for (const s of this.streams) s(e);
  }

  /** Take a sandbox off the registry (after its sandbox-destroyed event reached the streams). */
  remove(name: string): void {
    this.entries.delete(name);
    this.unsubscribe.get(name)?.();
    this.unsubscribe.delete(name);
  }

  get names(): string[] {
    return [...this.entries.keys()];
  }

  entry(name: string): ControlEntry | undefined {
    return this.entries.get(name);
  }

  /** Stop listening (open event streams are ended) and remove the socket. */
  async close(): Promise<void> {
    for (const end of this.enders) end();
    await new Promise<void>((r) => {
      this.server.closeAllConnections();
      this.server.close(() => r());
    });
    try {
      if (lstatSync(this.path).isSocket()) unlinkSync(this.path);
    } catch {
      // gone
    }
  }

  private readonly enders = new Set<() => void>();

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://moat");
    const parts = url.pathname.split("/").filter(Boolean).map((p) => {
      try {
        return decodeURIComponent(p);
      } catch {
        throw new HttpError(400, `the path ${url.pathname} is not valid percent-encoding`);
      }
    });
    const m = req.method ?? "GET";
    if (parts[0] === "metrics" && parts.length === 1 && m === "GET") {
      const samples = await Promise.all([...this.entries.values()].map((e) => e.target.sample()));
      res.writeHead(200, { "content-type": CONTENT_TYPE }).end(renderMetrics(samples));
      return;
    }
    if (parts[0] !== "v1") throw new HttpError(404, `no such endpoint: ${m} ${url.pathname}`, "the API is under /v1 (docs/control-api.yaml)", "ERR_NOT_FOUND");
    const [, collection, name, sub, arg] = parts;
    if (collection === "events" && parts.length === 2 && m === "GET") return this.events(req, res, url.searchParams.get("sandbox") ?? undefined);
    if (collection !== "sandboxes") throw new HttpError(404, `no such endpoint: ${m} ${url.pathname}`, "see docs/control-api.yaml", "ERR_NOT_FOUND");
    if (name === undefined) {
      if (m === "GET") return json(res, 200, await Promise.all([...this.entries].map(([n, e]) => this.summary(n, e))));
      if (m === "POST") return this.create(req, res);
      throw methodNotAllowed(m, url.pathname);
    }
    const entry = this.entries.get(name);
    if (!entry) throw new HttpError(404, `no sandbox named "${name}"`, `moat ps lists them: ${this.names.join(", ") || "none"}`, "ERR_NO_SUCH_SANDBOX");
    if (sub === undefined) {
      if (m === "GET") return json(res, 200, await this.inspect(name, entry));
      if (m === "DELETE") {
        if (!entry.destroy) throw new HttpError(409, `sandbox "${name}" cannot be removed over the control socket`, "it is the guest of moat serve: stop moat serve (SIGTERM)", "ERR_CONFLICT");
        await entry.destroy();
        this.remove(name);
        res.writeHead(204).end();
        return;
      }
      throw methodNotAllowed(m, url.pathname);
    }
    if (sub === "exec" && arg === undefined && m === "POST") return this.exec(req, res, name, entry);
    if (sub === "policy" && arg === undefined) {
      if (m === "GET") return json(res, 200, entry.target.policyInForce());
      if (m === "PUT") {
        const body = await readJson(req);
        const args = stringList(body.args, "args");
        const { policy, denyResponse } = this.hooks.policyFromArgs(args);
        entry.target.setPolicy(policy, denyResponse);
        return json(res, 200, entry.target.policyInForce());
      }
      throw methodNotAllowed(m, url.pathname);
    }
    if (sub === "limits" && arg === undefined) {
      if (m === "GET") return json(res, 200, entry.target.limits);
      // {egress?, ingress?, connRate?, dnsRate?}: a key given sets that limit, null removes it,
      // a key left out keeps it (gateway/limits.ts checks every value).
      if (m === "PUT") return json(res, 200, await entry.target.setLimits(await readJson(req) as RateLimits));
      throw methodNotAllowed(m, url.pathname);
    }
    if (sub === "ports") {
      if (arg === undefined && m === "GET") return json(res, 200, entry.target.ports);
      if (arg === undefined && m === "POST") {
        const body = await readJson(req);
        const spec: PortSpec = typeof body.spec === "string" ? parsePublish(body.spec, "spec") : body as unknown as PortSpec;
        return json(res, 201, await entry.target.publish(spec));
      }
      if (arg !== undefined && m === "DELETE") {
        const host = Number(arg);
        if (!/^\d{1,5}$/.test(arg) || host < 1 || host > 65535) throw new HttpError(400, `"${arg}" is not a host port`, "DELETE /v1/sandboxes/NAME/ports/HOSTPORT[?protocol=udp]");
        const protocol = url.searchParams.get("protocol") ?? undefined;
        if (protocol !== undefined && protocol !== "tcp" && protocol !== "udp") throw new HttpError(400, `protocol "${protocol}" is not tcp or udp`);
        await entry.target.unpublish(host, protocol);
        res.writeHead(204).end();
        return;
      }
      throw methodNotAllowed(m, url.pathname);
    }
    throw new HttpError(404, `no such endpoint: ${m} ${url.pathname}`, "see docs/control-api.yaml", "ERR_NOT_FOUND");
  }

  private async summary(name: string, e: ControlEntry): Promise<Record<string, unknown>> {
    const a = e.target.addresses;
    return { name, kind: e.kind, created: e.created, guest: { ipv4: a.guestIp4, ipv6: a.guestIp6 }, ports: e.target.ports };
  }

  private async inspect(name: string, e: ControlEntry): Promise<Record<string, unknown>> {
    const a = e.target.addresses;
    const s = await e.target.sample();
    const counters = Object.fromEntries(Object.entries(s.counters).filter(([, v]) => v !== 0));
    const { latencyBuckets: _b, ...dns } = s.dns;
    return {
      name, kind: e.kind, created: e.created, args: e.args ?? [], ...e.extra,
      addresses: { guest: { ipv4: `${a.guestIp4}/${a.prefixLen4}`, ipv6: `${a.guestIp6}/64`, mac: a.guestMac }, gateway: { ipv4: a.gatewayIp4, ipv6: a.gatewayLl6, mac: a.gatewayMac } },
      policy: e.target.policyInForce(),
      limits: e.target.limits,
      ports: e.target.ports,
      flows: s.flows, counters, dns, tls: s.tls, events: s.events,
    };
  }

  private async create(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (!this.hooks.create) throw new HttpError(409, "this moat does not create sandboxes", this.hooks.createRefused, "ERR_CONFLICT");
    const body = await readJson(req);
    const args = body.args === undefined ? [] : stringList(body.args, "args");
    const name = body.name === undefined ? undefined : typeof body.name === "string" ? body.name : badField("name", "a string");
    const vm = body.vm === undefined ? false : typeof body.vm === "boolean" ? body.vm : badField("vm", "true or false");
    if (name !== undefined && (this.entries.has(name) || this.creating.has(name))) throw new HttpError(409, `the sandbox name "${name}" is in use`, "choose another name, or moat rm it first", "ERR_NAME_IN_USE");
    if (name !== undefined) this.creating.add(name);
    try {
      const entry = await this.hooks.create({ name, args, vm });
      this.add(entry.target.name, entry); // the client may be gone by now: the sandbox stays (it is the daemon's)
      json(res, 201, await this.inspect(entry.target.name, entry));
    } finally {
      if (name !== undefined) this.creating.delete(name);
    }
  }

  /**
   * Run a command: {command, env?, cwd?, stdin?, stream?}. Collected: one JSON answer {status,
   * stdout, stderr} (text, each cut at 16 MiB). Streamed: NDJSON, {"stream":"stdout"|"stderr",
   * "data": base64} as output comes, then {"status": N}.
   */
  private async exec(req: IncomingMessage, res: ServerResponse, name: string, e: ControlEntry): Promise<void> {
    if (!e.run) throw new HttpError(409, `sandbox "${name}" runs no commands for moat`, "it is the guest of moat serve: its VMM runs what it runs", "ERR_CONFLICT");
    const body = await readJson(req);
    const command = stringList(body.command, "command");
    if (command.length === 0) throw new HttpError(400, "command is empty", `e.g. {"command": ["sh", "-c", "ip addr"]}`);
    const env = body.env === undefined ? { PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin" } : stringRecord(body.env, "env");
    const cwd = body.cwd === undefined ? undefined : typeof body.cwd === "string" ? body.cwd : badField("cwd", "a string");
    const stdinText = body.stdin === undefined ? undefined : typeof body.stdin === "string" ? body.stdin : badField("stdin", "a string");
    const stream = body.stream === true;
    const { Readable } = await import("node:stream");
    const stdin = stdinText === undefined ? null : Readable.from([Buffer.from(stdinText)]);
    // A client that goes before its answer is complete hangs up on the command (nobody would read
    // its output, or be there to stop it).
    const gone = new AbortController();
    res.once("close", () => { if (!res.writableFinished) gone.abort(); });
    const signal = gone.signal;
    if (stream) {
      res.writeHead(200, { "content-type": "application/x-ndjson" });
      const out = (which: string) => new Writable({
        write(chunk: Buffer, _enc, cb) {
          if (!res.destroyed) res.write(JSON.stringify({ stream: which, data: chunk.toString("base64") }) + "\n");
          cb();
        },
      });
      const status = await e.run(command, { stdout: out("stdout"), stderr: out("stderr"), env, cwd, stdin, signal });
      if (!res.destroyed) res.end(JSON.stringify({ status }) + "\n");
      return;
    }
    const collect = () => {
      const chunks: Buffer[] = [];
      let size = 0;
      let cut = false;
      const w = new Writable({
        write(chunk: Buffer, _enc, cb) {
          if (size < MAX_COLLECT) chunks.push(chunk.subarray(0, MAX_COLLECT - size));
          else cut = true;
          size += chunk.length;
          cb();
        },
      });
      return { w, text: () => Buffer.concat(chunks).toString("utf8") + (cut || size > MAX_COLLECT ? `\n[moat: output cut at ${MAX_COLLECT} bytes]\n` : "") };
    };
    const o = collect();
    const er = collect();
    const status = await e.run(command, { stdout: o.w, stderr: er.w, env, cwd, stdin, signal });
    json(res, 200, { status, stdout: o.text(), stderr: er.text() });
  }

  /** GET /v1/events[?sandbox=NAME]: every event from now on, one JSON line each, until the client goes. */
  private events(req: IncomingMessage, res: ServerResponse, only: string | undefined): void {
    res.writeHead(200, { "content-type": "application/x-ndjson", "cache-control": "no-store" });
    res.flushHeaders();
    const send = (e: GatewayEvent) => {
      if (only !== undefined && e.sandbox !== only) return;
      // A client that does not read is cut off rather than buffered without bound.
      if (res.writableLength > 4 << 20) return end();
      res.write(JSON.stringify(e) + "\n");
    };
    const end = () => {
      this.streams.delete(send);
      this.enders.delete(end);
      if (!res.writableEnded) res.end();
    };
    this.streams.add(send);
    this.enders.add(end);
    req.on("close", end);
    res.on("close", end);
  }

  private fail(res: ServerResponse, e: unknown): void {
    const status = e instanceof HttpError ? e.status : e instanceof ConfigError ? 400 : e instanceof MoatError ? (e.code === "ERR_NAME_IN_USE" ? 409 : e.code === "ERR_PORT" ? 409 : 500) : 500;
    const err = e as { message?: string; hint?: string; code?: string };
    if (res.headersSent) {
      res.destroy();
      return;
    }
    json(res, status, { error: err.message ?? String(e), ...(err.hint ? { hint: err.hint } : {}), code: e instanceof HttpError || e instanceof MoatError ? err.code : "ERR_INTERNAL" });
  }
}

function json(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body) + "\n");
}

function methodNotAllowed(method: string, path: string): HttpError {
  return new HttpError(405, `${method} is not allowed on ${path}`, "see docs/control-api.yaml", "ERR_METHOD");
}

function badField(field: string, what: string): never {
  throw new HttpError(400, `${field} must be ${what}`);
}

function stringList(v: unknown, field: string): string[] {
  if (!Array.isArray(v) || !v.every((x) => typeof x === "string")) badField(field, "a list of strings");
  return v as string[];
}

function stringRecord(v: unknown, field: string): Record<string, string> {
  if (typeof v !== "object" || v === null || Array.isArray(v) || !Object.values(v).every((x) => typeof x === "string")) badField(field, "an object of strings");
  return v as Record<string, string>;
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const type = req.headers["content-type"] ?? "";
  if (!/^application\/json\b/.test(type)) throw new HttpError(415, `the body must be JSON (content-type ${type || "missing"})`, "send content-type: application/json");
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > MAX_BODY) throw new HttpError(413, `the body is over ${MAX_BODY} bytes`);
    chunks.push(c as Buffer);
  }
  let v: unknown;
  try {
    v = JSON.parse(Buffer.concat(chunks).toString("utf8") || "{}");
  } catch (e) {
    throw new HttpError(400, `the body is not JSON: ${(e as Error).message}`);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new HttpError(400, "the body must be a JSON object");
  return v as Record<string, unknown>;
}

/** A stale socket (nobody listening) is removed; a live one or any other file is an error. */
async function prepareSocketPath(path: string): Promise<void> {
  const dir = dirname(path);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return; // nothing there
  }
  if (!st.isSocket()) throw new ConfigError(`${path} exists and is not a socket`, "give another --control PATH, or remove that file yourself");
  const live = await new Promise<boolean>((resolve) => {
    const s = connect(path);
    s.once("connect", () => { s.destroy(); resolve(true); });
    s.once("error", () => resolve(false));
  });
  if (live) throw new MoatError("ERR_BAD_CONFIG", `another moat is listening at control socket ${path}`, "stop it, or give another --control PATH");
  unlinkSync(path);
}
