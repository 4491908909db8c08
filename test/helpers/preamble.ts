// preamble.ts — the engine's redirect preamble (engine-wasm/assembly/layout.ts, PRE_*) as
// native-vmm writes it on a redirected connection, for tests of the services that read it.
import { layout as L } from "../../orchestrator/src/engine/layout.js";

/** A preamble made with `token`, naming `addr` (4 bytes for IPv4, 16 for IPv6) and `port`. */
export function redirectPreamble(token: Buffer, family: 4 | 6, addr: number[], port: number, admitNameId = 0): Buffer {
  const b = Buffer.alloc(L.REDIRECT_PREAMBLE_BYTES);
  b.write("moat", L.PRE_MAGIC, "latin1");
  b[L.PRE_VERSION] = L.REDIRECT_PREAMBLE_VERSION;
  b[L.PRE_FAMILY] = family;
  b.writeUInt16BE(port, L.PRE_PORT);
  Buffer.from(family === 4 ? [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ...addr] : addr).copy(b, L.PRE_ADDR);
  token.copy(b, L.PRE_TOKEN);
  b.writeUInt32BE(admitNameId, L.PRE_ADMIT_NAME);
  return b;
}
