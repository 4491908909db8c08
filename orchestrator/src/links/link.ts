// link.ts — how frames come and go between a guest's NIC and an engine (DESIGN §3).
//
// A link is opened inside the engine's worker and attached to its data path: from then on the
// link's frames land in the RX ring and the TX ring drains into it, in native code, without the
// JavaScript side touching a frame (native-vmm/src/link.h is the seam on that side).
//   tap         a TAP device in a network namespace (namespace sandboxes, `moat serve --tap`)
//   stream      a unix socket a VMM connects to: QEMU -netdev stream, 4-byte BE length + frame
//   vhost-user  a unix socket a VMM connects to: virtqueues in the guest's shared memory
//   attach      an interface whose other side someone else holds (the TAP Firecracker opened, a
//               veth end), served from its kernel side with an AF_PACKET socket (`moat serve --attach`)
import type { NativeDatapath, NativeModule } from "../native.js";
import { MoatError } from "../errors.js";
import { layout as L } from "../engine/layout.js";

/** Where a link comes from: serialisable, so it can travel to the worker in workerData. */
export type LinkSpec = TapLinkSpec | StreamLinkSpec | VhostUserLinkSpec | AttachLinkSpec;

export interface TapLinkSpec {
  kind: "tap";
  /** Network namespace the device is created in (a path such as /run/netns/NAME), "" = ours. */
  netnsPath: string;
  /** Interface name inside that namespace. */
  ifname: string;
  /** Create the device when it does not exist (default true); false: a missing one is an error. */
  create?: boolean;
}

/** moat listens at `path`; the VMM (QEMU `-netdev stream,server=off,addr.type=unix,addr.path=…`)
 * connects, and may disconnect and reconnect. */
export interface StreamLinkSpec {
  kind: "stream";
  path: string;
}

/** moat listens at `path` as a vhost-user-net backend; the VMM (QEMU `-netdev vhost-user`,
 * cloud-hypervisor) connects, with the guest's memory shared. */
export interface VhostUserLinkSpec {
  kind: "vhost-user";
  path: string;
  /** The MTU the guest is offered (default: the gateway's). */
  mtu?: number;
}

/** An existing interface of moat's network namespace whose other side someone else holds: a TAP
 * device a VMM opened (Firecracker's `host_dev_name`), or a veth end. Frames are read and sent on
 * its kernel side (native-vmm/src/packet.cc); it is brought up, never created. */
export interface AttachLinkSpec {
  kind: "attach";
  ifname: string;
  /** The gateway's MTU (at most the interface's; set by the gateway). */
  mtu?: number;
}

export interface Link {
  readonly spec: LinkSpec;
  /** Hand the link's frames to the data path (which takes ownership of any fd). */
  attach(datapath: NativeDatapath): void;
}

export async function openLink(spec: LinkSpec, native: NativeModule): Promise<Link> {
  switch (spec.kind) {
    case "tap":
      return tapLink(spec, native);
    case "stream":
      return socketLink(spec, (dp) => dp.attachStream(spec.path));
    case "vhost-user":
      return socketLink(spec, (dp) => dp.attachVhostUser(spec.path, spec.mtu ?? L.MTU_DEFAULT));
    case "attach":
      return {
        spec,
        attach(datapath: NativeDatapath): void {
          try {
            datapath.attachPacket(spec.ifname, spec.mtu ?? L.MTU_ETHERNET);
          } catch (cause) {
            const msg = cause instanceof Error ? cause.message : String(cause);
            throw new MoatError("ERR_LINK", `attach link ${spec.ifname}: ${msg}`, undefined, { cause });
          }
        },
      };
  }
}

/**
 * A TAP device in a network namespace (the default netns sandbox's NIC). One frame per
 * read(2)/write(2); a device moat creates also has a virtio-net header (IFF_VNET_HDR) and
 * checksum offload only (TUN_F_CSUM): the guest's kernel leaves its TCP/UDP checksums to moat,
 * which does not verify them, and never hands over a frame beyond the MTU (an existing device,
 * `--tap`, is opened without them: they would outlive moat on it). native-vmm creates the device
 * inside the namespace from a helper thread and reads/writes it straight into/out of ring slots.
 */
function tapLink(spec: TapLinkSpec, native: NativeModule): Link {
  let fd: number;
  try {
    fd = native.openTap(spec.netnsPath, spec.ifname, spec.create ?? true);
  } catch (cause) {
    const msg = cause instanceof Error ? cause.message : String(cause);
    throw new MoatError("ERR_LINK", `tap link ${spec.ifname} in ${spec.netnsPath || "this namespace"}: ${msg}`, undefined, { cause });
  }
  return {
    spec,
    attach(datapath: NativeDatapath): void {
      datapath.attachTap(fd);
    },
  };
}

/** A link whose VMM connects to a unix socket that native-vmm listens on (stream, vhost-user). */
function socketLink(spec: StreamLinkSpec | VhostUserLinkSpec, listen: (datapath: NativeDatapath) => void): Link {
  return {
    spec,
    attach(datapath: NativeDatapath): void {
      try {
        listen(datapath);
      } catch (cause) {
        const msg = cause instanceof Error ? cause.message : String(cause);
        throw new MoatError("ERR_LINK", `${spec.kind} link at ${spec.path}: ${msg}`, "check that the directory exists and is writable", { cause });
      }
    },
  };
}
