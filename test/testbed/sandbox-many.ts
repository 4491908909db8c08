// sandbox-many.ts — create N sandboxes in one process, then destroy them all: an embedder's
// fleet. Prints "created N, destroyed N"; Node's warnings (e.g. MaxListenersExceeded) reach
// stderr as usual.
//   node sandbox-many.js N
import { NetnsSandbox } from "../../orchestrator/src/index.js";

const n = Number(process.argv[2] ?? 12);
const boxes: NetnsSandbox[] = [];
for (let i = 0; i < n; i++) boxes.push(await NetnsSandbox.create({ dnsForward: "none" }));
await Promise.all(boxes.map((b) => b.destroy()));
process.stdout.write(`created ${boxes.length}, destroyed ${boxes.length}\n`);
