// limits.ts — per-sandbox rate limits (--limit-egress, --limit-ingress, --limit-conn-rate,
// --limit-dns-rate): token buckets, the TCP flows they hold back, the SYNs they hold.
//
// Theory of operation
// A bucket (layout.ts LIM_*) holds at most LB_BURST tokens and gains LB_RATE tokens per
// millisecond of engine time (ST_NOW_MS: the worker's monotonic clock), refilled when read. What
// each limit governs, and how it holds traffic back without losing any:
//   egress   bytes from the guest. TCP: the window offered to the guest (flow/tcp.ts advWindow)
//            is at most the tokens, so its TCP slows down; a window held under a segment is
//            reopened by an update once the tokens cover one. Tokens are taken as bytes are
//            written to the host socket. UDP and ICMP over the budget: dropped, DROP_RATE_EGRESS.
//   ingress  bytes to the guest. TCP: native-vmm peeks host data only up to the credit the engine
//            grants (tcp.ts grantCredit), and credit beyond the tokens waits: the host socket's
//            receive queue fills and the remote's TCP slows down. Tokens are taken as bytes are
//            sent to the guest (first sends only: a retransmission is free). UDP and ICMP over the
//            budget: dropped, DROP_RATE_INGRESS.
//   conn     flows the guest opens. A TCP SYN over the rate is held — the flow waits in DIALING,
//            not dialled — and dialled in arrival order as tokens come (CONNQ_*): the guest sees
//            a slower network, not a refusal, and a client that connects as fast as it can gets
//            exactly the rate. Past CONNQ_SLOTS held SYNs, a SYN is reset. A new UDP or ICMP flow
//            over the rate: its datagram dropped. Both counted as DROP_RATE_CONN.
//   dns      queries, UDP, TCP and DoT alike: the interceptors ask engineDnsAdmit before each
//            one; over the rate it is answered REFUSED (DNS_RATE_REFUSED).
// Tokens are taken when bytes move, not when they are offered, so an offer never used (a window
// the guest did not fill, credit the host had no data for) costs nothing. Two flows may be offered
// the same tokens; what they then carry beyond them is debt (tokens below zero) that the refill
// pays back first: over any interval, the bytes carried stay within the rate, one burst, and what
// was offered at once.
//
// Waking up: a flow held back goes on PACED_LIST (once: its FL_PACED flag) and ST_LIMIT_DUE keeps
// the earliest time something held can go on; the worker sets a timer for it (and engineRun looks
// as well), which calls engineLimitWake (tcp.ts tcpLimitWake): held SYNs are dialled as the rate
// allows, windows reopened, credit granted. Nothing waits for a packet that may never come. A flow
// that finds the list full is resumed by the 100 ms tick instead: slower, never stuck.
//
// Without a limit (LB_RATE 0) all this costs one load and compare per segment or datagram.
import {
  ST_NOW_MS, LB_RATE, LB_BURST, LB_TOKENS, LB_AT, ST_LIMIT_DUE, ST_PACED_COUNT, PACED_MAX, PACED_LIST,
  ST_CONNQ_HEAD, ST_CONNQ_TAIL, CONNQ_SLOTS, CONNQ_BASE,
} from "./layout";

/** Whether bucket `b` limits anything. */
@inline export function limited(b: usize): bool {
  return load<f64>(b, LB_RATE) != 0;
}

/** The tokens bucket `b` holds now: refilled to the engine's time, at most its size. */
export function bucketLevel(b: usize): f64 {
  const now = load<f64>(ST_NOW_MS);
  let t = load<f64>(b, LB_TOKENS);
  const at = load<f64>(b, LB_AT);
  if (now > at) {
    t += (now - at) * load<f64>(b, LB_RATE);
    const burst = load<f64>(b, LB_BURST);
    if (t > burst) t = burst;
    store<f64>(b, t, LB_TOKENS);
    store<f64>(b, now, LB_AT);
  }
  return t;
}

/** True when bucket `b` limits and holds fewer than `n` tokens. */
@inline export function lacks(b: usize, n: f64): bool {
  return limited(b) && bucketLevel(b) < n;
}

/** Take `n` tokens from bucket `b` if it limits (below zero is debt; a negative `n` gives back). */
@inline export function charge(b: usize, n: f64): void {
  if (limited(b)) take(b, n); // (inline: without a limit, a load and a compare)
}

function take(b: usize, n: f64): void {
  const t = bucketLevel(b) - n;
  const burst = load<f64>(b, LB_BURST);
  store<f64>(b, t > burst ? burst : t, LB_TOKENS);
}

/** Engine time at which bucket `b` holds `need` tokens (now, if it does). */
export function readyAt(b: usize, need: f64): f64 {
  const t = bucketLevel(b);
  const now = load<f64>(ST_NOW_MS);
  return t >= need ? now : now + (need - t) / load<f64>(b, LB_RATE);
}

/** Something held back can go on at `at`: ST_LIMIT_DUE keeps the earliest. */
export function wakeAt(at: f64): void {
  const due = load<f64>(ST_LIMIT_DUE);
  if (due == 0 || at < due) store<f64>(ST_LIMIT_DUE, at);
}

/** List TCP flow `idx` as held back (the caller keeps it to once); false when the list is full. */
export function pacedPush(idx: u32): bool {
  const n = load<u32>(ST_PACED_COUNT);
  if (n >= <u32>PACED_MAX) return false;
  store<u32>(PACED_LIST + (<usize>n << 2), idx);
  store<u32>(ST_PACED_COUNT, n + 1);
  return true;
}

// ---- held SYNs: a FIFO of flow indexes (free-running head and tail) --------------------------------

@inline export function connQueueEmpty(): bool {
  return load<u32>(ST_CONNQ_HEAD) == load<u32>(ST_CONNQ_TAIL);
}

@inline export function connQueueFull(): bool {
  return load<u32>(ST_CONNQ_TAIL) - load<u32>(ST_CONNQ_HEAD) >= <u32>CONNQ_SLOTS;
}

/** Hold flow `idx` (the caller checked there is room). */
export function connQueuePush(idx: u32): void {
  const tail = load<u32>(ST_CONNQ_TAIL);
  store<u32>(CONNQ_BASE + (<usize>(tail & (<u32>CONNQ_SLOTS - 1)) << 2), idx);
  store<u32>(ST_CONNQ_TAIL, tail + 1);
}

/** The oldest held flow (the queue is not empty). */
@inline export function connQueuePeek(): u32 {
  return load<u32>(CONNQ_BASE + (<usize>(load<u32>(ST_CONNQ_HEAD) & (<u32>CONNQ_SLOTS - 1)) << 2));
}

@inline export function connQueuePop(): void {
  store<u32>(ST_CONNQ_HEAD, load<u32>(ST_CONNQ_HEAD) + 1);
}
