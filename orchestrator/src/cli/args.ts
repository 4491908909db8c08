// args.ts — a small, strict flag parser: every flag is declared, every value is checked, and a
// mistake is reported with the flag, the value and what was expected.
import { ConfigError } from "../errors.js";

export interface FlagSpec {
  name: string; // without the leading --
  /** A one-letter alias, given as -X (e.g. "p" for -p). */
  short?: string;
  kind: "int" | "string" | "bool";
  /** May be given several times; the values are kept in order (Parsed.lists). */
  repeat?: boolean;
  metavar?: string;
  help: string;
  min?: number;
  max?: number;
  choices?: readonly string[];
}

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
  const byName = new Map(specs.flatMap((s) => (s.short ? [[s.name, s], [s.short, s]] as const : [[s.name, s]] as const)));
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
      const near = specs.find((s) => s.name.startsWith(name.slice(0, 3)));
      throw new ConfigError(`${context}: unknown option "${arg}"`, near ? `did you mean --${near.name}? See --help` : "see --help for the options");
    }
    if (spec.kind === "bool") {
      if (eq >= 0) throw new ConfigError(`${context}: --${spec.name} takes no value`, `write just --${spec.name}`);
      flags.set(spec.name, true);
      continue;
    }
    let value: string | undefined;
    if (eq >= 0) value = arg.slice(eq + 1);
    else value = args[++i];
    if (value === undefined) throw new ConfigError(`${context}: --${spec.name} needs a value`, `e.g. --${spec.name} ${spec.metavar ?? "VALUE"}`);
    if (spec.kind === "int") {
      const n = Number(value);
      if (!/^-?\d+$/.test(value) || (spec.min !== undefined && n < spec.min) || (spec.max !== undefined && n > spec.max)) {
        throw new ConfigError(`${context}: --${spec.name} "${value}" is not a valid value`,
          `expected an integer${spec.min !== undefined ? ` from ${spec.min}` : ""}${spec.max !== undefined ? ` to ${spec.max}` : ""}`);
      }
      flags.set(spec.name, n);
    } else if (spec.repeat) {
      lists.set(spec.name, [...(lists.get(spec.name) ?? []), value]);
    } else {
      if (spec.choices && !spec.choices.includes(value)) {
        throw new ConfigError(`${context}: --${spec.name} "${value}" is not one of ${spec.choices.join(", ")}`, `e.g. --${spec.name} ${spec.choices[0]}`);
      }
      flags.set(spec.name, value);
    }
  }
  return { flags, lists, rest: args.slice(i) };
}

export function flagHelp(specs: readonly FlagSpec[]): string {
  const rows = specs.map((s) => [`${s.short ? `-${s.short}, ` : ""}--${s.name}${s.kind === "bool" ? "" : ` ${s.metavar ?? "VALUE"}`}${s.repeat ? " ..." : ""}`, s.help] as const);
  const w = Math.max(...rows.map((r) => r[0].length)) + 2;
  return rows.map(([l, h]) => `  ${l.padEnd(w)}${h.replace(/\n/g, "\n" + " ".repeat(w + 2))}`).join("\n");
}
