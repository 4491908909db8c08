// secrets.ts — the gateway's side of secrets (secrets/secrets.ts has the theory): what a command
// is given (each secret's placeholder, never its value; the variables that make clients trust
// moat's CA), and what happens when a placeholder heads where it may not go, wherever it was
// caught — the TLS proxy's filters, the DNS interceptor, the engine's scan of the guest's own
// TCP and UDP: an event, a line on stderr when no audit file has it, the guest stopped when the
// action says so.
import { GUEST_TRUST } from "../tls/setup.js";
import type { Denial } from "../engine/tables.js";
import type { Emit, SecretViolationGatewayEvent } from "./events.js";
import type { SecretViolationEvent, ValidOptions } from "./options.js";

/** What a gateway's secrets need of it. */
export interface SecretWiring {
  readonly options: Pick<ValidOptions, "secrets" | "tls" | "onSecretViolation" | "onSecretEvent">;
  /** The events go to an audit file (without one, a violation logged is told on stderr). */
  readonly auditLog: boolean;
  readonly emit: Emit;
  /** Stop every process of the guest (at the first block-and-terminate violation), saying why. */
  terminate(reason: string): void;
}

export class GatewaySecrets {
  constructor(private readonly gw: SecretWiring) {}

  /** The placeholders the command sees, by variable name. */
  get placeholders(): Record<string, string> {
    return Object.fromEntries(this.gw.options.secrets.map((x) => [x.env, x.placeholder]));
  }

  /**
   * `env` (a command's environment, GuestSandbox.commandEnv) with moat's own variables:
   * placeholders for the secrets (the values, under any variable, never go in) and, with TLS
   * interception, the variables that point clients at the bundle trusting moat's CA
   * (GUEST_TRUST: where every kind of guest has it).
   */
  commandEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
    const b = GUEST_TRUST.bundle;
    const vars = this.gw.options.tls ? { SSL_CERT_FILE: b, REQUESTS_CA_BUNDLE: b, CURL_CA_BUNDLE: b, NODE_EXTRA_CA_CERTS: GUEST_TRUST.caFile } : {};
    const out: NodeJS.ProcessEnv = { ...env, ...vars };
    for (const x of this.gw.options.secrets) {
      for (const [k, v] of Object.entries(out)) if (v !== undefined && v.includes(x.value)) delete out[k];
      out[x.env] = x.placeholder;
    }
    return out;
  }

  /** A placeholder in the guest's own TCP or UDP (the engine audits it with the secret's index). */
  inPayload(e: Denial): void {
    const env = this.gw.options.secrets[e.secret ?? -1]?.env ?? "?";
    this.violation(env, `${e.destination.includes(":") ? `[${e.destination}]` : e.destination}:${e.port}`, e.protocol === "udp" ? "a UDP datagram" : "a TCP stream", "raw or encoded");
  }

  /** A placeholder headed where it may not go (the request was already stopped): log, terminate. */
  violation(secret: string, destination: string, where: string, form: string): void {
    const action = this.gw.options.onSecretViolation;
    const event: SecretViolationEvent = { secret, destination, where, form, action };
    if (action !== "block" && !this.gw.auditLog) {
      // No audit file: the operator still learns of it (one line, never the value).
      process.stderr.write(`moat: secret ${secret}: its placeholder (${form}) in ${where} (${destination}) was blocked${action === "block-and-terminate" ? "; the sandbox is terminated" : ""}\n`);
    }
    this.gw.emit<SecretViolationGatewayEvent>({ kind: "secret-violation", name: secret, destination, where, form, action, detail: `${form} placeholder in ${where} (${destination}); ${action}` });
    this.gw.options.onSecretEvent?.(event);
    if (action === "block-and-terminate") this.gw.terminate(`secret ${secret}'s placeholder was sent to ${destination} (${where})`);
  }
}
