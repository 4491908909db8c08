// link.ts — how frames come and go between a guest's NIC and an engine (DESIGN §3).
//
// A link is opened inside the engine's worker and attached to its data path: from then on the
// link's frames land in the RX ring and the TX ring drains into it, in native code, without the
// JavaScript side touching a frame. One file per kind of link; `tap` is the first.
import type { NativeDatapath, NativeModule } from "../native.js";

/** Where a link comes from: serialisable, so it can travel to the worker in workerData. */
export type LinkSpec = TapLinkSpec;

export interface TapLinkSpec {
  kind: "tap";
  /** Network namespace the device is created in (a path such as /run/netns/NAME), "" = ours. */
  netnsPath: string;
  /** Interface name inside that namespace. */
  ifname: string;
}

export interface Link {
  readonly spec: LinkSpec;
  /** Hand the link's frames to the data path (which takes ownership of any fd). */
  attach(datapath: NativeDatapath): void;
}

export async function openLink(spec: LinkSpec, native: NativeModule): Promise<Link> {
  switch (spec.kind) {
    case "tap": {
      const { TapLink } = await import("./tap-link.js");
      return TapLink.open(spec, native);
    }
  }
}
