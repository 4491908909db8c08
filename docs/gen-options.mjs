// gen-options.mjs — writes the README's table of options from the options schema
// (orchestrator/src/gateway/schema.ts), between its options:begin and options:end markers.
// Run after a build: npm run docs:options. test/unit/options-schema.test.ts checks it is current.
import { readFileSync, writeFileSync } from "node:fs";
import { optionsTable } from "../dist/orchestrator/src/gateway/schema.js";

const readme = new URL("../README.md", import.meta.url);
const text = readFileSync(readme, "utf8");
const begin = "<!-- options:begin (npm run docs:options writes this table) -->\n";
const end = "\n<!-- options:end -->";
const a = text.indexOf(begin);
const b = text.indexOf(end);
if (a < 0 || b < a) throw new Error("README.md has no options:begin / options:end markers");
writeFileSync(readme, text.slice(0, a + begin.length) + optionsTable() + text.slice(b));
