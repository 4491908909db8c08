// mint-worker.ts — a thread of the leaf-minting pool (piscina; ca.ts, contextForAsync): mints one
// leaf certificate per task, signed with the CA key the task names (kept, parsed once).
import { createPrivateKey, type KeyObject } from "node:crypto";
import { mintLeaf, type MintTask } from "./ca.js";

const keys = new Map<string, KeyObject>();

export default function mint(task: MintTask): string {
  let key = keys.get(task.caKeyPem);
  if (!key) keys.set(task.caKeyPem, (key = createPrivateKey(task.caKeyPem)));
  return mintLeaf(task, key);
}
