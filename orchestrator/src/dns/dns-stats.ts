// dns-stats.ts — what a DNS interceptor answered, counted for metrics: queries by transport,
// blocked names, upstream failures, and a histogram of the time to answer. One instance where
// each interceptor runs (the engine worker's for UDP, the gateway's for TCP and DoT); the gateway
// adds them up when scraped. Counting costs an increment and a bucket search per query.
import type { DnsOutcome } from "./interceptor.js";

/** Upper bounds of the latency buckets, in seconds (Prometheus `le`); +Inf is implied. */
export const DNS_LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10] as const;

export interface DnsStatsSnapshot {
  queries: { udp: number; tcp: number };
  /** Answered locally as blocked (a block list or a deny domain rule). */
  blocked: number;
  /** Answers rewritten to REFUSED by rebinding protection. */
  rebinding: number;
  /** Queries no upstream answered. */
  upstreamFailures: number;
  /** Per bucket (not cumulative), then the count above the last bound. */
  latencyBuckets: number[];
  latencySum: number;
  latencyCount: number;
}

export class DnsStats {
  private s: DnsStatsSnapshot = DnsStats.empty();

  static empty(): DnsStatsSnapshot {
    return { queries: { udp: 0, tcp: 0 }, blocked: 0, rebinding: 0, upstreamFailures: 0, latencyBuckets: new Array<number>(DNS_LATENCY_BUCKETS.length + 1).fill(0), latencySum: 0, latencyCount: 0 };
  }

  /** One query handled: `out` null when it got no outcome at all (an exception). */
  record(protocol: "udp" | "tcp", seconds: number, out: DnsOutcome | null): void {
    const s = this.s;
    s.queries[protocol]++;
    const k = out?.event?.kind;
    if (k === "blocked") s.blocked++;
    else if (k === "rebinding") s.rebinding++;
    else if (k === "upstream-failed" || out === null) s.upstreamFailures++;
    let i = 0;
    while (i < DNS_LATENCY_BUCKETS.length && seconds > DNS_LATENCY_BUCKETS[i]!) i++;
    s.latencyBuckets[i]!++;
    s.latencySum += seconds;
    s.latencyCount++;
  }

  snapshot(): DnsStatsSnapshot {
    return structuredClone(this.s);
  }

  /** a + b, field by field. */
  static add(a: DnsStatsSnapshot, b: DnsStatsSnapshot): DnsStatsSnapshot {
    return {
      queries: { udp: a.queries.udp + b.queries.udp, tcp: a.queries.tcp + b.queries.tcp },
      blocked: a.blocked + b.blocked,
      rebinding: a.rebinding + b.rebinding,
      upstreamFailures: a.upstreamFailures + b.upstreamFailures,
      latencyBuckets: a.latencyBuckets.map((n, i) => n + (b.latencyBuckets[i] ?? 0)),
      latencySum: a.latencySum + b.latencySum,
      latencyCount: a.latencyCount + b.latencyCount,
    };
  }
}
