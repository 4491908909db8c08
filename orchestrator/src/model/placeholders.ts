// placeholders.ts — a secret's placeholder and the forms it may travel in (secrets/secrets.ts has
// the theory): the raw text, base64 at each of the three alignments (standard and url
// alphabets), %XX (both cases) and JSON \u00XX. The engine watches the guest's own TCP and UDP
// for these forms (engine/tables.ts, setSecretForms), the DNS interceptor refuses a query that
// carries one (placeholderInName), the TLS proxy's filters scan requests for them.
/** The byte strings a placeholder may travel as (latin1 text). */
export function placeholderForms(placeholder: string): string[] {
  const forms = new Set<string>([placeholder]);
  const b = Buffer.from(placeholder, "latin1");
  for (let k = 0; k < 3; k++) {
    // The characters of base64(prefix of k bytes + placeholder) that depend on the placeholder only.
    const enc = Buffer.concat([Buffer.alloc(k), b]).toString("base64");
    const start = Math.ceil((k * 8) / 6);
    const end = Math.floor(((k + b.length) * 8) / 6);
    const core = enc.slice(start, end);
    forms.add(core);
    forms.add(core.replace(/\+/g, "-").replace(/\//g, "_"));
  }
  const hex = [...b].map((x) => x.toString(16).padStart(2, "0"));
  forms.add(hex.map((h) => `%${h.toUpperCase()}`).join(""));
  forms.add(hex.map((h) => `%${h}`).join(""));
  forms.add(hex.map((h) => `\\u00${h}`).join(""));
  forms.add(hex.map((h) => `\\u00${h.toUpperCase()}`).join(""));
  return [...forms];
}

const placeholderFormCache = new Map<string, string[]>();
function formsOfPlaceholder(p: string): string[] {
  let f = placeholderFormCache.get(p);
  if (!f) placeholderFormCache.set(p, (f = placeholderForms(p)));
  return f;
}

/**
 * The variable name of the secret whose placeholder a DNS query carries: in its name, compared in
 * lower case (names are case-insensitive) and with the dots taken out (a placeholder split over
 * labels), or in any form anywhere in the query's bytes (EDNS options, additional records).
 */
export function placeholderInName(secrets: readonly { env: string; placeholder: string }[], name: string, query?: Uint8Array): string | undefined {
  if (secrets.length === 0) return undefined; // (every guest query asks)
  const n = name.toLowerCase();
  const joined = n.replace(/\./g, "");
  const hit = secrets.find((s) => n.includes(s.placeholder.toLowerCase()) || joined.includes(s.placeholder.toLowerCase()));
  if (hit || !query) return hit?.env;
  const raw = Buffer.from(query.buffer, query.byteOffset, query.byteLength).toString("latin1");
  const lower = raw.toLowerCase();
  return secrets.find((s) => lower.includes(s.placeholder.toLowerCase()) || formsOfPlaceholder(s.placeholder).some((f) => raw.includes(f)))?.env;
}
