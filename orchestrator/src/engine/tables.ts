// tables.ts — what the orchestrator writes into an engine's memory, and reads back out of it:
// the policy (policy-table.ts), the secrets' placeholder forms, the host's own addresses, and the
// denials waiting in the audit ring. EngineHost offers these as its methods (and hands an
// EngineTables of the fresh memory to `prepare`, before the engine starts); nothing outside
// engine/ reads or writes these regions of the memory (layout.ts gives them).
//
// Each table the engine reads while running is written so that it never sees half of one: the
// policy and the host addresses have two slots, the one not in force is written and then made
// active; the secret forms are written once, before the engine starts.
import ipaddr from "ipaddr.js";
import { layout as L } from "./layout.js";
import { addr16 } from "./engine-config.js";
import { installPolicy, PROTOCOL_NUMBER, type NameTable } from "./policy-table.js";
import { ConfigError } from "../errors.js";
import { carriedIPv4 } from "../model/groups.js";
import { placeholderForms } from "../model/placeholders.js";
import type { Action, DenyResponse, NetworkPolicy } from "../model/policy.js";

/** A denial out of the audit ring (the engine's policy/admit.ts writes a 64-byte record each). */
export interface Denial {
  time: string; // ISO 8601
  direction: "outbound" | "inbound";
  protocol: "tcp" | "udp" | "icmpv4" | "icmpv6" | string;
  source: string; // ip:port
  destination: string; // ip
  port: number;
  rule: string; // "rules[3] deny:egress@group:private" or "default"
  action: "deny";
  /** Not a policy decision but a secret's placeholder in the payload: the secret's index. */
  secret?: number;
}

const PROTO_NAME: Record<number, string> = Object.fromEntries(Object.entries(PROTOCOL_NUMBER).map(([name, n]) => [n, name]));

function addrText(bytes: Uint8Array): string {
  const a = ipaddr.fromByteArray(Array.from(bytes)) as ipaddr.IPv6;
  return a.isIPv4MappedAddress() ? a.toIPv4Address().toString() : a.toString();
}

let warnedFull = false;

export class EngineTables {
  private policyInstalled = false;
  constructor(private readonly mem: Uint8Array) {}

  /**
   * Install `policy` (the first time into slot 0 of a fresh memory, then always into the slot
   * not in force): new flows are judged by it from the next one on, live ones stay.
   * `defaultIngress`: what happens to a peer on a published port that no inbound rule matched.
   */
  installPolicy(policy: NetworkPolicy, denyResponse: DenyResponse, names: NameTable, defaultIngress: Action = "allow"): void {
    installPolicy(this.mem, policy, denyResponse, names, !this.policyInstalled, defaultIngress);
    this.policyInstalled = true;
  }

  /**
   * Give the engine the placeholder forms to look for in the guest's own TCP and UDP payloads
   * (engine-wasm/assembly/policy/secrets.ts): every form of every secret (model/placeholders.ts),
   * with the secret's index in `placeholders`.
   */
  setSecretForms(placeholders: readonly string[]): void {
    const { mem } = this;
    const dv = new DataView(mem.buffer, mem.byteOffset, mem.byteLength);
    const forms = placeholders.flatMap((p, i) => placeholderForms(p).map((f) => ({ f: Buffer.from(f, "latin1"), i })));
    if (forms.length > L.SECRET_FORMS_MAX) throw new ConfigError(`${placeholders.length} secrets are more than the engine can watch for`, `at most ${Math.floor(L.SECRET_FORMS_MAX / 11)}`);
    mem.fill(0, L.SECRET_FIRST, L.SECRET_FIRST + 256);
    forms.forEach(({ f, i }, k) => {
      if (f.length > L.SECRET_FORM_MAX_LEN) throw new ConfigError(`a placeholder of ${placeholders[i]!.length} characters is too long for the engine`, "use at most 40 characters");
      const o = L.SECRET_FORMS_BASE + k * L.SECRET_FORM_BYTES;
      dv.setUint32(o, f.length, true);
      dv.setUint32(o + 4, i, true);
      mem.set(f, o + 8);
      mem[L.SECRET_FIRST + f[0]!] = 1;
    });
    dv.setUint32(L.SECRET_FORM_COUNT, forms.length, true);
  }

  /**
   * The host's own addresses (Group Host; policy/host-addresses.ts reads them), `entries` "IP" or
   * "IP/PREFIX": the inactive slot is filled, then made active. Each is stored in the engine's
   * canonical form (an IPv6 address carrying IPv4 as that IPv4 address), with its prefix length
   * out of 128.
   */
  setHostAddresses(entries: readonly string[]): void {
    const { mem } = this;
    const active = new Int32Array(mem.buffer, mem.byteOffset + L.HOST_ADDR_ACTIVE, 1);
    const next = (Atomics.load(active, 0) & 1) ^ 1;
    const slot = L.HOST_ADDR_BASE + next * L.HOST_ADDR_SLOT_BYTES;
    if (entries.length > L.HOST_ADDR_MAX && !warnedFull) {
      warnedFull = true;
      process.emitWarning(`the host has ${entries.length} addresses; only the first ${L.HOST_ADDR_MAX} are known as Group Host to sandboxes`, "MoatWarning");
    }
    const list = entries.slice(0, L.HOST_ADDR_MAX);
    const dv = new DataView(mem.buffer, mem.byteOffset, mem.byteLength);
    list.forEach((entry, i) => {
      const [ip, len] = entry.split("/") as [string, string | undefined];
      const isV4 = ipaddr.parse(ip).kind() === "ipv4";
      const b = addr16(ip); // IPv4 as ::ffff:a.b.c.d
      const carried = isV4 ? undefined : carriedIPv4(Array.from(b));
      const e = slot + 16 + i * L.HOST_ADDR_ENTRY_BYTES;
      mem.set(carried ? addr16(carried.join(".")) : b, e);
      // Prefix lengths count from the 128-bit form: an IPv4 /24 is /120. An IPv6 prefix that
      // carries IPv4 has no IPv4 prefix to speak of: the whole address only.
      mem[e + 16] = len === undefined || carried ? 128 : Number(len) + (isV4 ? 96 : 0);
    });
    dv.setUint32(slot, list.length, true);
    Atomics.store(active, 0, next);
  }

  /**
   * The denials waiting in the audit ring, which is then empty. `ruleText(i)` names rule i of the
   * policy in force; `timeOrigin` maps the engine's time (performance.now() of the worker) to
   * wall-clock ms.
   */
  drainDenials(ruleText: (i: number) => string, timeOrigin: number = performance.timeOrigin): Denial[] {
    const { mem } = this;
    const ctrl = new Int32Array(mem.buffer, mem.byteOffset + L.AUDIT_CTRL, L.RING_CTRL_BYTES / 4);
    const dv = new DataView(mem.buffer, mem.byteOffset, mem.byteLength);
    let head = Atomics.load(ctrl, L.RING_CTRL_HEAD / 4) >>> 0;
    const tail = Atomics.load(ctrl, L.RING_CTRL_TAIL / 4) >>> 0;
    const out: Denial[] = [];
    while (head !== tail) {
      const r = L.AUDIT_BASE + (head & (L.AUDIT_SLOTS - 1)) * L.AUDIT_RECORD_BYTES;
      const rule = dv.getInt32(r + L.AU_RULE, true);
      const src = addrText(mem.subarray(r + L.AU_SRC, r + L.AU_SRC + 16));
      out.push({
        time: new Date(timeOrigin + dv.getFloat64(r + L.AU_TIME_MS, true)).toISOString(),
        direction: mem[r + L.AU_DIRECTION] ? "inbound" : "outbound",
        protocol: PROTO_NAME[mem[r + L.AU_PROTO]!] ?? String(mem[r + L.AU_PROTO]),
        source: `${src.includes(":") ? `[${src}]` : src}:${dv.getUint16(r + L.AU_SPORT, true)}`,
        destination: addrText(mem.subarray(r + L.AU_DST, r + L.AU_DST + 16)),
        port: dv.getUint16(r + L.AU_DPORT, true),
        rule: rule === L.AU_RULE_NOT_ROUTED ? "not-routed: multicast and broadcast are never forwarded"
          : rule === L.AU_RULE_QUIC ? "quic: UDP to an intercepted TLS port is dropped so clients use TCP (--tls-no-block-quic lets it through)"
          : rule === L.AU_RULE_SECRET ? "secret: a placeholder in the payload"
          : rule < 0 ? "default" : `rules[${rule}] ${ruleText(rule)}`,
        action: "deny",
        ...(rule === L.AU_RULE_SECRET ? { secret: dv.getUint32(r + L.AU_DETAIL, true) } : {}),
      });
      head = (head + 1) >>> 0;
    }
    Atomics.store(ctrl, L.RING_CTRL_HEAD / 4, head | 0);
    return out;
  }
}
