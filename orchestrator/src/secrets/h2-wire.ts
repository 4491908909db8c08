// h2-wire.ts — what both HTTP/2 filters write on the wire (RFC 9113 §4.1 frame headers, RFC 7541
// literals): the request side (http2-filter.ts) and the response side (http2-response-filter.ts)
// re-encode header blocks the same way, never touching either peer's dynamic table.

/** A frame header: 24-bit length, type, flags, stream id. */
export function frameHeader(len: number, type: number, flags: number, stream: number): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(len, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(stream, 5);
  return h;
}

/** A header block of literals never indexed, with literal names (RFC 7541 §6.2.3): no table state. */
export function encodeNeverIndexed(headers: readonly { name: string; value: string }[]): Buffer {
  const parts: Buffer[] = [];
  const str = (s: string) => {
    const b = Buffer.from(s, "latin1");
    return Buffer.concat([integer(b.length, 7, 0x00), b]);
  };
  for (const h of headers) parts.push(Buffer.from([0x10]), str(h.name), str(h.value));
  return Buffer.concat(parts);
}

/** An HPACK integer with an N-bit prefix (RFC 7541 §5.1), `first` holding the bits above it. */
export function integer(n: number, bits: number, first: number): Buffer {
  const max = (1 << bits) - 1;
  if (n < max) return Buffer.from([first | n]);
  const out = [first | max];
  n -= max;
  while (n >= 128) { out.push((n & 127) | 128); n = Math.floor(n / 128); }
  out.push(n);
  return Buffer.from(out);
}
