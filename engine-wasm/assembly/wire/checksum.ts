// checksum.ts — the Internet checksum (RFC 1071), SIMD.
//
// The one's-complement sum is byte-order independent (RFC 1071 §2(B)): we add little-endian
// 16-bit words, widening pairs into 32-bit lanes with i32x4.extadd_pairwise_i16x8_u, fold, and
// swap the two bytes once at the end. Lanes cannot overflow: each step adds at most 2 * 0xffff
// per lane, and 64 B per iteration of the 4-vector loop keeps a 64 KiB frame at 1024 steps.
// For inputs past 1 MiB the wide loop folds its accumulators every 16 KiB.

/** Sum of `len` bytes at `p` as little-endian u16 words, not folded, starting from `acc`. */
export function sumLE(p: usize, len: usize, acc: u64): u64 {
  let sum = acc;
  let a = i32x4.splat(0);
  let b = i32x4.splat(0);
  let c = i32x4.splat(0);
  let d = i32x4.splat(0);
  while (len >= 64) {
    let chunk: usize = len < 16384 ? len & ~63 : 16384;
    const end = p + chunk;
    while (p < end) {
      a = i32x4.add(a, i32x4.extadd_pairwise_i16x8_u(v128.load(p)));
      b = i32x4.add(b, i32x4.extadd_pairwise_i16x8_u(v128.load(p, 16)));
      c = i32x4.add(c, i32x4.extadd_pairwise_i16x8_u(v128.load(p, 32)));
      d = i32x4.add(d, i32x4.extadd_pairwise_i16x8_u(v128.load(p, 48)));
      p += 64;
    }
    len -= chunk;
    // Fold the four accumulators into the u64 sum (lanes are < 2^32 here).
    const s = i32x4.add(i32x4.add(a, b), i32x4.add(c, d));
    // each lane may be up to 4 * 2^30: widen before adding
    sum += <u64>(<u32>i32x4.extract_lane(s, 0)) + <u64>(<u32>i32x4.extract_lane(s, 1));
    sum += <u64>(<u32>i32x4.extract_lane(s, 2)) + <u64>(<u32>i32x4.extract_lane(s, 3));
    a = i32x4.splat(0);
    b = a;
    c = a;
    d = a;
  }
  while (len >= 8) {
    const w = load<u64>(p);
    sum += (w & 0xffff) + ((w >> 16) & 0xffff) + ((w >> 32) & 0xffff) + (w >> 48);
    p += 8;
    len -= 8;
  }
  while (len >= 2) {
    sum += <u64>load<u16>(p);
    p += 2;
    len -= 2;
  }
  if (len) sum += <u64>load<u8>(p); // odd trailing byte is the high-order byte in network order
  return sum;
}

/** Fold a little-endian word sum to 16 bits and return the checksum in network order value. */
@inline export function finish(sum: u64): u32 {
  sum = (sum & 0xffffffff) + (sum >> 32);
  sum = (sum & 0xffff) + (sum >> 16);
  sum = (sum & 0xffff) + (sum >> 16);
  sum = (sum & 0xffff) + (sum >> 16);
  const folded = <u32>sum;
  return <u32>bswap<u16>(<u16>(~folded & 0xffff));
}

/** The checksum of `len` bytes at `p`, as a value to store with wr16 (network order). */
export function checksum(p: usize, len: usize): u32 {
  return finish(sumLE(p, len, 0));
}

/**
 * Sum of a TCP/UDP pseudo-header (RFC 768 / RFC 8200 §8.1), little-endian words, for addresses
 * at src/dst (4 or 16 bytes each).
 */
export function pseudoSum(src: usize, dst: usize, addrLen: usize, proto: u32, l4len: u32): u64 {
  let s = sumLE(src, addrLen, 0);
  s = sumLE(dst, addrLen, s);
  // proto and length as big-endian 16-bit/32-bit words, added as little-endian words
  s += <u64>bswap<u16>(<u16>proto);
  s += <u64>bswap<u16>(<u16>(l4len & 0xffff)) + <u64>bswap<u16>(<u16>(l4len >> 16));
  return s;
}
