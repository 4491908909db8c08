// index.ts — moat as a library: what embedders import.
//
//   import { NetnsSandbox } from "moat";
//   const sandbox = await NetnsSandbox.create({ mtu: 65520 });
//   const child = sandbox.spawn(["curl", "http://example.test"]);
//   ...
//   await sandbox.destroy();
//
// The public API only: what an embedder calls, and the types of its options, results and events.
// Internals (the engine host, addressing and DNS helpers, the CLI's parsers) are not exported;
// tests and benchmarks import them by path.
export { NetnsSandbox, DEFAULT_MTU, type NetnsSandboxOptions } from "./sandbox/netns-sandbox.js";
export type { SandboxAddresses } from "./gateway/addressing.js";
export { cleanupLeftovers } from "./sandbox/cleanup.js";
export { setEngineThreads, engineWorkers, MAX_ENGINE_THREADS } from "./engine/engine-host.js";
export type { EngineCounters } from "./engine/engine-config.js";
export type { LinkSpec, TapLinkSpec, StreamLinkSpec, VhostUserLinkSpec, Link } from "./links/link.js";
export { MoatError, ConfigError, HostRequirementError, type MoatErrorCode } from "./errors.js";
export { Sandbox, SandboxBuilder, NetworkBuilder, DnsBuilder, TlsBuilder } from "./builder.js";
export type { TlsOptions } from "./tls/setup.js";
export type { TlsEvent } from "./tls/proxy.js";
export { CertificateAuthority } from "./tls/ca.js";
export { ViolationAction, type SecretSpec } from "./secrets/secrets.js";
export { Gateway, type GatewayGuest } from "./gateway/gateway.js";
export type { GatewayOptions, DnsOptions, SecretViolationEvent } from "./gateway/options.js";
export { GuestSandbox } from "./sandbox/sandbox.js";
export { VmSandbox, type VmSandboxOptions, type VmOptions, type VmRunOptions, type VmLinkKind } from "./vm/vm-sandbox.js";
export { serveGateway, type ServedGateway } from "./sandbox/serve.js";
export type { PortSpec, PublishedPort, PortProtocol } from "./gateway/ports.js";
export {
  NetworkPolicy, Rule, Destination, PortRange, GROUPS,
  type Action, type Direction, type Protocol, type Group, type NetworkPolicyShape, type DenyResponse,
} from "./model/policy.js";
export type { DenyEvent } from "./policy/audit.js";
export {
  EVENT_VERSION,
  type GatewayEvent, type GatewayEventKind, type FlowDeniedEvent, type DnsEvent, type TlsRefusedEvent,
  type SecretViolationGatewayEvent, type PortEvent, type LifecycleEvent, type LimitEvent,
} from "./gateway/events.js";
export { renderMetrics, type GatewaySample } from "./gateway/metrics.js";
export type { RateLimits, ValidLimits, BandwidthLimit, EventRateLimit } from "./gateway/limits.js";
