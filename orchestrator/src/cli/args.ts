// args.ts — a small, strict flag parser: every flag is declared, every value is checked, and a
// mistake is reported with the flag, the value and what was expected.
import { ConfigError } from "../errors.js";
import type { OptionEntry } from "../gateway/schema.js";

/** A flag is an option of the schema (gateway/schema.ts): its flag, type, range and help. */
export type FlagSpec = OptionEntry;

/** The width --help wraps at. */
export const HELP_COLUMNS = 100;

export interface Parsed {
  flags: Map<string, string | number | boolean>;
  lists: Map<string, string[]>;
  rest: string[];
}

/**
 * Parse `args` against `specs`. Options come first; the first `--` or the first argument that is
 * not an option starts `rest` (the command to run), which is returned untouched.
 */
export function parseFlags(args: string[], specs: readonly FlagSpec[], context: string): Parsed {
  const byName = new Map(specs.flatMap((s) => (s.short ? [[s.flag, s], [s.short, s]] as const : [[s.flag, s]] as const)));
  const flags = new Map<string, string | number | boolean>();
  const lists = new Map<string, string[]>();
  let i = 0;
  for (; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === "--") { i++; break; }
    if (!arg.startsWith("-") || arg === "-") break;
    const eq = arg.indexOf("=");
    const name = arg.replace(/^--?/, "").slice(0, eq >= 0 ? eq - (arg.startsWith("--") ? 2 : 1) : undefined);
    const spec = byName.get(name);
    if (!spec) {
      const near = specs.find((s) => s.flag.startsWith(name.slice(0, 3)));
      throw new ConfigError(`${context}: unknown option "${arg}"`, near ? `did you mean --${near.flag}? See --help` : "see --help for the options");
    }
    if (spec.type === "bool") {
      if (eq >= 0) throw new ConfigError(`${context}: --${spec.flag} takes no value`, `write just --${spec.flag}`);
      flags.set(spec.flag, true);
      continue;
    }
    let value: string | undefined;
    if (eq >= 0) value = arg.slice(eq + 1);
    else value = args[++i];
    if (value === undefined) throw new ConfigError(`${context}: --${spec.flag} needs a value`, `e.g. --${spec.flag} ${spec.metavar ?? "VALUE"}`);
    if (spec.type === "int" || spec.item === "int") {
      const n = Number(value);
      if (!/^-?\d+$/.test(value) || (spec.min !== undefined && n < spec.min) || (spec.max !== undefined && n > spec.max)) {
        throw new ConfigError(`${context}: --${spec.flag} "${value}" is not a valid value`,
          `expected an integer${spec.min !== undefined ? ` from ${spec.min}` : ""}${spec.max !== undefined ? ` to ${spec.max}` : ""}`);
      }
      if (spec.type === "list") lists.set(spec.flag, [...(lists.get(spec.flag) ?? []), value]);
      else flags.set(spec.flag, n);
    } else if (spec.type === "list") {
      lists.set(spec.flag, [...(lists.get(spec.flag) ?? []), value]);
    } else {
      if (spec.choices && !spec.choices.includes(value)) {
        throw new ConfigError(`${context}: --${spec.flag} "${value}" is not one of ${spec.choices.join(", ")}`, `e.g. --${spec.flag} ${spec.choices[0]}`);
      }
      flags.set(spec.flag, value);
    }
  }
  return { flags, lists, rest: args.slice(i) };
}

/** The flags' help: each flag, and its help wrapped at HELP_COLUMNS beside it. */
export function flagHelp(specs: readonly FlagSpec[]): string {
  const rows = specs.map((s) => [`${s.short ? `-${s.short}, ` : ""}--${s.flag}${s.type === "bool" ? "" : ` ${s.metavar ?? "VALUE"}`}${s.type === "list" ? " ..." : ""}`, s.help] as const);
  const w = Math.max(...rows.map((r) => r[0].length)) + 2;
  return rows.map(([l, h]) => `  ${l.padEnd(w)}${wrap(h, HELP_COLUMNS - w - 2).join("\n" + " ".repeat(w + 2))}`).join("\n");
}

/** `text`'s words in lines of at most `width` columns (a longer word alone on its line). */
export function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(/\s+/).filter((x) => x !== "")) {
    if (line !== "" && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line === "" ? word : `${line} ${word}`;
    }
  }
  return [...lines, line];
}
