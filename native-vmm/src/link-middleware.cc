// link-middleware.cc — the pcap writer and the fault injector (link-middleware.h).
//
// Both sit between the data path and a link and forward every Link call. What they may not do:
// block the data path (the pcap file is written in batches of up to BATCH bytes, from the
// worker's thread, at the end of a recv/send batch once enough is buffered or FLUSH_NS passed),
// or grow without bound (the pcap file stops at its bound; the fault injector holds at most
// HELD_MAX frames / HELD_BYTES_MAX bytes, beyond which frames pass untouched).
#include "link-middleware.h"
#include "layout.gen.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>
#include <vector>

namespace moat {

static uint64_t nowNs(clockid_t clock) {
  struct timespec ts;
  clock_gettime(clock, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// ---- pcap ----------------------------------------------------------------------------------------
//
// The classic pcap format (not pcapng: every reader takes it) with the nanosecond magic
// 0xa1b23c4d, in this host's byte order (readers detect it from the magic), LINKTYPE_ETHERNET.
// Frames are recorded where they cross the inner link: a frame from the guest as recv() returns
// it, a frame to the guest once the inner link took it.

class PcapLink final : public Link {
 public:
  static constexpr size_t BATCH = 1 << 20;          // buffered before a write is forced
  static constexpr size_t FLUSH_AFTER = 256 << 10;  // written at the end of a batch from here on
  static constexpr uint64_t FLUSH_NS = 100000000;   // ... or when this long passed since the last write
  static constexpr uint32_t SNAPLEN = 262144;

  PcapLink(Link* inner, int fd, std::string path, uint64_t maxBytes) : in_(inner), fd_(fd), path_(std::move(path)), max_(maxBytes) {
    counters = inner->counters;
    buf_.resize(BATCH);
    struct {
      uint32_t magic;
      uint16_t major, minor;
      int32_t thiszone;
      uint32_t sigfigs, snaplen, linktype;
    } h = {0xa1b23c4d, 2, 4, 0, 0, SNAPLEN, 1};
    static_assert(sizeof(h) == 24, "pcap file header");
    memcpy(buf_.data(), &h, sizeof h);
    len_ = sizeof h;
    flush();  // the header at once: a capture that saw no frame is still a valid file
  }
  ~PcapLink() override {
    close();
    delete in_;
  }

  void watch(int epfd, uint64_t base) override { in_->watch(epfd, base); }
  uint32_t event(uint32_t sub, uint32_t events) override { return in_->event(sub, events); }
  uint32_t recv(uint8_t* buf, uint32_t cap) override {
    const uint32_t n = in_->recv(buf, cap);
    if (n) record(buf, n);
    return n;
  }
  uint32_t recvFlags() const override { return in_->recvFlags(); }
  void recvDone() override {
    in_->recvDone();
    maybeFlush();
  }
  bool recvPending() const override { return in_->recvPending(); }
  bool send(const uint8_t* frame, uint32_t len) override {
    if (!in_->send(frame, len)) return false;
    record(frame, len);
    return true;
  }
  void sendDone() override {
    in_->sendDone();
    maybeFlush();
  }
  void closeDeferring() override {
    in_->closeDeferring();
    close();  // (the inner link's close is a no-op now)
  }
  void close() override {
    in_->close();
    if (fd_ >= 0) {
      flush();
      ::close(fd_);
    }
    fd_ = -1;
  }

 private:
  void record(const uint8_t* frame, uint32_t len) {
    if (stopped_) return;
    const uint32_t incl = len < SNAPLEN ? len : SNAPLEN;
    const size_t rec = 16 + static_cast<size_t>(incl);
    if (max_ && written_ + len_ + rec > max_) {
      flush();
      stop("reached its size bound (" + std::to_string(max_) + " bytes, --pcap-max-bytes): later frames are not captured");
      return;
    }
    if (len_ + rec > buf_.size()) flush();
    if (stopped_) return;
    const uint64_t t = nowNs(CLOCK_REALTIME);
    const uint32_t hdr[4] = {static_cast<uint32_t>(t / 1000000000ull), static_cast<uint32_t>(t % 1000000000ull), incl, len};
    memcpy(&buf_[len_], hdr, 16);
    memcpy(&buf_[len_ + 16], frame, incl);
    len_ += rec;
  }

  void maybeFlush() {
    if (len_ == 0) return;
    if (len_ >= FLUSH_AFTER || nowNs(CLOCK_MONOTONIC) - lastFlush_ >= FLUSH_NS) flush();
  }

  void flush() {
    size_t off = 0;
    while (off < len_ && fd_ >= 0 && !stopped_) {
      const ssize_t n = write(fd_, &buf_[off], len_ - off);
      if (n > 0) {
        off += static_cast<size_t>(n);
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else {
        stop(std::string("could not be written (") + (n < 0 ? strerror(errno) : "no progress") + "): later frames are not captured");
      }
    }
    written_ += off;
    len_ = 0;
    lastFlush_ = nowNs(CLOCK_MONOTONIC);
  }

  // Said once: capture ends, the link goes on.
  void stop(const std::string& why) {
    stopped_ = true;
    fprintf(stderr, "moat: pcap %s %s\n", path_.c_str(), why.c_str());
  }

  Link* in_;
  int fd_;
  std::string path_;
  uint64_t max_;
  std::vector<uint8_t> buf_;
  size_t len_ = 0;
  uint64_t written_ = 0;
  uint64_t lastFlush_ = 0;
  bool stopped_ = false;
};

Link* newPcapLink(Link* inner, const std::string& path, uint64_t maxBytes, std::string& err) {
  if (maxBytes && maxBytes < 24) {
    err = "the pcap size bound must be at least 24 bytes (the file header)";
    return nullptr;
  }
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    err = "cannot open pcap file " + path + ": " + strerror(errno);
    return nullptr;
  }
  return new PcapLink(inner, fd, path, maxBytes);
}

// ---- faults --------------------------------------------------------------------------------------
//
// Each direction draws from its own xorshift64* stream (seeded from the spec's seed), so a seed
// replays the same faults for the same frame sequence. Per frame, in this order: drop; corrupt
// (one byte past the Ethernet header XORed with a non-zero value, so the frame still reaches the
// engine or the guest's stack and its checksum must catch it); duplicate (delivered twice in a
// row); reorder (held until the next frame has passed, or REORDER_MAX_NS); delay (held delayMs).
// A blackout (blackoutMs after the decorator went on) drops everything from then on: the guest,
// as far as the world can tell, has vanished.
// Held frames are released by a timerfd in the link's epoll range. Back-pressure is kept: a frame
// the inner link refuses stays in the data path's TX ring (send returns false), and released
// frames the inner link cannot take wait in order, ahead of new ones.

class FaultLink final : public Link {
 public:
  static constexpr size_t HELD_MAX = 4096;
  static constexpr size_t HELD_BYTES_MAX = 64u << 20;
  static constexpr uint64_t REORDER_MAX_NS = 10000000;  // 10 ms

  FaultLink(Link* inner, const FaultSpec& spec, int epfd, uint64_t base) : in_(inner), spec_(spec), epfd_(epfd) {
    if (spec.blackoutMs) blackoutAt_ = nowNs(CLOCK_MONOTONIC) + static_cast<uint64_t>(spec.blackoutMs) * 1000000ull;
    counters = inner->counters;
    rng_[0] = mix(spec.seed ^ 0x6d6f6174ull);
    rng_[1] = mix(spec.seed ^ 0x67756573ull);
    tfd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (tfd_ >= 0) epollSet(epfd, EPOLL_CTL_ADD, tfd_, EPOLLIN, base + FAULT_TIMER_SUB);
  }
  ~FaultLink() override {
    close();
    delete in_;
  }

  void watch(int epfd, uint64_t base) override { in_->watch(epfd, base); }

  uint32_t event(uint32_t sub, uint32_t events) override {
    if (sub != FAULT_TIMER_SUB) {
      const uint32_t r = in_->event(sub, events);
      if ((r & LINK_WRITABLE) && !drainOut()) return r & ~LINK_WRITABLE;
      return r;
    }
    uint64_t ticks;
    while (read(tfd_, &ticks, sizeof ticks) > 0) {}
    const uint64_t now = nowNs(CLOCK_MONOTONIC);
    release(dir_[IN], now);
    release(dir_[OUT], now);
    uint32_t r = 0;
    if (!dir_[IN].ready.empty()) r |= LINK_READABLE;
    if (!dir_[OUT].ready.empty()) {
      if (drainOut()) r |= LINK_WRITABLE;
      in_->sendDone();
    }
    arm();
    return r;
  }

  uint32_t recv(uint8_t* buf, uint32_t cap) override {
    Dir& d = dir_[IN];
    for (;;) {
      if (!d.ready.empty()) {
        Held h = std::move(d.ready.front());
        d.ready.pop_front();
        d.bytes -= h.bytes.size();
        if (h.bytes.size() > cap) {
          counters.bump(counters.malformed);
          continue;
        }
        memcpy(buf, h.bytes.data(), h.bytes.size());
        return static_cast<uint32_t>(h.bytes.size());
      }
      const uint32_t n = in_->recv(buf, cap);
      if (n == 0) return 0;
      // A faulty wire carries whole checksums, which the engine then verifies (recvFlags(): 0):
      // what the guest's kernel left to the NIC is filled in here, before any corruption.
      if (in_->recvFlags() & lay::RX_F_CSUM_LEFT) completeL4Checksum(buf, n);
      if (!spec_.toEngine) return n;
      switch (decide(IN, buf, n)) {
        case PASS: afterPass(d); return n;
        case DUP: hold(d, buf, n, 0, true); afterPass(d); return n;
        case HELD: continue;
        case DROPPED: continue;
      }
    }
  }
  void recvDone() override { in_->recvDone(); }
  bool recvPending() const override { return !dir_[IN].ready.empty() || in_->recvPending(); }

  bool send(const uint8_t* frame, uint32_t len) override {
    Dir& d = dir_[OUT];
    if (!drainOut()) return false;
    if (!spec_.toGuest) return in_->send(frame, len);
    scratch_.assign(frame, frame + len);
    switch (decide(OUT, scratch_.data(), len)) {
      case DROPPED:
      case HELD:
        return true;
      case DUP:
        if (!handOn(scratch_.data(), len)) return false;
        handOn(scratch_.data(), len);
        afterPass(d);
        return true;
      case PASS:
        if (!handOn(scratch_.data(), len)) return false;
        afterPass(d);
        return true;
    }
    return true;
  }
  void sendDone() override {
    drainOut();
    in_->sendDone();
  }

  void closeDeferring() override {
    in_->closeDeferring();
    close();  // (the inner link's close is a no-op now)
  }
  void close() override {
    in_->close();
    if (tfd_ >= 0) ::close(tfd_);  // leaves the epoll set with it
    tfd_ = -1;
    for (Dir& d : dir_) {
      d.held.clear();
      d.ready.clear();
      d.bytes = 0;
    }
  }

 private:
  enum { IN = 0, OUT = 1 };
  enum Verdict { PASS, DUP, HELD, DROPPED };
  struct Held {
    std::vector<uint8_t> bytes;
    uint64_t due = 0;        // release time (ns, monotonic)
    bool untilNext = false;  // a reordered frame: released once the next frame passed
  };
  struct Dir {
    std::deque<Held> held;   // waiting for their time (or the next frame)
    std::deque<Held> ready;  // released, in delivery order
    size_t bytes = 0;
  };

  static uint64_t mix(uint64_t z) {  // splitmix64: a seed of 0 still gives a good state
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (z ^ (z >> 31)) | 1;
  }
  uint64_t next(int dir) {
    uint64_t& x = rng_[dir];
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    return x * 0x2545f4914f6cdd1dull;
  }
  bool roll(int dir, double p) { return p > 0 && static_cast<double>(next(dir) >> 11) * 0x1.0p-53 < p; }

  Verdict decide(int dir, uint8_t* frame, uint32_t len) {
    Dir& d = dir_[dir];
    if (blackoutAt_ && nowNs(CLOCK_MONOTONIC) >= blackoutAt_) return DROPPED;
    if (roll(dir, spec_.drop)) return DROPPED;
    if (len > 14 && roll(dir, spec_.corrupt)) {
      const uint64_t r = next(dir);
      frame[14 + r % (len - 14)] ^= static_cast<uint8_t>(1 + (r >> 32) % 255);
    }
    const bool room = d.held.size() + d.ready.size() < HELD_MAX && d.bytes + len <= HELD_BYTES_MAX;
    if (room && roll(dir, spec_.dup)) return DUP;
    if (room && roll(dir, spec_.reorder)) {
      hold(d, frame, len, nowNs(CLOCK_MONOTONIC) + REORDER_MAX_NS, false, true);
      return HELD;
    }
    if (room && roll(dir, spec_.delay)) {
      hold(d, frame, len, nowNs(CLOCK_MONOTONIC) + static_cast<uint64_t>(spec_.delayMs) * 1000000ull, false);
      return HELD;
    }
    return PASS;
  }

  void hold(Dir& d, const uint8_t* frame, uint32_t len, uint64_t due, bool readyNow, bool untilNext = false) {
    Held h;
    h.bytes.assign(frame, frame + len);
    h.due = due;
    h.untilNext = untilNext;
    d.bytes += len;
    if (readyNow) {
      d.ready.push_back(std::move(h));
    } else {
      d.held.push_back(std::move(h));
      arm();
    }
  }

  // A frame passed: reordered frames waiting for it go next.
  void afterPass(Dir& d) {
    for (auto it = d.held.begin(); it != d.held.end();) {
      if (it->untilNext) {
        d.ready.push_back(std::move(*it));
        it = d.held.erase(it);
      } else {
        ++it;
      }
    }
  }

  void release(Dir& d, uint64_t now) {
    for (auto it = d.held.begin(); it != d.held.end();) {
      if (it->due <= now) {
        d.ready.push_back(std::move(*it));
        it = d.held.erase(it);
      } else {
        ++it;
      }
    }
  }

  // Frames released toward the guest go first; false while the inner link cannot take them.
  bool drainOut() {
    Dir& d = dir_[OUT];
    while (!d.ready.empty()) {
      Held& h = d.ready.front();
      if (!handOn(h.bytes.data(), static_cast<uint32_t>(h.bytes.size()))) return false;
      d.bytes -= h.bytes.size();
      d.ready.pop_front();
    }
    return true;
  }

  // A frame of this decorator's own (a copy it reuses or frees) to the guest. The inner link may
  // keep a pointer to what send() gave it until its sendDone() (the packet link batches them
  // for sendmmsg): each such frame is flushed at once.
  bool handOn(const uint8_t* frame, uint32_t len) {
    const bool taken = in_->send(frame, len);
    in_->sendDone();
    return taken;
  }

  void arm() {
    if (tfd_ < 0) return;
    uint64_t earliest = 0;
    for (const Dir& d : dir_)
      for (const Held& h : d.held)
        if (earliest == 0 || h.due < earliest) earliest = h.due;
    struct itimerspec its = {};
    if (earliest) {
      its.it_value.tv_sec = static_cast<time_t>(earliest / 1000000000ull);
      its.it_value.tv_nsec = static_cast<long>(earliest % 1000000000ull);
    }
    timerfd_settime(tfd_, TFD_TIMER_ABSTIME, &its, nullptr);  // 0: disarmed
  }

  Link* in_;
  FaultSpec spec_;
  int epfd_;
  int tfd_ = -1;
  uint64_t rng_[2];
  uint64_t blackoutAt_ = 0;
  Dir dir_[2];
  std::vector<uint8_t> scratch_;
};

Link* newFaultLink(Link* inner, const FaultSpec& spec, int epfd, uint64_t base) { return new FaultLink(inner, spec, epfd, base); }

}  // namespace moat
