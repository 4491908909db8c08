// wire.ts — the few DNS wire-format operations the interceptor does on raw bytes: read the
// header and the question, and build the messages moat answers itself (REFUSED, FORMERR, ...,
// and truncated answers). Everything else is decoded with dns-packet.
//
// Names. dns-packet joins labels with "." as it finds them, so a single label "a.example" and the
// two labels "a", "example" decode alike. Policy must not be fooled that way, so the question name
// is read here into a canonical text: labels lower-cased (ASCII only, as DNS compares), joined by
// ".", and inside a label every byte that is not a printable ASCII character, and "." and "\"
// themselves, written as \DDD (decimal, RFC 1035 master-file style). In that text a "." always
// separates labels, so `name === d || name.endsWith("." + d)` is an exact label-wise test against a
// normalized domain `d` (which never contains "\"). The root name is "".

export const HEADER_BYTES = 12;

export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
export const TYPE = { A: 1, CNAME: 5, AAAA: 28, OPT: 41, IXFR: 251, AXFR: 252 } as const;

const FLAG_QR = 0x8000;
const FLAG_TC = 0x0200;
const FLAG_RD = 0x0100;
const FLAG_RA = 0x0080;
const FLAG_CD = 0x0010;

export interface Header {
  id: number;
  flags: number;
  qr: boolean;
  opcode: number;
  tc: boolean;
  rcode: number;
  qdcount: number;
  ancount: number;
  nscount: number;
  arcount: number;
}

/** The 12-byte header, or null when `msg` is shorter than that. */
export function readHeader(msg: Buffer): Header | null {
  if (msg.length < HEADER_BYTES) return null;
  const flags = msg.readUInt16BE(2);
  return {
    id: msg.readUInt16BE(0),
    flags,
    qr: (flags & FLAG_QR) !== 0,
    opcode: (flags >> 11) & 0xf,
    tc: (flags & FLAG_TC) !== 0,
    rcode: flags & 0xf,
    qdcount: msg.readUInt16BE(4),
    ancount: msg.readUInt16BE(6),
    nscount: msg.readUInt16BE(8),
    arcount: msg.readUInt16BE(10),
  };
}

export interface QuestionInfo {
  /** Canonical name (see the top of this file): lower case, no final dot, "" for the root. */
  name: string;
  type: number;
  klass: number;
  /** Byte range of the question in the message it was read from. */
  start: number;
  end: number;
}

/**
 * Read the name at `offset` into canonical text; returns it and where the message continues after
 * it. Throws on anything malformed. Compression pointers must point backwards, after the header
 * and strictly before the label that points (so no pointer can loop), as every server writes them.
 */
export function readName(msg: Buffer, offset: number): { name: string; end: number } {
  let name = "";
  let pos = offset;
  let end = -1; // where the message continues after the name (set at the first pointer)
  let limit = offset; // pointers must land strictly before this
  let wire = 1;
  for (;;) {
    if (pos >= msg.length) throw new Error("name runs past the end of the message");
    const len = msg[pos]!;
    if (len === 0) {
      pos += 1;
      break;
    }
    if ((len & 0xc0) === 0xc0) {
      if (pos + 1 >= msg.length) throw new Error("name runs past the end of the message");
      const target = msg.readUInt16BE(pos) & 0x3fff;
      if (target < HEADER_BYTES || target >= limit) throw new Error("bad compression pointer");
      if (end < 0) end = pos + 2;
      limit = target;
      pos = target;
      continue;
    }
    if ((len & 0xc0) !== 0) throw new Error("bad label type");
    if (pos + 1 + len > msg.length) throw new Error("label runs past the end of the message");
    wire += len + 1;
    if (wire > 255) throw new Error("name longer than 255 bytes");
    const label = labelText(msg, pos + 1, pos + 1 + len);
    name = name === "" ? label : `${name}.${label}`;
    pos += 1 + len;
  }
  return { name, end: end < 0 ? pos : end };
}

/**
 * Read the question at `offset` (12 for the first). Throws on anything malformed. Compression
 * pointers must point backwards to a name start after the header and before this name: a query's
 * first question can hold none, and no pointer can loop.
 */
export function readQuestion(msg: Buffer, offset = HEADER_BYTES): QuestionInfo {
  const { name, end } = readName(msg, offset);
  if (end + 4 > msg.length) throw new Error("question runs past the end of the message");
  return { name, type: msg.readUInt16BE(end), klass: msg.readUInt16BE(end + 2), start: offset, end: end + 4 };
}

/** A record of an answer, as the interceptor judges it. */
export interface ScannedRecord {
  /** 1 answer, 2 authority, 3 additional. */
  section: 1 | 2 | 3;
  name: string;
  type: number;
  klass: number;
  ttl: number;
  /** A/AAAA: the address (dotted quad; IPv6 in RFC 5952 text); CNAME: the target's canonical name; else null. */
  data: string | null;
}

/**
 * The records of a DNS message, read without decoding what the interceptor never looks at (every
 * name in canonical text, addresses and CNAME targets only). Throws on anything malformed: a
 * message that does not parse is not passed to the guest.
 */
export function scanAnswer(msg: Buffer): { rcode: number; records: ScannedRecord[] } {
  const h = readHeader(msg);
  if (!h) throw new Error("shorter than a DNS header");
  let pos = HEADER_BYTES;
  for (let i = 0; i < h.qdcount; i++) pos = readQuestion(msg, pos).end;
  const records: ScannedRecord[] = [];
  const counts = [h.ancount, h.nscount, h.arcount];
  // Most owner names are one pointer to a name read already (the question's): read once.
  const seen = new Map<number, string>();
  for (let sec = 0; sec < 3; sec++) {
    for (let i = 0; i < counts[sec]!; i++) {
      const ptr = pos + 1 < msg.length && (msg[pos]! & 0xc0) === 0xc0 ? msg.readUInt16BE(pos) & 0x3fff : -1;
      const known = ptr >= 0 && ptr < pos ? seen.get(ptr) : undefined;
      const n = known !== undefined ? { name: known, end: pos + 2 } : readName(msg, pos);
      if (ptr >= 0 && known === undefined) seen.set(ptr, n.name);
      pos = n.end;
      if (pos + 10 > msg.length) throw new Error("record runs past the end of the message");
      const type = msg.readUInt16BE(pos);
      const klass = msg.readUInt16BE(pos + 2);
      const ttl = msg.readUInt32BE(pos + 4);
      const rdlen = msg.readUInt16BE(pos + 8);
      const rd = pos + 10;
      if (rd + rdlen > msg.length) throw new Error("record data runs past the end of the message");
      let data: string | null = null;
      if (type === TYPE.A && rdlen === 4) data = `${msg[rd]}.${msg[rd + 1]}.${msg[rd + 2]}.${msg[rd + 3]}`;
      else if (type === TYPE.AAAA && rdlen === 16) data = ipv6Text(msg, rd);
      else if (type === TYPE.CNAME) data = readName(msg, rd).name;
      else if (type === TYPE.A || type === TYPE.AAAA) throw new Error(`an address record of ${rdlen} bytes`);
      records.push({ section: (sec + 1) as 1 | 2 | 3, name: n.name, type, klass, ttl, data });
      pos = rd + rdlen;
    }
  }
  return { rcode: h.rcode, records };
}

/** RFC 5952 text of the 16 bytes at `at` (the longest run of two or more zero groups as "::"). */
function ipv6Text(msg: Buffer, at: number): string {
  const g: number[] = [];
  for (let i = 0; i < 8; i++) g.push(msg.readUInt16BE(at + 2 * i));
  let best = -1, bestLen = 1;
  for (let i = 0; i < 8;) {
    if (g[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) { best = i; bestLen = j - i; }
    i = j;
  }
  const hex = (from: number, to: number) => g.slice(from, to).map((x) => x.toString(16)).join(":");
  return best < 0 ? hex(0, 8) : `${hex(0, best)}::${hex(best + bestLen, 8)}`;
}

function labelText(msg: Buffer, from: number, to: number): string {
  // Almost every label is plain ASCII without "." or "\": one slice, lower-cased.
  let plain = true;
  for (let i = from; i < to; i++) {
    const c = msg[i]!;
    if (c <= 0x20 || c >= 0x7f || c === 0x2e || c === 0x5c) { plain = false; break; }
  }
  if (plain) return msg.toString("latin1", from, to).toLowerCase();
  let s = "";
  for (let i = from; i < to; i++) {
    let c = msg[i]!;
    if (c >= 0x41 && c <= 0x5a) c += 0x20; // A-Z
    if (c > 0x20 && c < 0x7f && c !== 0x2e && c !== 0x5c) s += String.fromCharCode(c);
    else s += `\\${c.toString().padStart(3, "0")}`;
  }
  return s;
}

/** The name as people write it: "example.com.", the root as ".". */
export function displayName(name: string): string {
  return name === "" ? "." : name;
}

/**
 * An answer moat writes itself: the query's ID, opcode, RD and CD; QR and RA set; `rcode`; the
 * query's question copied byte for byte when given (else no question); every other section empty.
 */
export function localAnswer(query: Buffer, question: QuestionInfo | null, rcode: number): Buffer {
  const h = readHeader(query);
  if (!h) throw new Error("not a DNS message");
  const qlen = question ? question.end - question.start : 0;
  const out = Buffer.alloc(HEADER_BYTES + qlen);
  out.writeUInt16BE(h.id, 0);
  out.writeUInt16BE(FLAG_QR | (h.opcode << 11) | (h.flags & (FLAG_RD | FLAG_CD)) | FLAG_RA | (rcode & 0xf), 2);
  out.writeUInt16BE(question ? 1 : 0, 4);
  if (question) query.copy(out, HEADER_BYTES, question.start, question.end);
  return out;
}

/**
 * The truncated form of `answer` for a UDP guest: `answer`'s flags with TC set, the query's ID and
 * question, no records except, when given, the OPT record (RFC 6891 §7: a truncated answer to an
 * EDNS query still carries OPT).
 */
export function truncatedAnswer(query: Buffer, question: QuestionInfo, answer: Buffer, opt: Buffer | null): Buffer {
  const q = readHeader(query);
  const a = readHeader(answer);
  if (!q || !a) throw new Error("not a DNS message");
  const qlen = question.end - question.start;
  const out = Buffer.alloc(HEADER_BYTES + qlen + (opt ? opt.length : 0));
  out.writeUInt16BE(q.id, 0);
  out.writeUInt16BE(a.flags | FLAG_TC, 2);
  out.writeUInt16BE(1, 4);
  out.writeUInt16BE(opt ? 1 : 0, 10);
  query.copy(out, HEADER_BYTES, question.start, question.end);
  if (opt) opt.copy(out, HEADER_BYTES + qlen);
  return out;
}

/** A copy of `msg` with its ID replaced. */
export function withId(msg: Buffer, id: number): Buffer {
  const out = Buffer.from(msg);
  out.writeUInt16BE(id & 0xffff, 0);
  return out;
}
