// admit.ts — the gate every new flow passes: the connection limit and the policy in force.
// A denial is counted (DROP_POLICY), recorded in the audit ring for the orchestrator's audit
// log, and answered as the policy says: silence (the default), or RST / ICMP prohibited.

import {
  KEY_SCRATCH, ST_NOW_MS, ST_TCP_LIVE, ST_UDP_LIVE, CFG_MAX_CONNECTIONS, AUDIT_CTRL, AUDIT_BASE,
  AUDIT_SLOTS, AUDIT_RECORD_BYTES, AU_TIME_MS, AU_RULE, AU_PROTO, AU_FAMILY, AU_ACTION,
  AU_DIRECTION, AU_SPORT, AU_DPORT, AU_SRC, AU_DST, CFG_DENY_PROXY_PORT, CFG_TLS_PROXY_PORT, CFG_TLS_PORT_COUNT,
  CFG_TLS_PORTS, CFG_TLS_PORTS_MAX, DENIED_BIT, DENY_RULE, AU_RULE_NOT_ROUTED, AU_RULE_QUIC, AU_RULE_SECRET, AU_DETAIL, PIN_MATCHED,
  POLICY_DENY, DIR_OUTBOUND, DIR_INBOUND, DENY_DROP, DENY_HTTP,
} from "../layout";
import { FLOWS_ALLOWED, DROP_POLICY, DROP_FLOW_LIMIT, AUDIT_LOST, SECRET_VIOLATIONS } from "../counters";
import { ringHead, ringTail, ringPublishTail } from "../ring";
import { copy16, familyOf } from "../wire/bytes";
import { PROTO_TCP } from "../wire/numbers";
import { count } from "../emit";
import { policyEvaluate, policyDenyResponse } from "./match";
import { refusePacket, ICMP_NONE, ICMP_PROHIBITED } from "../reject";

/**
 * May the flow whose key is at KEY_SCRATCH (remote port `dport`) be created? Called once, when
 * the flow is new. On refusal everything is already counted and answered. `gatewayService`: a
 * flow to the gateway's own services (DNS), which policy does not govern but which counts
 * against the connection limit like every other flow (a guest must not hold thousands of host
 * sockets open through the gateway's port 53).
 */
export const ADMIT_REFUSED: u32 = 0;
export const ADMIT_OK: u32 = 1;
export const ADMIT_DENY_PAGE: u32 = 2; // denied, but answered by the deny page: DENY_RULE holds DENIED_BIT | rule + 1

export function admitNewFlow(proto: u32, family: u32, dport: u32, gatewayService: bool): u32 {
  store<u32>(PIN_MATCHED, 0);
  let result = ADMIT_OK;
  if (!gatewayService) {
    const verdict = policyEvaluate(proto, KEY_SCRATCH + 24, dport, DIR_OUTBOUND);
    if (verdict & 1) {
      store<u32>(PIN_MATCHED, 0); // a deny by a domain rule holds no pin
      count(DROP_POLICY);
      audit(proto, family, dport, <i32>(verdict >> 1) - 1, DIR_OUTBOUND, KEY_SCRATCH + 8, <u32>load<u16>(KEY_SCRATCH, 4), KEY_SCRATCH + 24);
      const response = policyDenyResponse();
      if (response == DENY_HTTP && proto == PROTO_TCP && denyPagePort(dport)) {
        store<u32>(DENY_RULE, DENIED_BIT | (verdict >> 1));
        result = ADMIT_DENY_PAGE;
      } else {
        if (response != DENY_DROP) refusePacket(proto, ICMP_PROHIBITED);
        return ADMIT_REFUSED;
      }
    }
  }
  if (overConnectionLimit()) {
    store<u32>(PIN_MATCHED, 0);
    refusePacket(proto, ICMP_NONE); // over the limit: TCP is refused at once, UDP dropped
    return ADMIT_REFUSED;
  }
  if (!gatewayService && result == ADMIT_OK) count(FLOWS_ALLOWED);
  return result;
}

/** Port 80, or an intercepted TLS port, while the deny page is served. */
function denyPagePort(dport: u32): bool {
  return load<u32>(CFG_DENY_PROXY_PORT) != 0 && (dport == 80 || tlsPort(dport));
}

/** An intercepted TLS port (TCP to it goes to the TLS proxy; UDP to it is QUIC). */
export function tlsPort(dport: u32): bool {
  if (load<u32>(CFG_TLS_PROXY_PORT) == 0) return false;
  const n = min<u32>(load<u32>(CFG_TLS_PORT_COUNT), <u32>CFG_TLS_PORTS_MAX);
  for (let i: u32 = 0; i < n; i++) if (<u32>load<u16>(CFG_TLS_PORTS + (<usize>i << 1)) == dport) return true;
  return false;
}

/** The sandbox holds --max-connections flows (TCP + UDP, both directions): counted when true. */
function overConnectionLimit(): bool {
  const max = load<u32>(CFG_MAX_CONNECTIONS);
  if (max != 0 && load<u32>(ST_TCP_LIVE) + load<u32>(ST_UDP_LIVE) >= max) {
    count(DROP_FLOW_LIMIT);
    return true;
  }
  return false;
}

/**
 * May a peer on a published port (`peer`, 16 bytes; `peerPort`) reach guest port `guestPort`?
 * Judged by the inbound rules on the peer's address and the guest port, first match wins, else
 * the policy's default inbound action; then the connection limit, which inbound flows share with
 * outbound ones. A denial is counted and audited (direction inbound: source = the peer,
 * destination = the guest's address and port); the caller refuses the peer.
 */
export function admitInbound(proto: u32, peer: usize, peerPort: u32, guest: usize, guestPort: u32): bool {
  store<u32>(PIN_MATCHED, 0);
  const verdict = policyEvaluate(proto, peer, guestPort, DIR_INBOUND);
  if (verdict & 1) {
    store<u32>(PIN_MATCHED, 0);
    count(DROP_POLICY);
    audit(proto, familyOf(peer), guestPort, <i32>(verdict >> 1) - 1, DIR_INBOUND, peer, peerPort, guest);
    return false;
  }
  store<u32>(PIN_MATCHED, 0); // inbound flows hold no pin
  if (overConnectionLimit()) return false;
  count(FLOWS_ALLOWED);
  return true;
}

/**
 * A flow that is dropped whatever the policy says (multicast and broadcast are not forwarded):
 * recorded in the audit ring like a denial, with AU_RULE_NOT_ROUTED as its reason, so a guest's
 * mDNS or SSDP never vanishes without a trace. The key is at KEY_SCRATCH.
 */
export function auditNotRouted(proto: u32, family: u32, dport: u32): void {
  audit(proto, family, dport, AU_RULE_NOT_ROUTED, DIR_OUTBOUND, KEY_SCRATCH + 8, <u32>load<u16>(KEY_SCRATCH, 4), KEY_SCRATCH + 24);
}

/**
 * A secret's placeholder in the guest's TCP stream or UDP datagram (policy/placeholder-scan.ts), key at
 * KEY_SCRATCH: counted and audited with reason AU_RULE_SECRET and the secret's index; the caller
 * stops the flow or drops the datagram.
 */
export function auditSecret(proto: u32, family: u32, dport: u32, secret: u32): void {
  count(SECRET_VIOLATIONS);
  audit(proto, family, dport, AU_RULE_SECRET, DIR_OUTBOUND, KEY_SCRATCH + 8, <u32>load<u16>(KEY_SCRATCH, 4), KEY_SCRATCH + 24, secret);
}

/** QUIC to an intercepted TLS port, dropped (CFG_TLS_BLOCK_QUIC): audited with reason AU_RULE_QUIC. */
export function auditQuic(proto: u32, family: u32, dport: u32): void {
  audit(proto, family, dport, AU_RULE_QUIC, DIR_OUTBOUND, KEY_SCRATCH + 8, <u32>load<u16>(KEY_SCRATCH, 4), KEY_SCRATCH + 24);
}

/** Record a denial in the audit ring (bounded: when full, AUDIT_LOST counts what was not kept). */
function audit(proto: u32, family: u32, dport: u32, rule: i32, direction: u32, src: usize, sport: u32, dst: usize, detail: u32 = 0): void {
  const tail = ringTail(AUDIT_CTRL);
  if (tail - ringHead(AUDIT_CTRL) >= <u32>AUDIT_SLOTS) { count(AUDIT_LOST); return; }
  const r = AUDIT_BASE + <usize>(tail & (<u32>AUDIT_SLOTS - 1)) * AUDIT_RECORD_BYTES;
  store<f64>(r, load<f64>(ST_NOW_MS), AU_TIME_MS);
  store<i32>(r, rule, AU_RULE);
  store<u8>(r, <u8>proto, AU_PROTO);
  store<u8>(r, <u8>family, AU_FAMILY);
  store<u8>(r, POLICY_DENY, AU_ACTION);
  store<u8>(r, <u8>direction, AU_DIRECTION);
  store<u16>(r, <u16>sport, AU_SPORT);
  store<u16>(r, <u16>dport, AU_DPORT);
  copy16(r + AU_SRC, src);
  copy16(r + AU_DST, dst);
  store<u32>(r, detail, AU_DETAIL);
  ringPublishTail(AUDIT_CTRL, tail + 1);
}
