// names.ts — host patterns: which names a secret's hosts, a TLS bypass or a domain rule cover.
//
//   "api.example"   that name exactly
//   "*.example"     example itself and every name under it (a secret's hosts, --tls-bypass)
//   ".example"      the same, as a domain rule's name key (the keys of NameTable)
//
// Names are compared as given: lower case, no final dot (model/policy.ts normalizeName).
/** Does `name` match one of `patterns` ("x.example" exactly; "*.example" is example and everything under it)? */
export function matchesPattern(name: string, patterns: readonly string[]): boolean {
  for (const p of patterns) {
    if (p.startsWith("*.")) {
      const suffix = p.slice(2);
      if (name === suffix || name.endsWith(`.${suffix}`)) return true;
    } else if (name === p) {
      return true;
    }
  }
  return false;
}

/** Is `sni` covered by a domain rule's name key ("name" exactly, ".suffix" for the suffix and under)? */
export function ruleCovers(key: string, sni: string): boolean {
  return key.startsWith(".") ? sni === key.slice(1) || sni.endsWith(key) : sni === key;
}
