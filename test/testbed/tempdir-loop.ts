// tempdir-loop.ts — makes janitor-registered temporary directories in `dir` (argv[2]) as fast as
// it can, never removing one, until it is killed: lifecycle.test.ts kills it at an arbitrary
// instant and checks that the janitor removed every one (none made but not yet registered).
import { join } from "node:path";
import { registeredTempDir } from "../../orchestrator/src/sandbox/guard.js";

const dir = process.argv[2]!;
for (let made = 1; made <= 20000; made++) {
  registeredTempDir(join(dir, "moat-loop-"));
  if (made === 1) process.stdout.write("up\n");
}
setTimeout(() => {}, 60000); // at most 20000, then wait to be killed
