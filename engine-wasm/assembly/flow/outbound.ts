// outbound.ts — flows the guest opens: where each one goes, decided once, here (the twin of
// inbound.ts; passt's fwd_nat_from_tap beside fwd_nat_from_host).
//
// Theory of operation
// engine.ts parses a frame, writes its key (KEY_SCRATCH) and looks the flow up. A packet of an
// existing flow goes where its flow was sent when it was made (F_ROUTE, F_DIAL_*), whichever side
// opened it; nothing here runs per packet. A packet that would start a flow comes here first
// (outbound), which names the service it is for and where its host side is dialled:
//
//   service               the guest's packet                             route                dial
//   SVC_REMOTE            anything not below                             ROUTE_REMOTE         the remote it addressed
//   SVC_GATEWAY_LOOPBACK  to the gateway, not below                      ROUTE_HOST_LOOPBACK  127.0.0.1 / ::1, its port
//   SVC_DNS               UDP/53 to any resolver, intercepting           (no flow: dns.ts hands it to the interceptor)
//   SVC_DNS_FORWARDER     UDP/53 to the gateway, not intercepting        ROUTE_DNS_FORWARDER  CFG_DNS_FWD_*
//   SVC_DNS_TCP           TCP/53 to the gateway, or to any resolver      ROUTE_SERVICE        CFG_DNS_FWD_* (the
//                         when intercepting                                                   DNS-over-TCP listener)
//   SVC_TLS               TCP to an intercepted TLS port                 ROUTE_SERVICE        CFG_TLS_PROXY_*
//   SVC_DOT               TCP/853 while the TLS proxy runs               ROUTE_SERVICE        CFG_TLS_PROXY_*
//   SVC_DENY_PAGE         TCP denied, answered by the deny page          ROUTE_SERVICE        CFG_TLS_PROXY_IP,
//                         (admission turns a decision into this one)                          CFG_DENY_PROXY_PORT
//
// A ROUTE_SERVICE flow is dialled with the redirect preamble (layout.ts, OP_ORIG) naming where
// the guest was going. Or the packet is refused here, counted and answered: DNS over the other
// transports, so that stubs fall back to port 53 (DNS_ALT_REFUSED; a reset, or ICMP port
// unreachable), QUIC that would carry TLS past the interception (DROP_QUIC, audited), DNS with
// nowhere to go (DROP_DNS_NO_UPSTREAM; TCP is reset).
//
// Admission (policy, pins, the connection limit: policy/admit.ts) runs once per new flow,
// through outboundAdmit, where its protocol is ready to make the flow (after the flow limits;
// TCP only on a SYN). The gateway's own DNS (UDP/53 and TCP/53 to it, and DoT to it) counts
// against the connection limit but is not judged by policy (DESIGN §6); UDP/53 to the gateway
// under interception is no flow at all, and nothing is admitted. The flow's creator then
// records the decision in it (outboundRecord, table.ts flowToRemote).
//
// The decision is kept in OUT_* (layout.ts), scratch for the packet in hand: nothing allocated.

import {
  KEY_SCRATCH, OUT_LOOPBACK, OUT_PORT, OUT_DIAL, OUT_SERVICE, OUT_ROUTE, OUT_PROTO, OUT_GATEWAY, DENY_RULE,
  CFG_DNS_INTERCEPT, CFG_DNS_FWD_IP, CFG_DNS_FWD_PORT, CFG_TLS_PROXY_IP, CFG_TLS_PROXY_PORT, CFG_TLS_BLOCK_QUIC,
  CFG_DENY_PROXY_PORT,
} from "../layout";
import { DNS_ALT_REFUSED, DROP_QUIC, DROP_DNS_NO_UPSTREAM, TLS_REDIRECTED } from "../counters";
import { count } from "../emit";
import { PROTO_TCP, PROTO_UDP } from "../wire/numbers";
import { admitNewFlow, auditQuic, tlsPort, ADMIT_REFUSED, ADMIT_DENY_PAGE } from "../policy/admit";
import { refusePacket, ICMP_NONE, ICMP_PORT_UNREACHABLE } from "../reject";
import { flowToRemote, F_ADMIT_NAME, ROUTE_REMOTE, ROUTE_HOST_LOOPBACK, ROUTE_DNS_FORWARDER, ROUTE_SERVICE } from "./table";

// The services (OUT_SERVICE).
export const SVC_NONE: u32 = 0; // refused or dropped here (counted, answered)
export const SVC_REMOTE: u32 = 1;
export const SVC_GATEWAY_LOOPBACK: u32 = 2;
export const SVC_DNS: u32 = 3;
export const SVC_DNS_FORWARDER: u32 = 4;
export const SVC_DNS_TCP: u32 = 5;
export const SVC_TLS: u32 = 6;
export const SVC_DOT: u32 = 7;
export const SVC_DENY_PAGE: u32 = 8;

const LOOP4: u32 = 0x0100007f; // 127.0.0.1 in network order, read as a little-endian u32

/**
 * Where the new flow in hand goes (key at KEY_SCRATCH, the packet noted in PKT_*): `proto` and
 * `family` are the guest's, `toGateway` whether it addressed the gateway, `dport` the remote port
 * (0 for ICMP echo). Returns the service (SVC_NONE: refused, counted and answered already); the
 * route, dial address and port are at OUT_*, read by outDial / outPort and recorded by
 * outboundRecord.
 */
export function outbound(proto: u32, family: u32, toGateway: bool, dport: u32): u32 {
  store<u32>(OUT_PROTO, proto);
  const intercept = load<u32>(CFG_DNS_INTERCEPT) != 0;
  if (proto == PROTO_UDP) {
    if (intercept && dport == 53) return decide(SVC_DNS, ROUTE_REMOTE, KEY_SCRATCH + 24, dport, toGateway);
    if (intercept && altDnsPort(proto, dport)) return refuse(proto, DNS_ALT_REFUSED, ICMP_PORT_UNREACHABLE);
    if (load<u32>(CFG_TLS_BLOCK_QUIC) && tlsPort(dport)) {
      count(DROP_QUIC);
      auditQuic(proto, family, dport);
      return SVC_NONE;
    }
    if (dport == 53 && toGateway) {
      const fwdPort = load<u32>(CFG_DNS_FWD_PORT);
      if (fwdPort == 0) return refuse(proto, DROP_DNS_NO_UPSTREAM, ICMP_NONE);
      return decide(SVC_DNS_FORWARDER, ROUTE_DNS_FORWARDER, CFG_DNS_FWD_IP, fwdPort, true);
    }
  } else if (proto == PROTO_TCP) {
    if (intercept && altDnsPort(proto, dport)) return refuse(proto, DNS_ALT_REFUSED, ICMP_NONE);
    // With interception, DNS over TCP to any resolver goes to the orchestrator's listener, which
    // learns the resolver the guest addressed from the redirect preamble.
    if (dport == 53 && (toGateway || intercept)) {
      const fwdPort = load<u32>(CFG_DNS_FWD_PORT);
      if (fwdPort == 0) return refuse(proto, DROP_DNS_NO_UPSTREAM, ICMP_NONE);
      return decide(SVC_DNS_TCP, ROUTE_SERVICE, CFG_DNS_FWD_IP, fwdPort, toGateway);
    }
    // TLS interception: to the orchestrator's proxy, which learns the original destination from
    // the preamble. Policy judges that destination, as for any flow; DNS to the gateway over TLS
    // (DoT) is the gateway's own service, whatever the policy says of Host (the reference's
    // strict setup denies TCP/853 "to anything except the gateway").
    const dot = dport == 853 && load<u32>(CFG_TLS_PROXY_PORT) != 0;
    if (dot || tlsPort(dport)) {
      count(TLS_REDIRECTED);
      return decide(dot ? SVC_DOT : SVC_TLS, ROUTE_SERVICE, CFG_TLS_PROXY_IP, load<u32>(CFG_TLS_PROXY_PORT), toGateway && dot);
    }
  }
  if (toGateway) {
    // Anything else to the gateway is Group Host: the host's loopback, on the port addressed.
    store<u64>(OUT_LOOPBACK, 0);
    if (family == 4) { store<u32>(OUT_LOOPBACK + 8, 0xffff0000); store<u32>(OUT_LOOPBACK + 12, LOOP4); }
    else store<u64>(OUT_LOOPBACK + 8, 0x0100000000000000);
    return decide(SVC_GATEWAY_LOOPBACK, ROUTE_HOST_LOOPBACK, OUT_LOOPBACK, dport, false);
  }
  return decide(SVC_REMOTE, ROUTE_REMOTE, KEY_SCRATCH + 24, dport, false);
}

/**
 * May the new flow in hand exist (policy, pins, the connection limit)? Its creator asks once,
 * when it is about to make the flow. On refusal everything is counted and answered already; a
 * denial answered by the deny page is admitted, now bound for the deny page.
 */
export function outboundAdmit(): bool {
  const gateway = load<u32>(OUT_GATEWAY) != 0;
  if (gateway && load<u32>(OUT_SERVICE) == SVC_DNS) return true; // the gateway's resolver: no flow
  const proto = load<u32>(OUT_PROTO);
  const admitted = admitNewFlow(proto, <u32>load<u8>(KEY_SCRATCH, 1), <u32>load<u16>(KEY_SCRATCH, 6), gateway);
  if (admitted == ADMIT_REFUSED) return false;
  if (admitted == ADMIT_DENY_PAGE) decide(SVC_DENY_PAGE, ROUTE_SERVICE, CFG_TLS_PROXY_IP, load<u32>(CFG_DENY_PROXY_PORT), false);
  return true;
}

/** Record the decision in the new flow `rec` (flowInsert made it). */
export function outboundRecord(rec: usize): void {
  flowToRemote(rec, <u8>load<u32>(OUT_ROUTE), outDial(), outPort());
  // The deny page learns the deciding rule from the preamble (layout.ts, PRE_ADMIT_NAME).
  if (load<u32>(OUT_SERVICE) == SVC_DENY_PAGE) store<u32>(rec, load<u32>(DENY_RULE), F_ADMIT_NAME);
}

/** The decided dial address (16 bytes). */
@inline export function outDial(): usize {
  return <usize>load<u32>(OUT_DIAL);
}

/** The decided dial port. */
@inline export function outPort(): u32 {
  return load<u32>(OUT_PORT);
}

@inline function decide(service: u32, route: u8, dial: usize, port: u32, gateway: bool): u32 {
  store<u32>(OUT_SERVICE, service);
  store<u32>(OUT_ROUTE, route);
  store<u32>(OUT_DIAL, <u32>dial);
  store<u32>(OUT_PORT, port);
  store<u32>(OUT_GATEWAY, gateway ? 1 : 0);
  return service;
}

/** Refuse the packet in hand: counted under `counter`, answered as refusePacket does. */
function refuse(proto: u32, counter: i32, icmp: u32): u32 {
  count(counter);
  refusePacket(proto, icmp);
  return SVC_NONE;
}

/**
 * DNS over other transports (DoQ UDP/853, mDNS 5353, LLMNR 5355, NetBIOS-NS 137; DoT TCP/853
 * unless the TLS proxy terminates it) bypasses the interceptor: refused (DESIGN §7).
 */
@inline function altDnsPort(proto: u32, dport: u32): bool {
  if (dport == 853) return proto == PROTO_UDP || load<u32>(CFG_TLS_PROXY_PORT) == 0;
  return proto == PROTO_UDP && (dport == 5353 || dport == 5355 || dport == 137);
}
