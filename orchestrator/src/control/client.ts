// client.ts — talking to a control socket (control/server.ts) from the CLI: moat ps, inspect,
// exec, policy, rm, create, publish, unpublish. An error answer becomes a MoatError with the
// server's message and hint; a socket nobody listens at says so, with the way to start one.
import { request } from "node:http";
import { MoatError } from "../errors.js";

export interface Answer { status: number; body: unknown }

function unreachable(path: string, e: NodeJS.ErrnoException): MoatError {
  const why = e.code === "ENOENT" || e.code === "ECONNREFUSED" ? "no moat is listening there" : e.code === "EACCES" ? "permission denied (the socket is 0600: run as the daemon's user)" : e.message;
  return new MoatError("ERR_BAD_CONFIG", `cannot reach the control socket ${path}: ${why}`, "start one with moat daemon --control PATH (or moat serve ... --control PATH), or give --control PATH");
}

/** One request; resolves with the status and the parsed JSON body (undefined for 204). */
export function call(path: string, method: string, url: string, body?: unknown): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const req = request({ socketPath: path, method, path: url, headers: data ? { "content-type": "application/json", "content-length": data.length } : {} }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        let parsed: unknown;
        try {
          parsed = text ? JSON.parse(text) : undefined;
        } catch {
          parsed = text;
        }
        resolve({ status: res.statusCode ?? 0, body: parsed });
      });
      res.on("error", reject);
    });
    req.on("error", (e: NodeJS.ErrnoException) => reject(unreachable(path, e)));
    req.end(data);
  });
}

/** The body of a 2xx answer; otherwise the server's error as a MoatError. */
export async function expectOk(path: string, method: string, url: string, body?: unknown): Promise<unknown> {
  const a = await call(path, method, url, body);
  if (a.status >= 200 && a.status < 300) return a.body;
  const e = (a.body ?? {}) as { error?: string; hint?: string };
  throw new MoatError("ERR_BAD_CONFIG", e.error ?? `the control socket answered ${a.status}`, e.hint);
}

/** A streaming request: `onLine` gets each NDJSON line as it arrives; resolves at the end. */
export function stream(path: string, method: string, url: string, body: unknown, onLine: (v: Record<string, unknown>) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const req = request({ socketPath: path, method, path: url, headers: data ? { "content-type": "application/json", "content-length": data.length } : {} }, (res) => {
      if ((res.statusCode ?? 0) >= 300) {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          let e: { error?: string; hint?: string } = {};
          try { e = JSON.parse(Buffer.concat(chunks).toString("utf8")) as typeof e; } catch { /* not JSON */ }
          reject(new MoatError("ERR_BAD_CONFIG", e.error ?? `the control socket answered ${res.statusCode}`, e.hint));
        });
        return;
      }
      let buf = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => {
        buf += c;
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line.trim()) onLine(JSON.parse(line) as Record<string, unknown>);
        }
      });
      res.on("end", () => resolve());
      res.on("error", reject);
    });
    req.on("error", (e: NodeJS.ErrnoException) => reject(unreachable(path, e)));
    req.end(data);
  });
}
