// tap-link.ts — a TAP device in a network namespace (the default netns sandbox's NIC).
//
// One frame per read(2)/write(2), no virtio-net header (IFF_NO_PI, no IFF_VNET_HDR), so the
// kernel hands over fully checksummed frames. native-vmm creates the device inside the
// namespace from a helper thread and reads/writes it straight into/out of ring slots.
import type { Link, TapLinkSpec } from "./link.js";
import type { NativeDatapath, NativeModule } from "../native.js";
import { MoatError } from "../errors.js";

export class TapLink implements Link {
  private constructor(readonly spec: TapLinkSpec, private readonly fd: number) {}

  static open(spec: TapLinkSpec, native: NativeModule): TapLink {
    try {
      return new TapLink(spec, native.openTap(spec.netnsPath, spec.ifname, spec.create ?? true));
    } catch (cause) {
      const msg = cause instanceof Error ? cause.message : String(cause);
      throw new MoatError("ERR_LINK", `tap link ${spec.ifname} in ${spec.netnsPath || "this namespace"}: ${msg}`, undefined, { cause });
    }
  }

  attach(datapath: NativeDatapath): void {
    datapath.attachTap(this.fd);
  }
}
