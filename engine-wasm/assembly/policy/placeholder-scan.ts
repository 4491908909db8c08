// placeholder-scan.ts — placeholders of secrets in the guest's own traffic (DESIGN §8).
//
// The value of a secret reaches only requests the TLS proxy judged; its placeholder headed
// anywhere else is a violation. The proxy and the DNS interceptor judge what passes through them;
// this scan covers the rest: the payload of every guest TCP segment (not redirected to a service),
// UDP datagram and ICMP echo request, while SECRET_FORM_COUNT > 0 (nothing is scanned without
// secrets). Every flow carries the tail of what it sent before (SECRET_CARRY_*), so a placeholder
// split across segments or datagrams is found in the one that completes it, which is not sent.
//
// Cost: one table lookup per byte (SECRET_FIRST), and a comparison only where a form could begin.

import {
  SECRET_FORM_COUNT, SECRET_FIRST, SECRET_FORMS_BASE, SECRET_FORM_BYTES, SECRET_FORM_MAX_LEN, SECRET_FORMS_MAX,
  SECRET_SCRATCH, SECRET_CARRY_BASE, SECRET_CARRY_BYTES,
} from "../layout";

@inline export function secretsActive(): bool {
  return load<u32>(SECRET_FORM_COUNT) != 0;
}

/** The first form found in `len` bytes at `p`: its index + 1, or 0. */
function scan(p: usize, len: u32): u32 {
  const n = min<u32>(load<u32>(SECRET_FORM_COUNT), <u32>SECRET_FORMS_MAX);
  for (let i: u32 = 0; i < len; i++) {
    const b = <u32>load<u8>(p + i);
    if (!load<u8>(SECRET_FIRST + b)) continue;
    for (let f: u32 = 0; f < n; f++) {
      const form = SECRET_FORMS_BASE + <usize>f * SECRET_FORM_BYTES;
      const flen = load<u32>(form);
      if (flen == 0 || i + flen > len || <u32>load<u8>(form + 8) != b) continue;
      if (memory.compare(p + i, form + 8, flen) == 0) return f + 1;
    }
  }
  return 0;
}

/** The secret index of form `f1 - 1`. */
export function secretOfForm(f1: u32): u32 {
  return load<u32>(SECRET_FORMS_BASE + <usize>(f1 - 1) * SECRET_FORM_BYTES, 4);
}

/**
 * `len` bytes at `p` that flow `idx` is about to send, after what it sent before: the form
 * found + 1, or 0 (and the flow's carry now ends with these bytes).
 */
export function secretInStream(idx: u32, p: usize, len: u32): u32 {
  const carry = SECRET_CARRY_BASE + <usize>idx * SECRET_CARRY_BYTES;
  const keep: u32 = SECRET_FORM_MAX_LEN - 1;
  let clen = min<u32>(load<u32>(carry), keep);
  // Across the boundary: the carried tail and the first bytes of this segment.
  if (clen) {
    const head = min<u32>(len, keep);
    memory.copy(SECRET_SCRATCH, carry + 4, clen);
    memory.copy(SECRET_SCRATCH + clen, p, head);
    const f = scan(SECRET_SCRATCH, clen + head);
    if (f) return f;
  }
  const f = scan(p, len);
  if (f) return f;
  // The new carry: the last `keep` bytes of (carry + segment).
  if (len >= keep) {
    memory.copy(carry + 4, p + (len - keep), keep);
    clen = keep;
  } else {
    const old = min<u32>(clen, keep - len);
    memory.copy(carry + 4, carry + 4 + (clen - old), old);
    memory.copy(carry + 4 + old, p, len);
    clen = old + len;
  }
  store<u32>(carry, clen);
  return 0;
}

/** A new flow starts with no history. */
@inline export function secretCarryReset(idx: u32): void {
  store<u32>(SECRET_CARRY_BASE + <usize>idx * SECRET_CARRY_BYTES, 0);
}
