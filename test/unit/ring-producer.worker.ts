// ring-producer.worker.ts — the producer thread of test/unit/ring.test.ts: pushes frames into a
// RingView over a SharedArrayBuffer and reports what it sent.
//   mode "seq":    `frames` frames of varying length (seqFrameLen), each starting with its
//                  sequence number (u32 LE) followed by xorshift bytes; token = seq, aux = len.
//                  Reports an FNV-1a checksum of every byte sent.
//   mode "frames": `count` copies of `template`, zero-padded by (i % 19) bytes (the engine's RX
//                  ring takes Ethernet padding). Reports the total bytes sent.
import { parentPort, workerData } from "node:worker_threads";
import { RingView } from "../helpers/ring.js";

export interface RingGeometryData {
  buffer: SharedArrayBuffer;
  ctrl: number;
  descBase: number;
  bufBase: number;
  slots: number;
  slotBytes: number;
}
export type ProducerData = RingGeometryData & ({ mode: "seq"; frames: number } | { mode: "frames"; count: number; template: Uint8Array });
export interface ProducerResult { sent: number; bytes: number; checksum: number; notifies: number; publishes: number; fullWaits: number }

/** Length of sequence frame `seq` in a ring of `slotBytes`-byte slots: 4 .. slotBytes. */
export function seqFrameLen(seq: number, slotBytes: number): number {
  return 4 + ((Math.imul(seq, 0x9e3779b1) >>> 0) % (slotBytes - 3));
}
export const FNV_OFFSET = 0x811c9dc5 | 0;
export const FNV_PRIME = 16777619;

const GIVE_UP_MS = 60_000;

function main(data: ProducerData): ProducerResult {
  const ring = new RingView(data.buffer, data.ctrl, data.descBase, data.bufBase, data.slots, data.slotBytes);
  const bytes = new Uint8Array(data.buffer);
  const dv = new DataView(data.buffer);
  const started = Date.now();
  let fullWaits = 0;
  const reserve = (): number => {
    let off = ring.reserve();
    while (off < 0) {
      fullWaits++;
      ring.waitForSpace(100);
      if (Date.now() - started > GIVE_UP_MS) throw new Error("producer: the consumer stopped taking frames");
      off = ring.reserve();
    }
    return off;
  };

  let total = 0;
  let h = FNV_OFFSET;
  if (data.mode === "seq") {
    let x = 0x12345678;
    for (let seq = 0; seq < data.frames; seq++) {
      const off = reserve();
      const len = seqFrameLen(seq, data.slotBytes);
      dv.setUint32(off, seq, true);
      for (let j = 4; j < len; j++) {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        bytes[off + j] = x & 255;
      }
      for (let j = 0; j < len; j++) h = Math.imul(h ^ bytes[off + j]!, FNV_PRIME);
      ring.commit(len, seq, len);
      total += len;
    }
  } else {
    const t = data.template;
    for (let i = 0; i < data.count; i++) {
      const off = reserve();
      const len = t.length + (i % 19);
      bytes.set(t, off);
      bytes.fill(0, off + t.length, off + len);
      ring.commit(len);
      total += len;
    }
  }
  ring.publish();
  return { sent: data.mode === "seq" ? data.frames : data.count, bytes: total, checksum: h >>> 0, notifies: ring.notifyCount, publishes: ring.publishCount, fullWaits };
}

if (parentPort) parentPort.postMessage(main(workerData as ProducerData));
