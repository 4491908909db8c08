// bytes.ts — network-order loads and stores on the shared memory. Bytes only, no state.

@inline export function rd16(p: usize): u32 {
  return <u32>bswap<u16>(load<u16>(p));
}
@inline export function wr16(p: usize, v: u32): void {
  store<u16>(p, bswap<u16>(<u16>v));
}
@inline export function rd32(p: usize): u32 {
  return bswap<u32>(load<u32>(p));
}
@inline export function wr32(p: usize, v: u32): void {
  store<u32>(p, bswap<u32>(v));
}
/** Copy 6 bytes (a MAC address). */
@inline export function copyMac(dst: usize, src: usize): void {
  store<u32>(dst, load<u32>(src));
  store<u16>(dst + 4, load<u16>(src + 4));
}
/** Copy 16 bytes (an IPv6 address, or a v4-mapped one). */
@inline export function copy16(dst: usize, src: usize): void {
  v128.store(dst, v128.load(src));
}
@inline export function eq16(a: usize, b: usize): bool {
  return !v128.any_true(v128.xor(v128.load(a), v128.load(b)));
}
/** The family of a 16-byte address: 4 for ::ffff:a.b.c.d, else 6. */
@inline export function familyOf(addr: usize): u32 {
  return load<u64>(addr) == 0 && load<u32>(addr + 8) == 0xffff0000 ? 4 : 6;
}
/** Write ::ffff:a.b.c.d for the IPv4 address at src (4 bytes, network order). */
@inline export function mapV4(dst: usize, src: usize): void {
  store<u64>(dst, 0);
  store<u32>(dst + 8, 0xffff0000);
  store<u32>(dst + 12, load<u32>(src));
}
