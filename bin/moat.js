#!/usr/bin/env node
// The `moat` command. The implementation is compiled TypeScript (orchestrator/src/cli/main.ts).
import { main } from "../dist/orchestrator/src/cli/main.js";

process.exitCode = await main(process.argv.slice(2));
