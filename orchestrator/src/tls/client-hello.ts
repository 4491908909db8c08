// client-hello.ts — read what the TLS proxy must know before it decides (RFC 8446 §4.1.2, RFC 6066
// §3 server_name, RFC 7301 ALPN) from the first bytes a client sends, without consuming them: the
// bytes are replayed afterwards to the real server (bypass) or to moat's own TLS server.
//
// Bounded: a ClientHello may span several records, but never more than MAX_HELLO bytes in all;
// anything malformed is reported as such (the proxy closes the connection and counts it).

export const MAX_HELLO = 16384 + 5 * 4;

export type HelloResult =
  | { kind: "more" } // not complete yet: read more
  | { kind: "bad"; reason: string } // not a TLS ClientHello, or malformed
  | { kind: "hello"; sni: string | undefined; alpn: string[]; bytes: number };

/** Parse a ClientHello from the start of `b` (records of type handshake). */
export function parseClientHello(b: Buffer): HelloResult {
  // Reassemble the handshake message from the records seen so far.
  const parts: Buffer[] = [];
  let off = 0;
  let have = 0;
  let need = -1; // handshake message length (header included), once known
  while (need < 0 || have < need) {
    if (off + 5 > b.length) return b.length > MAX_HELLO ? { kind: "bad", reason: "too long" } : { kind: "more" };
    if (b[off] !== 22) return { kind: "bad", reason: off === 0 ? "not a TLS handshake" : "a ClientHello interrupted by another record" };
    if (b[off + 1] !== 3) return { kind: "bad", reason: "not TLS" };
    const len = b.readUInt16BE(off + 3);
    if (len === 0 || len > 16384 + 256) return { kind: "bad", reason: "a record of impossible length" };
    if (off + 5 + len > b.length) return off + 5 + len > MAX_HELLO ? { kind: "bad", reason: "too long" } : { kind: "more" };
    parts.push(b.subarray(off + 5, off + 5 + len));
    have += len;
    off += 5 + len;
    if (need < 0 && have >= 4) {
      const h = Buffer.concat(parts);
      if (h[0] !== 1) return { kind: "bad", reason: "the first handshake message is not a ClientHello" };
      need = 4 + h.readUIntBE(1, 3);
      if (need > MAX_HELLO) return { kind: "bad", reason: "too long" };
    }
  }
  const m = Buffer.concat(parts).subarray(4, need);
  try {
    const out = fields(m);
    return { kind: "hello", ...out, bytes: off };
  } catch (e) {
    return { kind: "bad", reason: (e as Error).message };
  }
}

function fields(m: Buffer): { sni: string | undefined; alpn: string[] } {
  let p = 2 + 32; // legacy_version, random
  const need = (n: number) => {
    if (p + n > m.length) throw new Error("truncated ClientHello");
  };
  need(1);
  p += 1 + m[p]!; // session id
  need(2);
  p += 2 + m.readUInt16BE(p); // cipher suites
  need(1);
  p += 1 + m[p]!; // compression methods
  let sni: string | undefined;
  let alpn: string[] = [];
  if (p === m.length) return { sni, alpn }; // no extensions
  need(2);
  const end = p + 2 + m.readUInt16BE(p);
  p += 2;
  if (end > m.length) throw new Error("truncated extensions");
  while (p < end) {
    need(4);
    const type = m.readUInt16BE(p);
    const len = m.readUInt16BE(p + 2);
    p += 4;
    need(len);
    const ext = m.subarray(p, p + len);
    p += len;
    if (type === 0 && ext.length >= 2) {
      // server_name: list of (type, name); the host_name entry (type 0).
      let q = 2;
      while (q + 3 <= ext.length) {
        const t = ext[q]!;
        const l = ext.readUInt16BE(q + 1);
        if (q + 3 + l > ext.length) throw new Error("truncated server_name");
        if (t === 0) {
          const name = ext.toString("latin1", q + 3, q + 3 + l).toLowerCase().replace(/\.$/, "");
          if (!/^[a-z0-9_.-]{1,253}$/.test(name)) throw new Error("a server_name that is not a host name");
          sni = name;
        }
        q += 3 + l;
      }
    } else if (type === 16 && ext.length >= 2) {
      alpn = [];
      let q = 2;
      while (q < ext.length) {
        const l = ext[q]!;
        if (l === 0 || q + 1 + l > ext.length) throw new Error("a malformed ALPN list");
        alpn.push(ext.toString("latin1", q + 1, q + 1 + l));
        q += 1 + l;
      }
    }
  }
  return { sni, alpn };
}
