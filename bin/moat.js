#!/usr/bin/env -S node --
// The `moat` command. The implementation is compiled TypeScript (orchestrator/src/cli/main.ts).
// The `--` after node: Node 20 and 22 otherwise read a script argument `--env-file FILE` as their
// own option (nodejs/node#54232) and load FILE into moat's environment, or exit when it is absent.
import { main } from "../dist/orchestrator/src/cli/main.js";

process.exitCode = await main(process.argv.slice(2));
