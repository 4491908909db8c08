// native.ts — loading native-vmm (the Node-API addon built by `npm install`).
import { createRequire } from "node:module";
import { MoatError } from "./errors.js";

export interface NativeDatapath {
  attachTap(fd: number): void;
  /** Listen at a unix socket path for a VMM speaking the stream framing (4-byte BE length + frame). */
  attachStream(path: string): void;
  /** Listen at a unix socket path as a vhost-user-net backend offering `mtu` (native-vmm/src/vhost-user.cc). */
  attachVhostUser(path: string, mtu: number): void;
  /** Serve interface `ifname` (ours, existing) from its kernel side: AF_PACKET (native-vmm/src/packet.cc). */
  attachPacket(ifname: string, mtu: number): void;
  /** Record the attached link's frames in a pcap file (native-vmm/src/link-middleware.h); maxBytes 0 = no bound. */
  capturePcap(path: string, maxBytes: number): void;
  /** Inject faults at the attached link (tests). */
  injectFaults(spec: { drop?: number; dup?: number; reorder?: number; delay?: number; corrupt?: number; delayMs?: number; blackoutMs?: number; seed?: number; toEngine?: boolean; toGuest?: boolean }): void;
  start(onReady: () => void): void;
  pump(): number;
  flush(): number;
  liveSockets(): number;
  /** Published ports (datapath.cc): the port bound, or -errno. `dualStack`: an IPv6 listener takes IPv4 too. */
  listen(id: number, protocol: "tcp" | "udp", family: 4 | 6, addr: Uint8Array, port: number, dualStack: boolean): number;
  unlisten(id: number): void;
  /** Upstream DNS for the worker's interceptor (datapath.cc, "upstream DNS"): a connected UDP socket's id, or -errno. */
  dnsOpen(family: 4 | 6, addr: Uint8Array, port: number): number;
  dnsClose(id: number): void;
  /** 0, or -errno. */
  dnsSend(id: number, data: Uint8Array): number;
  /** Datagrams read since the last call, as [u16 id][u16 len][bytes] entries (len 0xffff: [u16 errno]); the bytes written. */
  dnsTake(out: Uint8Array): number;
  /** Close everything; returns fds whose close was deferred (a TAP's is slow): close them with fs.close. */
  close(): number[];
}

/** A network interface of this process's namespace, as native-vmm sees it. */
export interface InterfaceInfo {
  index: number;
  mtu: number;
  /** IFF_UP; IFF_RUNNING (a TAP: up and held by a process; a veth: its peer up). */
  up: boolean;
  running: boolean;
  /** An Ethernet interface (ARPHRD_ETHER): a TAP or veth is, a TUN device is not. */
  ethernet: boolean;
  /** The driver ethtool reports: "tun" (TAP and TUN devices), "veth", ... */
  driver: string;
}

export interface NativeModule {
  /** create false: attach to an existing TAP device only (a missing one is an error). */
  openTap(netnsPath: string, ifname: string, create: boolean): number;
  /** Throws (with errno; ENODEV: no such interface) when it cannot be looked at. */
  interfaceInfo(ifname: string): InterfaceInfo;
  Datapath: new (memory: Uint8Array) => NativeDatapath;
}

let cached: NativeModule | undefined;

export function loadNative(): NativeModule {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  // MOAT_NATIVE_ADDON: another build of the same addon (the sanitized one, native-vmm/build-asan.mjs).
  const path = process.env.MOAT_NATIVE_ADDON || new URL("../../../native-vmm/build/Release/moat_native.node", import.meta.url).pathname;
  try {
    cached = require(path) as NativeModule;
  } catch (cause) {
    throw new MoatError("ERR_ENGINE", `cannot load the native addon at ${path}: ${(cause as Error).message.split("\n")[0]}`,
      "build it: `npm rebuild moat` where moat is installed (needs g++, make and python3), or `npm run build:native` in a checkout", { cause });
  }
  return cached;
}
