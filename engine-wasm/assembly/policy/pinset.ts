// pinset.ts — which names this sandbox's DNS answers bound to which addresses (DESIGN §6, §7).
//
// Until the DNS interceptor fills it, the pin set is empty and domain rules match nothing.
import { } from "../layout";

/** True when `addr` is pinned, unexpired or in use, to name `nameId` (or a name under it). */
export function pinMatches(addr: usize, nameId: u32): bool {
  return false;
}
