// audit.ts — the audit log: a gateway's events (gateway/events.ts) as JSON lines in a file.
//
// Denials come out of the engine's audit ring (EngineHost.drainDenials, engine/tables.ts): the
// engine (policy/admit.ts) produces one 64-byte record per denied flow; the gateway is the ring's
// consumer, woken by a message from the engine worker after a batch that produced any.
//
// The log is bounded, since a guest can produce denials as fast as it can loop:
// - Aggregation: the first event of a key is written at once; repeats within the key's interval
//   (default 10 s, from that first event) are counted, and when the interval ends one summary is
//   written: the first repeat's fields plus "repeated" (how many) and "until" (the last one's
//   time). Keys: every field of the event but its time and its source (so a connect loop's new
//   source ports do not split it). At most maxKeys (default 4096)
//   keys are held; past that, new keys of a kind are counted in one "audit-log-overflow" summary.
// - Size cap: at maxBytes (default 64 MiB, counting the file's size at open) one "audit-log-full"
//   line is written, then nothing more; the events not written are counted in `dropped`.
// Summaries are flushed by an unref()ed timer, by close() and at process exit.
import { appendFileSync, statSync } from "node:fs";
import type { Denial } from "../engine/tables.js";
import { ConfigError } from "../errors.js";

/** A denial, as onDeny listeners receive it. */
export interface DenyEvent extends Denial {
  sandbox: string;
}

export interface AuditLogOptions {
  /** How long repeats of an event are counted before their summary is written (ms, default 10000). */
  intervalMs?: number;
  /** Size at which the file is closed to further events (bytes, default 64 MiB). */
  maxBytes?: number;
  /** Most event keys held at once (default 4096); further keys go to per-kind overflow counts. */
  maxKeys?: number;
}

/** A key's interval: its repeats so far, summarised when it ends. */
interface Interval {
  end: number; // performance.now() ms
  first: object | undefined; // the first repeat: the summary's fields
  repeated: number;
  until: string;
}

/** Logs with summaries to write: flushed at exit, whether or not their owner calls close(). */
const unflushed = new Set<AuditLog>();
process.on("exit", () => {
  for (const log of unflushed) log.close();
});

function positiveInteger(value: number | undefined, fallback: number, what: string, hint: string): number {
  const v = value ?? fallback;
  if (!Number.isSafeInteger(v) || v < 1) throw new ConfigError(`audit log ${what} ${value} is not a positive whole number`, hint);
  return v;
}

function timeOf(record: object): string {
  const time = (record as { time?: unknown }).time;
  return typeof time === "string" ? time : new Date().toISOString();
}

/** Appends events to a file as JSON lines, aggregated and capped (see the top of this file). */
export class AuditLog {
  private readonly intervalMs: number;
  private readonly maxBytes: number;
  private readonly maxKeys: number;
  private bytes: number;
  private full = false;
  private droppedEvents = 0;
  // Insertion order is the order in which intervals end: they all last intervalMs.
  private readonly intervals = new Map<string, Interval>();
  private timer: NodeJS.Timeout | undefined;
  private lines: string[] = []; // to append, in one write per call

  constructor(readonly path: string, options: AuditLogOptions = {}) {
    this.intervalMs = positiveInteger(options.intervalMs, 10_000, "interval (ms)", "use a whole number of milliseconds, at least 1 (default 10000)");
    this.maxBytes = positiveInteger(options.maxBytes, 64 * 2 ** 20, "size cap (bytes)", "use a whole number of bytes, at least 1 (default 67108864, 64 MiB)");
    this.maxKeys = positiveInteger(options.maxKeys, 4096, "key limit", "use a whole number, at least 1 (default 4096)");
    try {
      appendFileSync(path, ""); // fail now, at start, if the file cannot be written
      this.bytes = statSync(path).size;
    } catch (e) {
      throw new ConfigError(`cannot write the audit log ${path}: ${(e as Error).message}`, "give a writable file path (its directory must exist)");
    }
  }

  /** Events that were neither written nor counted in a written summary (the size cap was reached). */
  get dropped(): number {
    return this.droppedEvents;
  }

  /** Keys held now: at most maxKeys, plus one overflow count per kind. */
  get heldKeys(): number {
    return this.intervals.size;
  }

  /** Events (gateway/events.ts GatewayEvent; a DenyEvent without a kind counts as "flow-denied"). */
  write(events: object[]): void {
    this.add(events, (r) => {
      const { time: _t, source: _s, v: _v, kind, ...rest } = r as Record<string, unknown>;
      return [String(kind ?? "flow-denied"), ...Object.entries(rest)];
    });
  }

  /** The same as write() (kept for callers of the time when records had two shapes). */
  writeRecords(records: object[]): void {
    this.write(records);
  }

  /** Write every pending summary now and stop the timer. */
  close(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.expire(Infinity);
    this.commit();
  }

  /** `keyOf` gives the record's kind, then the rest of its key. */
  private add<T extends object>(records: T[], keyOf: (record: T) => [kind: string, ...rest: unknown[]]): void {
    if (this.full) {
      this.droppedEvents += records.length;
      return;
    }
    const now = performance.now();
    this.expire(now); // the timer may be late: summaries go before a new interval's first event
    for (const r of records) {
      const parts = keyOf(r);
      const key = JSON.stringify(parts);
      const held = this.intervals.get(key);
      if (held) {
        held.first ??= r;
        held.repeated++;
        held.until = timeOf(r);
      } else if (this.intervals.size < this.maxKeys) {
        this.intervals.set(key, { end: now + this.intervalMs, first: undefined, repeated: 0, until: "" });
        this.emit(r, 1);
      } else {
        // Too many keys: counted under the kind alone (never a JSON array, so never a key above).
        const kind = parts[0];
        const overflow = this.intervals.get(kind);
        if (overflow) {
          overflow.repeated++;
          overflow.until = timeOf(r);
        } else {
          const first = { v: 1, time: timeOf(r), sandbox: (r as { sandbox?: unknown }).sandbox, kind: "audit-log-overflow", of: kind, detail: `limit of ${this.maxKeys} distinct events per ${this.intervalMs} ms reached; further ${kind} events are counted, not written` };
          this.intervals.set(kind, { end: now + this.intervalMs, first, repeated: 1, until: first.time });
        }
      }
    }
    this.commit();
    this.schedule();
  }

  /** Close the intervals that ended by `now`, writing the summaries of those with repeats. */
  private expire(now: number): void {
    for (const [key, iv] of this.intervals) {
      if (iv.end > now) break;
      this.intervals.delete(key);
      if (iv.first) this.emit({ ...iv.first, repeated: iv.repeated, until: iv.until }, iv.repeated);
    }
    if (!this.intervals.size) unflushed.delete(this);
  }

  /** Arm the timer for the next interval to end. */
  private schedule(): void {
    const next = this.intervals.values().next();
    if (this.timer || next.done) return;
    unflushed.add(this);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.expire(performance.now());
      this.commit();
      this.schedule();
    }, next.value.end - performance.now());
    this.timer.unref(); // never keeps the process alive: the exit handler writes what is left
  }

  /** Queue a line standing for `events` events, unless the size cap is (or would be) reached. */
  private emit(record: object, events: number): void {
    if (this.full) {
      this.droppedEvents += events;
      return;
    }
    const line = JSON.stringify(record) + "\n";
    const size = Buffer.byteLength(line);
    if (this.bytes + size > this.maxBytes) {
      this.full = true;
      this.droppedEvents += events;
      this.lines.push(JSON.stringify({ v: 1, time: new Date().toISOString(), kind: "audit-log-full", detail: `size cap of ${this.maxBytes} bytes reached; further events are counted, not written` }) + "\n");
      return;
    }
    this.bytes += size;
    this.lines.push(line);
  }

  private commit(): void {
    if (!this.lines.length) return;
    appendFileSync(this.path, this.lines.join(""));
    this.lines = [];
  }
}
