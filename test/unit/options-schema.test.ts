// options-schema.test.ts — the options schema (gateway/schema.ts) and what is made from it: the
// README's table is the one the schema gives, help is within 100 columns in the source and on the
// screen, and the table itself is consistent (one flag per command, one entry per config path).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { OPTIONS, optionsOf, optionsTable, type Command, type OptionEntry } from "../../orchestrator/src/gateway/schema.js";
import { helpText } from "../../orchestrator/src/cli/main.js";

const root = new URL("../../../", import.meta.url);
const read = (path: string) => readFileSync(new URL(path, root), "utf8");
const entries = OPTIONS as readonly OptionEntry[];

test("the README's table of options is the schema's (npm run docs:options writes it)", () => {
  const readme = read("README.md");
  const m = /<!-- options:begin[^\n]*-->\n([\s\S]*?)\n<!-- options:end -->/.exec(readme);
  assert.ok(m, "README.md has the options:begin / options:end markers");
  assert.equal(m[1], optionsTable(), "README.md's table is stale: run npm run docs:options");
});

const COMMANDS = [undefined, "run", "serve", "daemon", "create", "ps", "inspect", "exec", "policy", "limit", "publish", "unpublish", "rm", "cleanup"] as const;

test("every command answers --help with its usage, and exit status 0", () => {
  for (const c of COMMANDS) {
    if (c === undefined) continue;
    const r = spawnSync(process.execPath, [new URL("../../../bin/moat.js", import.meta.url).pathname, c, "--help"], { encoding: "utf8" });
    assert.equal(r.status, 0, `moat ${c} --help: ${r.stderr}`);
    assert.match(r.stdout, new RegExp(`^Usage: moat ${c}\\b`), `moat ${c} --help`);
  }
});

test("help is within 100 columns: the schema's source, the commands' help in main.ts, --help", () => {
  const long = (text: string, where: string) => text.split("\n").flatMap((l, i) => ([...l].length > 100 ? [`${where}:${i + 1}: ${l}`] : []));
  const main = read("orchestrator/src/cli/main.ts");
  const helps = [...main.matchAll(/^const \w+_HELP = `([\s\S]*?)^`;/gm)].map((h) => h[1]!);
  assert.ok(helps.length >= 4, "main.ts's help texts are found");
  assert.deepEqual([
    ...long(read("orchestrator/src/gateway/schema.ts"), "schema.ts"),
    ...helps.flatMap((h) => long(h, "main.ts help")),
    ...COMMANDS.flatMap((c) => long(helpText(c), `moat ${c ?? ""} --help`)),
  ], []);
});

test("a command takes a flag once, and a config path or library path is one entry's", () => {
  for (const c of ["run", "serve", "create", "daemon", "policy", "limit", "exec", "client"] as Command[]) {
    const names = optionsOf(c).flatMap((e) => (e.short ? [e.flag, e.short] : [e.flag]));
    assert.deepEqual(names.filter((n, i) => names.indexOf(n) !== i), [], `${c}'s flags`);
  }
  for (const key of ["config", "api"] as const) {
    const paths = entries.flatMap((e) => (e[key] !== undefined && !e.parse ? [e[key]] : []));
    assert.deepEqual(paths.filter((p, i) => paths.indexOf(p) !== i), [], `${key} paths`);
  }
});

test("every entry is whole: ranges on ints, choices on enums, defaults within them, help", () => {
  for (const e of entries) {
    if (e.type === "int" || e.item === "int") {
      assert.ok(e.min !== undefined && e.max !== undefined && e.min <= e.max, `--${e.flag}: its range`);
      if (typeof e.default === "number") assert.ok(e.default >= e.min! && e.default <= e.max!, `--${e.flag}: its default in range`);
    }
    if (e.type === "enum") {
      assert.ok(e.choices?.length, `--${e.flag}: its choices`);
      if (e.default !== undefined) assert.ok(e.choices!.includes(e.default as string), `--${e.flag}: its default is a choice`);
    }
    if (e.api !== undefined && !e.parse && (e.type === "int" || e.type === "enum") && !e.api.includes(".")) {
      assert.ok(e.noun, `--${e.flag}: a noun for the library's messages`);
    }
    assert.ok(e.help.length > 0 && !e.help.includes("\n"), `--${e.flag}: one paragraph of help`);
  }
});
