// vhost-user.cc — moat as a vhost-user-net back-end (link.h, DESIGN §3).
//
// moat listens on a unix socket; the VMM (QEMU `-netdev vhost-user`, cloud-hypervisor) connects
// as the front-end, shares the guest's memory (fds over SCM_RIGHTS) and describes one queue
// pair of split virtqueues in it. Frames are copied between those queues and the engine's rings:
//   queue 0, the guest's RX: send()  takes the guest's receive buffers, writes header + frame
//   queue 1, the guest's TX: recv()  pops a transmit chain, copies the frame minus its header
// Kicks (eventfds the guest's notifications arrive on) sit in the data path's epoll set; calls
// (eventfds that interrupt the guest) are signalled once per batch.
//
// Features offered, and why:
//   VIRTIO_F_VERSION_1            modern virtio: little-endian, 12-byte virtio-net header
//   VHOST_USER_F_PROTOCOL_FEATURES  for REPLY_ACK and NET_MTU below (rings then start disabled
//                                 and run once SET_VRING_ENABLE(1), as the spec says; QEMU sends
//                                 that before SET_FEATURES, so it is kept whenever it comes)
//   VIRTIO_NET_F_MRG_RXBUF        a frame may span several receive buffers: moat's MTU is up to
//                                 65520, and guests post buffers of a page or so
//   VIRTIO_NET_F_MTU              lets the VMM pass its `host_mtu=` on to the guest (QEMU owns the
//                                 virtio-net config space for vhost-user-net and masks off feature
//                                 bits its back-end lacks; GET_CONFIG is not involved). Without
//                                 host_mtu the guest learns the MTU from DHCP option 26.
//   VIRTIO_RING_F_EVENT_IDX       fewer kicks and interrupts (used_event / avail_event)
//   VIRTIO_RING_F_INDIRECT_DESC   indirect descriptor tables, validated like direct chains
//   VIRTIO_NET_F_CSUM             the guest may leave checksums to the device (NEEDS_CSUM): its
//                                 frame's own TCP/UDP one the engine then does not verify (it ends
//                                 that TCP or UDP: RX_F_CSUM_LEFT), any other is filled in here
//                                 (takeLeftChecksum, link.h)
//   VIRTIO_NET_F_GUEST_CSUM       moat may leave those of the segments it sends (NEEDS_CSUM,
//                                 takesCsumLeft): the guest's driver sums nothing for local delivery
// Not offered: segmentation offloads (HOST_TSO*, GUEST_TSO*, UFO/USO): frames stay within the MTU,
// which the engine expects. No MQ (one queue pair), no LOG_ALL / LOG_SHMFD (no live migration), no
// IOMMU_PLATFORM, no packed rings.
// Protocol features offered: REPLY_ACK (need_reply answered with a u64, 0 = done), NET_MTU
// (VHOST_USER_NET_SET_MTU: an MTU above this link's is refused, so QEMU reports the mismatch).
// CONFIG is not offered (QEMU answers the guest's config reads itself).
//
// What the front-end may and may not do. Control messages are validated before anything is
// done with them: the version, the size field against what the request carries (a payload of
// exactly that size is then read, however it is split across reads), fds against what the
// request takes (others are closed), ring sizes (a power of two, 1..32768), ring addresses
// (aligned, inside one region of the memory table), regions (at most 8, no overflow, within
// their file, the file sealed against shrinking — a mapping whose file shrank would fault on
// access, so moat seals a memfd itself when it can and refuses memory it cannot keep mapped).
// A message that breaks these rules is malformed: counted (LINK_MALFORMED), the connection is
// dropped and all device state reset (memory unmapped, eventfds closed, rings forgotten), and
// the next connection is waited for; a front-end restarting (QEMU reconnect=1) starts afresh.
// Requests not offered are answered with failure when a reply is asked for, else ignored.
//
// What the guest may and may not do. Every descriptor is read once into local memory and
// checked before its buffer is touched: the head and every `next` inside the table, chains no
// longer than the table (loops end there), buffers entirely inside the memory table (64-bit
// arithmetic: an address plus a length that overflows is out of range), only device-readable
// buffers in a TX chain and only device-writable ones in an RX chain, indirect tables only when
// negotiated, never nested or combined with NEXT, a whole number of descriptors long (the
// "misaligned" case) and inside memory; a TX frame must fit a ring slot and carry at least an
// Ethernet header after the virtio-net header. A chain that fails is consumed (returned used
// with length 0) and counted as malformed, and processing goes on. An avail index more than
// the queue size ahead of moat's own is not acted on (counted once) until it is sane again.
// A frame for a guest without enough receive buffers waits (send() is refused until the guest
// kicks its RX queue); one that no ring of its buffers could hold, or that arrives while no ring
// runs, is dropped and counted (LINK_TX_ERRORS).
//
// QEMU: guest RAM must be shared memfd memory (`-object memory-backend-memfd,id=mem,size=..,
// share=on -machine memory-backend=mem`; its default seal=on is what moat checks for). QEMU 7.2
// under TCG crashes in its own MSI-X set-up as a vhost-user device starts, whatever the
// back-end: give the device `vectors=0` there (INTx). `host_mtu=N` (N <= this link's MTU) hands
// the MTU to the guest through the config space.
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <vector>

#include "link.h"

namespace moat {

namespace {

// ---- protocol constants (QEMU docs/interop/vhost-user.rst) ----------------------------------------

enum : uint32_t {
  VU_GET_FEATURES = 1,
  VU_SET_FEATURES = 2,
  VU_SET_OWNER = 3,
  VU_RESET_OWNER = 4,
  VU_SET_MEM_TABLE = 5,
  VU_SET_LOG_BASE = 6,
  VU_SET_LOG_FD = 7,
  VU_SET_VRING_NUM = 8,
  VU_SET_VRING_ADDR = 9,
  VU_SET_VRING_BASE = 10,
  VU_GET_VRING_BASE = 11,
  VU_SET_VRING_KICK = 12,
  VU_SET_VRING_CALL = 13,
  VU_SET_VRING_ERR = 14,
  VU_GET_PROTOCOL_FEATURES = 15,
  VU_SET_PROTOCOL_FEATURES = 16,
  VU_GET_QUEUE_NUM = 17,
  VU_SET_VRING_ENABLE = 18,
  VU_NET_SET_MTU = 20,
};

constexpr uint32_t HDR_BYTES = 12;            // request, flags, size
constexpr uint32_t MAX_PAYLOAD = 4096;        // every request moat knows is far smaller
constexpr uint32_t FLAG_VERSION_MASK = 0x3, VERSION = 0x1, FLAG_REPLY = 0x4, FLAG_NEED_REPLY = 0x8;
constexpr uint32_t MAX_FDS = 8;
constexpr uint32_t MAX_REGIONS = 8;
constexpr uint32_t REGION_BYTES = 32;         // guest_phys_addr, memory_size, userspace_addr, mmap_offset
constexpr uint64_t VRING_IDX_MASK = 0xff, VRING_NOFD = 0x100;
constexpr uint32_t MAX_QUEUE_SIZE = 32768;

constexpr uint64_t bit(unsigned n) { return 1ull << n; }
constexpr uint64_t MAX_GUEST_MEMORY = 1ull << 40;  // 1 TiB of guest memory per front-end, mapped
constexpr unsigned F_CSUM = 0, F_GUEST_CSUM = 1, F_NET_MTU = 3, F_MRG_RXBUF = 15, F_INDIRECT_DESC = 28, F_EVENT_IDX = 29, F_PROTOCOL_FEATURES = 30,
                   F_VERSION_1 = 32;
constexpr uint64_t OFFERED_FEATURES = bit(F_VERSION_1) | bit(F_PROTOCOL_FEATURES) | bit(F_MRG_RXBUF) | bit(F_NET_MTU) |
                                      bit(F_EVENT_IDX) | bit(F_INDIRECT_DESC) | bit(F_CSUM) | bit(F_GUEST_CSUM);
// virtio-net header (virtio 1.x §5.1.6): flags, gso_type, hdr_len, gso_size, csum_start,
// csum_offset (little-endian), then num_buffers (12-byte form); its flags are link.h's VNET_*.
constexpr unsigned PF_REPLY_ACK = 3, PF_NET_MTU = 4;
constexpr uint64_t OFFERED_PROTOCOL = bit(PF_REPLY_ACK) | bit(PF_NET_MTU);

// Split virtqueue layout (virtio 1.x §2.7).
constexpr uint16_t DESC_F_NEXT = 1, DESC_F_WRITE = 2, DESC_F_INDIRECT = 4;
constexpr uint16_t AVAIL_F_NO_INTERRUPT = 1;
constexpr uint32_t DESC_BYTES = 16;

struct Desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(Desc) == DESC_BYTES, "virtq_desc is 16 bytes");

inline uint16_t load16(const uint8_t* p) { return __atomic_load_n(reinterpret_cast<const uint16_t*>(p), __ATOMIC_RELAXED); }
inline void store16(uint8_t* p, uint16_t v) { __atomic_store_n(reinterpret_cast<uint16_t*>(p), v, __ATOMIC_RELAXED); }
inline void store32(uint8_t* p, uint32_t v) { __atomic_store_n(reinterpret_cast<uint32_t*>(p), v, __ATOMIC_RELAXED); }

// vring_need_event: has the index moved past `event` in going from `old` to `now`?
inline bool needEvent(uint16_t event, uint16_t now, uint16_t old) {
  return static_cast<uint16_t>(now - event - 1) < static_cast<uint16_t>(now - old);
}


void closeFd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

struct Region {
  uint64_t gpa = 0, size = 0, uva = 0;
  uint8_t* host = nullptr;  // gpa's byte in our mapping
  void* map = nullptr;
  size_t mapLen = 0;
};

struct Vring {
  uint32_t num = 0;                             // 0 = not set
  uint64_t descUser = 0, availUser = 0, usedUser = 0;  // front-end addresses
  bool addrSet = false;
  uint8_t* desc = nullptr;                      // translated (nullptr until possible)
  uint8_t* avail = nullptr;
  uint8_t* used = nullptr;
  uint16_t lastAvail = 0;                       // the next avail entry to take
  uint16_t usedIdx = 0;                         // moat's used index (published at flush)
  uint16_t publishedUsed = 0;                   // what the guest has seen
  uint16_t signalledUsed = 0;
  bool signalledValid = false;
  bool started = false;                         // kick received, not stopped by GET_VRING_BASE
  bool enabled = false;                         // SET_VRING_ENABLE (with PROTOCOL_FEATURES)
  bool availBad = false;                        // avail index insane: counted once
  int kick = -1, call = -1, err = -1;
  bool kickWatched = false;
};

// One buffer of a chain, in our mapping of guest memory.
struct Seg {
  uint8_t* p;
  uint32_t len;
};

// What a message handler concluded.
enum class Outcome { Ok, Fail, Replied, Malformed };

class VhostUserLink final : public ListeningLink {
 public:
  enum : uint32_t { SUB_KICK = 2 };  // + queue index (after ListeningLink's)
  enum : uint32_t { RXQ = 0, TXQ = 1 };

  VhostUserLink(int lfd, const std::string& path, uint32_t mtu) : ListeningLink(lfd, path), mtu_(mtu) {
    segs_.reserve(64);
    chains_.reserve(64);
  }
  ~VhostUserLink() override { close(); }

  uint32_t event(uint32_t sub, uint32_t events) override {
    if (sub == SUB_LISTEN) {
      acceptPeers();
      return 0;
    }
    if (sub == SUB_PEER) {
      readMessages();
      // Rings may have started or stopped: let the data path look both ways (cheap if not).
      return LINK_READABLE | LINK_WRITABLE;
    }
    if (sub == SUB_KICK + RXQ || sub == SUB_KICK + TXQ) {
      Vring& q = vq_[sub - SUB_KICK];
      if (!drainKick(q, events)) return 0;
      if (sub == SUB_KICK + TXQ) return LINK_READABLE;
      if (waitingRx_) {
        waitingRx_ = false;
        return LINK_WRITABLE;
      }
    }
    return 0;
  }

  // ---- guest TX (queue 1) -> engine ----------------------------------------------------------------

  uint32_t recv(uint8_t* buf, uint32_t cap) override {
    Vring& q = vq_[TXQ];
    if (!translated(q) || !q.started) return 0;
    const bool discard = !enabled(q);  // started but disabled: TX is consumed and dropped (spec)
    for (;;) {
      uint16_t availIdx;
      if (!availIndex(q, availIdx)) {
        flushUsed(q);
        return 0;
      }
      if (availIdx == q.lastAvail) {
        // Drained: ask to be kicked at the next entry (EVENT_IDX), then look once more, since
        // the guest may have added one before it could see the request.
        if (eventIdx() && armAvailEvent(q, availIdx)) continue;
        flushUsed(q);
        return 0;
      }
      const uint16_t head = load16(q.avail + 4 + 2 * (q.lastAvail & (q.num - 1)));
      q.lastAvail++;
      segs_.clear();
      uint64_t total = 0;
      const bool ok = walkChain(q, head, false, hdrLen_ + static_cast<uint64_t>(cap), total);
      pushUsed(q, head, 0);  // a TX buffer is only read: nothing written into it
      if (discard) continue;
      if (!ok || total < hdrLen_ + 14ull) {  // bad chain, or no Ethernet header after the vnet header
        counters.bump(counters.malformed);
        continue;
      }
      uint8_t h[12];
      gather(h, hdrLen_);
      if (h[1] != VNET_GSO_NONE) {  // segmentation was never offered
        counters.bump(counters.malformed);
        continue;
      }
      // Copy the frame, skipping the header wherever the guest's descriptors split it.
      uint32_t skip = hdrLen_, out = 0;
      for (const Seg& s : segs_) {
        uint32_t from = 0;
        if (skip) {
          from = skip < s.len ? skip : s.len;
          skip -= from;
        }
        memcpy(buf + out, s.p + from, s.len - from);
        out += s.len - from;
      }
      // A checksum left to the device counts only where CSUM was negotiated (else the engine
      // verifies it, and drops a frame that lied).
      flags_ = 0;
      if ((h[0] & VNET_F_NEEDS_CSUM) && (features_ & bit(F_CSUM))) {
        flags_ = takeLeftChecksum(buf, out, le16(h + 6), le16(h + 8));
        if (flags_ == UINT32_MAX) {
          flags_ = 0;
          counters.bump(counters.malformed);  // a checksum to fill in beyond the frame
          continue;
        }
      }
      return out;
    }
  }

  uint32_t recvFlags() const override { return flags_; }

  void recvDone() override { flushUsed(vq_[TXQ]); }

  bool recvPending() const override {
    const Vring& q = vq_[TXQ];
    if (!translated(q) || !q.started) return false;
    const uint16_t a = load16(q.avail + 2);
    const uint16_t ahead = static_cast<uint16_t>(a - q.lastAvail);
    return ahead != 0 && ahead <= q.num;
  }

  // ---- engine -> guest RX (queue 0) ---------------------------------------------------------------

  bool send(const uint8_t* frame, uint32_t len) override { return deliver(frame, len, 0, 0, 0); }

  bool sendCsumLeft(uint8_t* frame, uint32_t len, uint32_t csumStart, uint32_t csumOffset) override {
    if (!(features_ & bit(F_GUEST_CSUM))) return Link::sendCsumLeft(frame, len, csumStart, csumOffset);
    return deliver(frame, len, VNET_F_NEEDS_CSUM, static_cast<uint16_t>(csumStart), static_cast<uint16_t>(csumOffset));
  }
  // (Negotiated per front-end: the data path asks again after every link event.)
  bool takesCsumLeft() const override { return features_ & bit(F_GUEST_CSUM); }

  void sendDone() override { flushUsed(vq_[RXQ]); }

 private:
  // A frame into the guest's receive buffers, after a header with `flags` (and where the
  // checksum left to the guest is to be summed and stored).
  bool deliver(const uint8_t* frame, uint32_t len, uint8_t flags, uint16_t csumStart, uint16_t csumOffset) {
    Vring& q = vq_[RXQ];
    if (!ready(q)) {
      counters.bump(counters.txErrors);  // no front-end, or its ring is not running: dropped
      return true;
    }
    const uint64_t need = hdrLen_ + static_cast<uint64_t>(len);
    uint16_t availIdx;
    if (!availIndex(q, availIdx)) {
      counters.bump(counters.txErrors);
      return true;
    }
    uint16_t start = q.lastAvail;
    uint64_t capacity = 0;
    segs_.clear();
    chains_.clear();
    while (capacity < need) {
      if (static_cast<uint16_t>(q.lastAvail - start) >= q.num) {  // a full ring cannot hold it: never will
        q.lastAvail = start;
        counters.bump(counters.txErrors);
        return true;
      }
      if (q.lastAvail == availIdx) {
        // Out of buffers: wait for the guest's kick at its next one (and look once more after
        // asking, as the guest may have posted meanwhile). Nothing of the frame is written.
        if (armRxNotify(q, availIdx)) continue;
        q.lastAvail = start;
        waitingRx_ = true;
        flushUsed(q);  // bad chains returned on the way
        return false;
      }
      const uint16_t head = load16(q.avail + 4 + 2 * (q.lastAvail & (q.num - 1)));
      q.lastAvail++;
      const size_t firstSeg = segs_.size();
      uint64_t chainBytes = 0;
      // A chain that holds no bytes is as bad as a broken one: taken and counted, never walked again.
      if (!walkChain(q, head, true, UINT64_MAX, chainBytes) || chainBytes == 0) {
        counters.bump(counters.malformed);
        segs_.resize(firstSeg);
        if (chains_.empty()) {  // nothing of this frame taken yet: return it alone, go on
          pushUsed(q, head, 0);
          start = q.lastAvail;
          continue;
        }
        // In the middle of a frame: the frame's buffers go back empty with the bad one, and
        // the frame is dropped (a guest that posts bad buffers gets no frames in them).
        for (const Chain& c : chains_) pushUsed(q, c.head, 0);
        pushUsed(q, head, 0);
        counters.bump(counters.txErrors);
        return true;
      }
      if (!mrgRxbuf() && chainBytes < need) {  // one buffer per frame, and it is too small
        q.lastAvail = start;
        counters.bump(counters.txErrors);
        return true;
      }
      chains_.push_back(Chain{head, firstSeg, 0});
      capacity += chainBytes;
    }
    // Header (num_buffers = chains used), then the frame, across the chains' buffers in order.
    uint8_t hdr[12] = {flags};
    memcpy(hdr + 6, &csumStart, 2);
    memcpy(hdr + 8, &csumOffset, 2);
    const uint16_t nbuf = static_cast<uint16_t>(chains_.size());
    memcpy(hdr + 10, &nbuf, 2);
    size_t seg = 0, chain = 0;
    uint32_t off = 0;  // into segs_[seg]
    auto put = [&](const uint8_t* src, uint32_t n) {
      while (n > 0) {
        while (off == segs_[seg].len) {
          seg++;
          off = 0;
        }
        while (chain + 1 < chains_.size() && seg >= chains_[chain + 1].firstSeg) chain++;
        const uint32_t k = n < segs_[seg].len - off ? n : segs_[seg].len - off;
        memcpy(segs_[seg].p + off, src, k);
        off += k;
        src += k;
        n -= k;
        chains_[chain].written += k;
      }
    };
    put(hdr, hdrLen_);
    put(frame, len);
    for (const Chain& c : chains_) pushUsed(q, c.head, c.written);
    return true;
  }

  // The first n bytes of the chain walked last (segs_): its virtio-net header, however split.
  void gather(uint8_t* out, uint32_t n) const {
    for (const Seg& s : segs_) {
      const uint32_t k = s.len < n ? s.len : n;
      memcpy(out, s.p, k);
      out += k;
      n -= k;
      if (!n) break;
    }
  }
  static uint16_t le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | p[1] << 8); }

  struct Chain {
    uint16_t head;
    size_t firstSeg;
    uint32_t written;
  };

  // ---- connection -----------------------------------------------------------------------------------

  void dropPeer() override {
    ListeningLink::dropPeer();
    have_ = 0;
    closeMsgFds();
    resetDevice();
  }

  void malformed() {
    counters.bump(counters.malformed);
    dropPeer();
  }

  // Everything the front-end set up goes: memory, eventfds, rings, features.
  void resetDevice() {
    for (Vring& q : vq_) {
      stopRing(q);
      closeFd(q.err);
      q = Vring{};
    }
    unmapAll(regions_);
    features_ = 0;
    protocol_ = 0;
    hdrLen_ = 12;
    waitingRx_ = false;
  }

  void stopRing(Vring& q) {
    unwatchKick(q);
    closeFd(q.kick);
    closeFd(q.call);
    q.started = false;
  }

  void unwatchKick(Vring& q) {
    if (q.kickWatched && epfd_ >= 0) epoll_ctl(epfd_, EPOLL_CTL_DEL, q.kick, nullptr);
    q.kickWatched = false;
  }

  static void unmapAll(std::vector<Region>& rs) {
    for (Region& r : rs)
      if (r.map) munmap(r.map, r.mapLen);
    rs.clear();
  }

  // ---- messages -------------------------------------------------------------------------------------

  void closeMsgFds() {
    for (int& fd : fds_) closeFd(fd);
    fds_.clear();
  }

  // Read and handle what the front-end sent (bounded per wake-up; level-triggered, so the rest
  // is read at the next).
  void readMessages() {
    for (int budget = 64; budget > 0 && pfd_ >= 0; budget--) {
      const uint32_t want = have_ < HDR_BYTES ? HDR_BYTES : HDR_BYTES + msgSize();
      struct iovec iov = {msg_ + have_, want - have_};
      alignas(struct cmsghdr) char cbuf[CMSG_SPACE(MAX_FDS * sizeof(int))];
      struct msghdr mh = {};
      mh.msg_iov = &iov;
      mh.msg_iovlen = 1;
      mh.msg_control = cbuf;
      mh.msg_controllen = sizeof cbuf;
      const ssize_t n = recvmsg(pfd_, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
      bool fdsOk = (mh.msg_flags & MSG_CTRUNC) == 0;  // more fds than any request carries
      for (struct cmsghdr* c = CMSG_FIRSTHDR(&mh); n >= 0 && c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        const size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k; i++) {
          int fd;
          memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
          fds_.push_back(fd);
        }
      }
      if (fds_.size() > MAX_FDS) fdsOk = false;
      if (n <= 0) {  // the front-end went away (mid-message: a truncated message)
        if (n < 0) counters.bump(counters.rxErrors);
        if (have_ > 0 || !fds_.empty()) counters.bump(counters.malformed);
        dropPeer();
        return;
      }
      if (!fdsOk) return malformed();
      have_ += static_cast<uint32_t>(n);
      if (have_ == HDR_BYTES && !headerValid()) return malformed();
      if (have_ < HDR_BYTES || have_ < HDR_BYTES + msgSize()) continue;
      const uint32_t flags = msgU32(4);
      const bool needReply = (flags & FLAG_NEED_REPLY) && (protocol_ & bit(PF_REPLY_ACK));
      const Outcome o = handle(msgU32(0), msg_ + HDR_BYTES, msgSize());
      have_ = 0;
      closeMsgFds();  // whatever the request did not take
      if (o == Outcome::Malformed) return malformed();
      if (needReply && (o == Outcome::Ok || o == Outcome::Fail)) reply64(msgU32(0), o == Outcome::Ok ? 0 : 1);
    }
  }

  uint32_t msgU32(uint32_t off) const {
    uint32_t v;
    memcpy(&v, msg_ + off, 4);
    return v;
  }
  uint32_t msgSize() const { return msgU32(8); }

  // The header alone says whether the message can be right: the version, and the size the
  // request carries (checked before any payload is read, so a size larger than what follows
  // never makes moat wait for, or read, the next message as this one's payload).
  bool headerValid() const {
    if ((msgU32(4) & FLAG_VERSION_MASK) != VERSION) return false;
    const uint32_t size = msgSize();
    if (size > MAX_PAYLOAD) return false;
    switch (msgU32(0)) {
      case VU_GET_FEATURES:
      case VU_GET_PROTOCOL_FEATURES:
      case VU_SET_OWNER:
      case VU_RESET_OWNER:
      case VU_GET_QUEUE_NUM:
        return size == 0;
      case VU_SET_FEATURES:
      case VU_SET_PROTOCOL_FEATURES:
      case VU_SET_VRING_KICK:
      case VU_SET_VRING_CALL:
      case VU_SET_VRING_ERR:
      case VU_SET_VRING_NUM:
      case VU_SET_VRING_BASE:
      case VU_GET_VRING_BASE:
      case VU_SET_VRING_ENABLE:
      case VU_NET_SET_MTU:
        return size == 8;
      case VU_SET_VRING_ADDR:
        return size == 40;
      case VU_SET_MEM_TABLE:
        return size >= 8 && size <= 8 + MAX_REGIONS * REGION_BYTES && (size - 8) % REGION_BYTES == 0;
      default:
        return true;  // not offered: read and answered with failure, or ignored
    }
  }

  static uint64_t u64At(const uint8_t* p, uint32_t off) {
    uint64_t v;
    memcpy(&v, p + off, 8);
    return v;
  }
  static uint32_t u32At(const uint8_t* p, uint32_t off) {
    uint32_t v;
    memcpy(&v, p + off, 4);
    return v;
  }

  Outcome handle(uint32_t req, const uint8_t* p, uint32_t size) {
    switch (req) {
      case VU_GET_FEATURES:
        return reply64(req, OFFERED_FEATURES);
      case VU_SET_FEATURES: {
        const uint64_t f = u64At(p, 0);
        if (f & ~OFFERED_FEATURES) return Outcome::Malformed;  // acked what was never offered
        features_ = f;
        hdrLen_ = (f & (bit(F_VERSION_1) | bit(F_MRG_RXBUF))) ? 12 : 10;
        return translateAll() ? Outcome::Ok : Outcome::Malformed;  // ring sizes depend on EVENT_IDX
      }
      case VU_SET_OWNER:
        return Outcome::Ok;
      case VU_RESET_OWNER:
        resetDevice();
        return Outcome::Ok;
      case VU_GET_PROTOCOL_FEATURES:
        return reply64(req, OFFERED_PROTOCOL);
      case VU_SET_PROTOCOL_FEATURES: {
        const uint64_t f = u64At(p, 0);
        if (f & ~OFFERED_PROTOCOL) return Outcome::Malformed;
        protocol_ = f;
        return Outcome::Ok;
      }
      case VU_SET_MEM_TABLE:
        return setMemTable(p, size);
      case VU_SET_VRING_NUM: {
        Vring* q = ringAt(u32At(p, 0));
        const uint32_t num = u32At(p, 4);
        if (!q || q->started || num == 0 || num > MAX_QUEUE_SIZE || (num & (num - 1)) != 0) return Outcome::Malformed;
        q->num = num;
        return translateAll() ? Outcome::Ok : Outcome::Malformed;
      }
      case VU_SET_VRING_ADDR: {
        Vring* q = ringAt(u32At(p, 0));
        if (!q || u32At(p, 4) != 0) return Outcome::Malformed;  // flags: LOG (not offered)
        q->descUser = u64At(p, 8);
        q->usedUser = u64At(p, 16);
        q->availUser = u64At(p, 24);
        q->addrSet = true;
        if (!translateAll()) return Outcome::Malformed;
        if (q->used) q->usedIdx = q->publishedUsed = load16(q->used + 2);
        return Outcome::Ok;
      }
      case VU_SET_VRING_BASE: {
        Vring* q = ringAt(u32At(p, 0));
        const uint32_t base = u32At(p, 4);
        if (!q || q->started || base > 0xffff) return Outcome::Malformed;
        q->lastAvail = static_cast<uint16_t>(base);
        return Outcome::Ok;
      }
      case VU_GET_VRING_BASE: {
        Vring* q = ringAt(u32At(p, 0));
        if (!q) return Outcome::Malformed;
        flushUsed(*q);  // nothing is held back, but be sure the guest saw every completion
        stopRing(*q);
        if (q == &vq_[RXQ]) waitingRx_ = false;
        uint8_t state[8];
        memcpy(state, p, 4);
        const uint32_t base = q->lastAvail;
        memcpy(state + 4, &base, 4);
        return replyBytes(req, state, 8);
      }
      case VU_SET_VRING_KICK:
      case VU_SET_VRING_CALL:
      case VU_SET_VRING_ERR:
        return setVringFd(req, u64At(p, 0));
      case VU_GET_QUEUE_NUM:
        return reply64(req, 1);
      case VU_SET_VRING_ENABLE: {
        Vring* q = ringAt(u32At(p, 0));
        const uint32_t on = u32At(p, 4);
        if (!q || on > 1) return Outcome::Malformed;
        // Kept whatever the features: QEMU enables rings before it sends SET_FEATURES. The flag
        // matters only once PROTOCOL_FEATURES is acked (without it rings are always enabled).
        q->enabled = on == 1;
        return Outcome::Ok;
      }
      case VU_NET_SET_MTU: {
        if (!(protocol_ & bit(PF_NET_MTU))) return Outcome::Fail;
        const uint64_t mtu = u64At(p, 0);
        return mtu >= 68 && mtu <= mtu_ ? Outcome::Ok : Outcome::Fail;
      }
      default:  // SET_LOG_BASE, SET_LOG_FD and anything else not offered
        return Outcome::Fail;
    }
  }

  Vring* ringAt(uint32_t index) { return index < 2 ? &vq_[index] : nullptr; }

  Outcome setMemTable(const uint8_t* p, uint32_t size) {
    const uint32_t n = u32At(p, 0);
    if (n == 0 || n > MAX_REGIONS || size != 8 + n * REGION_BYTES || fds_.size() != n) return Outcome::Malformed;
    std::vector<Region> fresh;
    fresh.reserve(n);
    uint64_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
      const uint8_t* r = p + 8 + i * REGION_BYTES;
      Region g;
      g.gpa = u64At(r, 0);
      g.size = u64At(r, 8);
      g.uva = u64At(r, 16);
      const uint64_t off = u64At(r, 24);
      // Address space is shared by every engine of the process: a front-end gets what a guest
      // could use (MAX_GUEST_MEMORY in all), not what it asks for.
      total += g.size > MAX_GUEST_MEMORY ? MAX_GUEST_MEMORY + 1 : g.size;
      if (total > MAX_GUEST_MEMORY || !mapRegion(g, off, fds_[i])) {
        unmapAll(fresh);
        return Outcome::Malformed;
      }
      fresh.push_back(g);
    }
    std::vector<Region> old;
    old.swap(regions_);
    regions_.swap(fresh);
    if (!translateAll()) {  // a running ring's memory is gone
      unmapAll(old);
      return Outcome::Malformed;
    }
    unmapAll(old);
    return Outcome::Ok;
  }

  // Map one region of the memory table. The file must hold it and be sealed against shrinking:
  // a mapping past the end of its file faults (SIGBUS) on access, and the front-end keeps the
  // fd. QEMU's memory-backend-memfd seals by default; a sealable memfd is sealed here.
  static bool mapRegion(Region& g, uint64_t off, int fd) {
    if (g.size == 0 || g.size > UINT64_MAX - g.gpa || g.size > UINT64_MAX - g.uva || off > UINT64_MAX - g.size) return false;
    const uint64_t end = off + g.size;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < 0 || static_cast<uint64_t>(st.st_size) < end) return false;
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0) return false;
    if (!(seals & F_SEAL_SHRINK)) {
      if ((seals & F_SEAL_SEAL) || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) != 0) return false;
      if (fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) < end) return false;  // shrunk meanwhile
    }
    if (end > SIZE_MAX) return false;
    // Only the region is mapped (from the page its offset lies in), not the file before it.
    const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    const uint64_t base = off & ~(page - 1);
    void* m = mmap(nullptr, static_cast<size_t>(end - base), PROT_READ | PROT_WRITE, MAP_SHARED, fd, static_cast<off_t>(base));
    if (m == MAP_FAILED) return false;
    g.map = m;
    g.mapLen = static_cast<size_t>(end - base);
    g.host = static_cast<uint8_t*>(m) + (off - base);
    return true;
  }

  // Our pointer to [a, a + len) of the front-end's address space (`byUva`) or of guest physical
  // memory, if it lies inside one region; nullptr otherwise.
  uint8_t* translate(uint64_t a, uint64_t len, bool byUva) const {
    for (const Region& r : regions_) {
      const uint64_t base = byUva ? r.uva : r.gpa;
      if (a >= base && a - base < r.size && len <= r.size - (a - base)) return r.host + (a - base);
    }
    return nullptr;
  }

  // (Re)compute the rings' pointers: after the memory table, a ring's size, its addresses or the
  // features (EVENT_IDX adds a field to both rings) change. False if a ring's addresses are set
  // and a memory table exists but the ring does not lie inside it, or is misaligned.
  bool translateAll() {
    for (Vring& q : vq_) {
      q.desc = q.avail = q.used = nullptr;
      if (!q.addrSet || q.num == 0 || regions_.empty()) continue;
      const uint64_t ev = eventIdx() ? 2 : 0;
      if (q.descUser % 16 || q.availUser % 2 || q.usedUser % 4) return false;
      uint8_t* d = translate(q.descUser, 16ull * q.num, true);
      uint8_t* a = translate(q.availUser, 4 + 2ull * q.num + ev, true);
      uint8_t* u = translate(q.usedUser, 4 + 8ull * q.num + ev, true);
      if (!d || !a || !u) return false;
      q.desc = d;
      q.avail = a;
      q.used = u;
    }
    return true;
  }

  Outcome setVringFd(uint32_t req, uint64_t v) {
    Vring* q = ringAt(static_cast<uint32_t>(v & VRING_IDX_MASK));
    const bool nofd = v & VRING_NOFD;
    if (!q || (v & ~(VRING_IDX_MASK | VRING_NOFD)) || fds_.size() != (nofd ? 0u : 1u)) return Outcome::Malformed;
    int fd = -1;
    if (!nofd) {
      fd = fds_[0];
      // An eventfd is an anonymous inode (no file type bits): a pipe, socket or file is refused
      // (a read or write on it could block, or raise SIGPIPE).
      struct stat st;
      if (fstat(fd, &st) != 0 || (st.st_mode & S_IFMT) != 0) return Outcome::Malformed;
      fds_.clear();
      fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    }
    if (req == VU_SET_VRING_CALL) {
      closeFd(q->call);
      q->call = fd;
      return Outcome::Ok;
    }
    if (req == VU_SET_VRING_ERR) {
      closeFd(q->err);
      q->err = fd;
      return Outcome::Ok;
    }
    // KICK: the ring starts (without an fd, it is polled: moat looks at each wake-up).
    unwatchKick(*q);
    closeFd(q->kick);
    q->kick = fd;
    if (fd >= 0) {
      struct epoll_event ev = {};
      ev.events = EPOLLIN;
      ev.data.u64 = base_ + SUB_KICK + static_cast<uint32_t>(q - vq_);
      q->kickWatched = epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) == 0;
    }
    if (!q->started) {
      q->started = true;
      q->signalledValid = false;
      q->availBad = false;
      if (q->used) {
        q->usedIdx = q->publishedUsed = load16(q->used + 2);
        if (eventIdx()) {  // kick at the next entry, whatever was left there
          store16(q->used + 4 + 8 * q->num, load16(q->avail + 2));
          std::atomic_thread_fence(std::memory_order_seq_cst);
        }
      }
    }
    return Outcome::Ok;
  }

  // Clear a kick. False if the fd misbehaves (it then leaves the epoll set: the ring is polled).
  bool drainKick(Vring& q, uint32_t events) {
    if (q.kick < 0) return false;
    uint64_t v;
    const ssize_t n = read(q.kick, &v, sizeof v);
    if (n == static_cast<ssize_t>(sizeof v) || (n < 0 && errno == EAGAIN)) return true;
    if ((events & (EPOLLERR | EPOLLHUP)) || n >= 0 || errno != EINTR) {
      counters.bump(counters.malformed);
      unwatchKick(q);
      return false;
    }
    return true;
  }

  Outcome reply64(uint32_t req, uint64_t v) {
    uint8_t b[8];
    memcpy(b, &v, 8);
    return replyBytes(req, b, 8);
  }

  Outcome replyBytes(uint32_t req, const uint8_t* payload, uint32_t size) {
    uint8_t out[HDR_BYTES + 16];
    const uint32_t hdr[3] = {req, VERSION | FLAG_REPLY, size};
    memcpy(out, hdr, HDR_BYTES);
    memcpy(out + HDR_BYTES, payload, size);
    const ssize_t n = ::send(pfd_, out, HDR_BYTES + size, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n != static_cast<ssize_t>(HDR_BYTES + size)) {
      // A front-end that does not read its replies (or has gone): it cannot be served.
      counters.bump(counters.rxErrors);
      dropPeer();
    }
    return Outcome::Replied;
  }

  // ---- rings --------------------------------------------------------------------------------------

  bool eventIdx() const { return features_ & bit(F_EVENT_IDX); }
  bool mrgRxbuf() const { return features_ & bit(F_MRG_RXBUF); }
  static bool translated(const Vring& q) { return q.desc != nullptr; }
  bool enabled(const Vring& q) const { return q.enabled || !(features_ & bit(F_PROTOCOL_FEATURES)); }
  bool ready(const Vring& q) const { return pfd_ >= 0 && translated(q) && q.started && enabled(q); }

  // The guest's avail index, if sane (at most a ring's worth ahead of ours). The acquire fence
  // orders the reads of the ring entries and descriptors after it.
  bool availIndex(Vring& q, uint16_t& idx) {
    idx = load16(q.avail + 2);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (static_cast<uint16_t>(idx - q.lastAvail) > q.num) {
      if (!q.availBad) counters.bump(counters.malformed);
      q.availBad = true;
      idx = q.lastAvail;
      return false;
    }
    q.availBad = false;
    return true;
  }

  // EVENT_IDX: ask for a kick when the guest publishes entry `idx`; true if it already has.
  bool armAvailEvent(Vring& q, uint16_t idx) {
    store16(q.used + 4 + 8 * q.num, idx);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    return load16(q.avail + 2) != idx;
  }

  // The RX ring ran dry: make sure the guest kicks when it posts buffers. Without EVENT_IDX
  // kicks are never suppressed (used->flags stays 0); with it, avail_event asks for the next.
  // True if buffers arrived meanwhile (look again).
  bool armRxNotify(Vring& q, uint16_t& availIdx) {
    if (eventIdx() && armAvailEvent(q, availIdx)) return availIndex(q, availIdx) && availIdx != q.lastAvail;
    return false;
  }

  // Note a completion; published (and the guest interrupted) by flushUsed.
  void pushUsed(Vring& q, uint16_t head, uint32_t len) {
    uint8_t* e = q.used + 4 + 8 * (q.usedIdx & (q.num - 1));
    store32(e, head);
    store32(e + 4, len);
    q.usedIdx++;
  }

  void flushUsed(Vring& q) {
    if (!translated(q) || q.usedIdx == q.publishedUsed) return;
    std::atomic_thread_fence(std::memory_order_release);  // entries before the index
    store16(q.used + 2, q.usedIdx);
    q.publishedUsed = q.usedIdx;
    // The index store before the reads of the guest's suppression fields.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    bool call;
    if (eventIdx()) {
      const uint16_t usedEvent = load16(q.avail + 4 + 2 * q.num);
      call = !q.signalledValid || needEvent(usedEvent, q.usedIdx, q.signalledUsed);
    } else {
      call = !(load16(q.avail) & AVAIL_F_NO_INTERRUPT);
    }
    q.signalledUsed = q.usedIdx;
    q.signalledValid = true;
    if (call && q.call >= 0) {
      const uint64_t one = 1;
      if (write(q.call, &one, sizeof one) < 0 && errno != EAGAIN) counters.bump(counters.txErrors);
    }
  }

  // Read descriptor `i` of a table of `n` at `table` into local memory (the guest may change it
  // under us; only the copy is used).
  static Desc readDesc(const uint8_t* table, uint32_t i) {
    Desc d;
    memcpy(&d, table + static_cast<size_t>(i) * DESC_BYTES, DESC_BYTES);
    return d;
  }

  // Walk the chain at `head`, appending its buffers to segs_ and their total to `total`.
  // `write`: an RX chain (device-writable buffers only), else TX (device-readable only). A TX
  // chain longer than `limit` is refused. False if the chain is malformed in any way.
  bool walkChain(const Vring& q, uint16_t head, bool write, uint64_t limit, uint64_t& total) {
    if (head >= q.num) return false;
    const uint8_t* table = q.desc;
    uint32_t size = q.num, i = head, hops = 0;
    bool indirect = false;
    for (;;) {
      if (++hops > size) return false;  // longer than its table: a loop
      const Desc d = readDesc(table, i);
      if (d.flags & DESC_F_INDIRECT) {
        if (indirect || !(features_ & bit(F_INDIRECT_DESC)) || (d.flags & DESC_F_NEXT)) return false;
        // No longer than the queue (virtio: a chain never is), so a table costs at most what a
        // direct chain does.
        if (d.len == 0 || d.len % DESC_BYTES || d.len / DESC_BYTES > q.num) return false;
        table = translate(d.addr, d.len, false);
        if (!table) return false;
        indirect = true;
        size = d.len / DESC_BYTES;
        i = 0;
        hops = 0;
        continue;
      }
      if (((d.flags & DESC_F_WRITE) != 0) != write) return false;
      if (d.len > 0) {
        total += d.len;
        if (total > limit) return false;
        if (!addSegs(d.addr, d.len)) return false;
      }
      if (!(d.flags & DESC_F_NEXT)) return true;
      i = d.next;
      if (i >= size) return false;
    }
  }

  // A buffer of guest physical memory as one or more segments (it may cross from one region
  // into the next where they are contiguous).
  bool addSegs(uint64_t gpa, uint32_t len) {
    if (len > UINT64_MAX - gpa) return false;
    while (len > 0) {
      const Region* hit = nullptr;
      for (const Region& r : regions_)
        if (gpa >= r.gpa && gpa - r.gpa < r.size) { hit = &r; break; }
      if (!hit) return false;
      const uint64_t room = hit->size - (gpa - hit->gpa);
      const uint32_t k = room < len ? static_cast<uint32_t>(room) : len;
      segs_.push_back(Seg{hit->host + (gpa - hit->gpa), k});
      gpa += k;
      len -= k;
    }
    return true;
  }

  uint32_t mtu_;
  // The message being read: header + payload, and the fds that came with it.
  uint8_t msg_[HDR_BYTES + MAX_PAYLOAD];
  uint32_t have_ = 0;
  std::vector<int> fds_;
  // Device state (reset when the front-end goes).
  uint64_t features_ = 0, protocol_ = 0;
  uint32_t hdrLen_ = 12;
  std::vector<Region> regions_;
  Vring vq_[2];
  bool waitingRx_ = false;
  uint32_t flags_ = 0;  // RX_F_* of the frame recv() returned last
  std::vector<Seg> segs_;
  std::vector<Chain> chains_;
};

}  // namespace

Link* newVhostUserLink(const std::string& path, uint32_t mtu, std::string& err) {
  int fd = listenUnix(path, err);
  if (fd < 0) return nullptr;
  return new VhostUserLink(fd, path, mtu);
}

}  // namespace moat
