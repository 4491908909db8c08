// sandbox-api.ts — run() through the library, in either kind of sandbox: prints one JSON line per
// command, {"status", "stdout", "stderr"}, then destroys the sandbox.
//   node sandbox-api.js [--vm] [--name NAME] -- '["CMD", "ARG"]' ...   (each argument one command, as a JSON array)
import { PassThrough } from "node:stream";
import { NetnsSandbox, VmSandbox, type GuestSandbox } from "../../orchestrator/src/index.js";

const argv = process.argv.slice(2);
const sep = argv.indexOf("--");
const opts = argv.slice(0, sep);
const name = opts.includes("--name") ? opts[opts.indexOf("--name") + 1] : undefined;
const sandbox: GuestSandbox = opts.includes("--vm")
  ? await VmSandbox.create({ dnsForward: "none", name, vm: { accel: "tcg", onProgress: () => {} } })
  : await NetnsSandbox.create({ dnsForward: "none", name });
const collect = () => {
  const s = new PassThrough();
  let text = "";
  s.on("data", (d: Buffer) => { text += d.toString(); });
  return { s, text: () => text };
};
for (const cmd of argv.slice(sep + 1)) {
  const out = collect();
  const err = collect();
  const status = await sandbox.run(JSON.parse(cmd) as string[], { stdout: out.s, stderr: err.s, env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin" } });
  process.stdout.write(JSON.stringify({ status, stdout: out.text(), stderr: err.text(), name: sandbox.name }) + "\n");
}
await sandbox.destroy();
