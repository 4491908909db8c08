// link.cc — the TAP and stream links (link.h); vhost-user lives in vhost-user.cc.
#include "link.h"
#include "layout.gen.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>  // before linux/if_tun.h (which includes linux/if.h)
#include <linux/if_tun.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <vector>

namespace moat {

int listenUnix(const std::string& path, std::string& err) {
  sockaddr_un sa = {};
  sa.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(sa.sun_path)) {
    err = "socket path '" + path + "' is empty or longer than " + std::to_string(sizeof(sa.sun_path) - 1) + " bytes";
    return -ENAMETOOLONG;
  }
  memcpy(sa.sun_path, path.data(), path.size());
  // Something at the path already: only a socket nobody listens on (left by a moat that died)
  // is replaced. A file is never deleted, and a live socket is never taken over.
  struct stat st;
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      err = path + " exists and is not a socket (moat will not delete it)";
      return -EEXIST;
    }
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const bool live = probe >= 0 && connect(probe, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0;
    const int e = errno;
    if (probe >= 0) ::close(probe);
    if (live || (e != ECONNREFUSED && e != ENOENT)) {
      err = path + (live ? " is a socket something is listening on (another moat?)" : std::string(" is a socket moat cannot probe: ") + strerror(e));
      return -EADDRINUSE;
    }
    unlink(path.c_str());
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    err = std::string("socket: ") + strerror(errno);
    return -errno;
  }
  // Owner only, whatever the umask: whoever connects becomes the guest's NIC (the newest
  // connection wins). Set before listen(), so nobody connects in between.
  if (bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) < 0 || chmod(path.c_str(), 0600) < 0 || listen(fd, 4) < 0) {
    const int e = errno;
    err = "listen on " + path + ": " + strerror(e);
    ::close(fd);
    return -e;
  }
  return fd;
}

void epollSet(int epfd, int op, int fd, uint32_t events, uint64_t token) {
  struct epoll_event ev = {};
  ev.events = events;
  ev.data.u64 = token;
  epoll_ctl(epfd, op, fd, &ev);
}

// ---- links a VMM connects to ----------------------------------------------------------------------

ListeningLink::ListeningLink(int lfd, std::string path) : lfd_(lfd), path_(std::move(path)) {
  spare_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

void ListeningLink::watch(int epfd, uint64_t base) {
  epfd_ = epfd;
  base_ = base;
  epollSet(epfd, EPOLL_CTL_ADD, lfd_, EPOLLIN, base + SUB_LISTEN);
}

bool ListeningLink::acceptPeers() {
  bool took = false;
  for (;;) {
    int fd = accept4(lfd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0 && (errno == EMFILE || errno == ENFILE) && spare_ >= 0) {
      // Out of fds: the connection would stay queued and the listening socket readable, and the
      // data path would spin on it. Refuse it with the fd kept for this, then keep one again.
      ::close(spare_);
      int drop = accept4(lfd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (drop >= 0) ::close(drop);
      spare_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
      counters.bump(counters.rxErrors);
      continue;
    }
    if (fd < 0) return took;
    dropPeer();
    pfd_ = fd;
    peerAccepted();
    epollSet(epfd_, EPOLL_CTL_ADD, fd, EPOLLIN, base_ + SUB_PEER);
    counters.bump(counters.peers);
    took = true;
  }
}

void ListeningLink::dropPeer() {
  if (pfd_ >= 0) {
    if (epfd_ >= 0) epoll_ctl(epfd_, EPOLL_CTL_DEL, pfd_, nullptr);
    ::close(pfd_);
  }
  pfd_ = -1;
}

void ListeningLink::close() {
  dropPeer();
  if (spare_ >= 0) ::close(spare_);
  spare_ = -1;
  if (lfd_ >= 0) {
    ::close(lfd_);  // its epoll registration goes with it
    if (!path_.empty()) unlink(path_.c_str());
  }
  lfd_ = -1;
}

// ---- tap ----------------------------------------------------------------------------------------

// struct virtio_net_hdr (virtio 1.x §5.1.6, the legacy 10-byte form a TAP uses by default);
// linux/virtio_net.h is not C++ (a field named `class`).
struct VnetHdr {
  uint8_t flags, gsoType;
  uint16_t hdrLen, gsoSize, csumStart, csumOffset;
};
static_assert(sizeof(VnetHdr) == 10, "the TAP's vnet header is 10 bytes");

class TapLink final : public Link {
 public:
  // Frames come after a virtio-net header if the fd was opened with one (TUNGETIFF says).
  explicit TapLink(int fd) : fd_(fd) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    vnet_ = ioctl(fd, TUNGETIFF, &ifr) == 0 && (ifr.ifr_flags & IFF_VNET_HDR);
  }
  ~TapLink() override { close(); }
  void watch(int epfd, uint64_t base) override {
    epfd_ = epfd;
    base_ = base;
    epollSet(epfd, EPOLL_CTL_ADD, fd_, EPOLLIN, base);
  }
  uint32_t event(uint32_t, uint32_t events) override {
    uint32_t r = 0;
    if (events & EPOLLOUT) { watchOut(false); r |= LINK_WRITABLE; }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) r |= LINK_READABLE;
    return r;
  }
  // The device offers checksum offload (TUN_F_CSUM, no segmentation): the guest's kernel hands
  // over a TCP or UDP frame without computing its checksum (NEEDS_CSUM), where it would
  // otherwise checksum every byte it sends, and the engine, told so, does not verify it.
  uint32_t recv(uint8_t* buf, uint32_t cap) override {
    for (;;) {
      VnetHdr h = {};  // (stays zero without a header: no flags, no segmentation)
      struct iovec iov[2] = {{&h, sizeof h}, {buf, cap}};
      const size_t hdr = vnet_ ? sizeof h : 0;
      const ssize_t len = readv(fd_, vnet_ ? iov : iov + 1, vnet_ ? 2 : 1);
      if (len <= 0) {
        if (len < 0 && errno != EAGAIN && errno != EINTR) counters.bump(counters.rxErrors);
        return 0;
      }
      if (static_cast<size_t>(len) <= hdr || h.gsoType != VNET_GSO_NONE) {
        counters.bump(counters.malformed);  // no frame, or a superframe (never offered)
        continue;
      }
      const uint32_t n = static_cast<uint32_t>(len - hdr);
      flags_ = h.flags & VNET_F_NEEDS_CSUM ? takeLeftChecksum(buf, n, h.csumStart, h.csumOffset)
               : h.flags & VNET_F_DATA_VALID ? lay::RX_F_CSUM_LEFT
               : 0;
      if (flags_ == UINT32_MAX) {
        counters.bump(counters.malformed);  // a checksum to fill in beyond the frame
        continue;
      }
      return n;
    }
  }
  uint32_t recvFlags() const override { return flags_; }
  bool send(const uint8_t* frame, uint32_t len) override {
    static const VnetHdr none = {};  // complete checksums, one frame
    return write(none, frame, len);
  }
  // The guest's kernel takes the frame as its own stack's (CHECKSUM_PARTIAL): delivered to a
  // local socket it is not summed at all, forwarded it is completed on the way out.
  bool sendCsumLeft(uint8_t* frame, uint32_t len, uint32_t csumStart, uint32_t csumOffset) override {
    if (!vnet_) return Link::sendCsumLeft(frame, len, csumStart, csumOffset);
    const VnetHdr h = {VNET_F_NEEDS_CSUM, VNET_GSO_NONE, 0, 0, static_cast<uint16_t>(csumStart), static_cast<uint16_t>(csumOffset)};
    return write(h, frame, len);
  }
  bool takesCsumLeft() const override { return vnet_; }
  void close() override {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  void closeDeferring() override {
    if (fd_ < 0) return;
    // Closing a TAP unregisters its device, which waits out an RCU grace period (10-30 ms):
    // deferred, so the engine thread (shared by other sandboxes) and the sandbox's destroy do
    // not wait for it. The fd leaves the epoll set first.
    if (epfd_ >= 0) epoll_ctl(epfd_, EPOLL_CTL_DEL, fd_, nullptr);
    deferClose(fd_);
    fd_ = -1;
  }

 private:
  bool write(const VnetHdr& h, const uint8_t* frame, uint32_t len) {
    struct iovec iov[2] = {{const_cast<VnetHdr*>(&h), sizeof h}, {const_cast<uint8_t*>(frame), len}};
    if (writev(fd_, vnet_ ? iov : iov + 1, vnet_ ? 2 : 1) >= 0) return true;
    if (errno == EAGAIN || errno == EINTR) { watchOut(true); return false; }
    counters.bump(counters.txErrors);  // e.g. EIO while the device is down: the frame is lost, counted
    return true;
  }
  void watchOut(bool on) {
    if (on == outWatched_ || fd_ < 0) return;
    epollSet(epfd_, EPOLL_CTL_MOD, fd_, EPOLLIN | (on ? static_cast<uint32_t>(EPOLLOUT) : 0u), base_);
    outWatched_ = on;
  }
  int fd_;
  int epfd_ = -1;
  uint64_t base_ = 0;
  bool outWatched_ = false;
  bool vnet_ = false;
  uint32_t flags_ = 0;
};

Link* newTapLink(int fd) { return new TapLink(fd); }

namespace {
std::mutex deferredMutex;
std::vector<int> deferred;  // every engine thread's, taken by whichever asks next
}  // namespace

void deferClose(int fd) {
  std::lock_guard<std::mutex> lock(deferredMutex);
  deferred.push_back(fd);
}

std::vector<int> takeDeferredCloses() {
  std::lock_guard<std::mutex> lock(deferredMutex);
  std::vector<int> out;
  out.swap(deferred);
  return out;
}

// ---- stream -------------------------------------------------------------------------------------
//
// QEMU's `-netdev stream` (and passt, libkrun): each frame is a 4-byte big-endian length, then the
// Ethernet frame. Reads fill a buffer with as many frames as the socket holds, and frames are
// copied out of it into ring slots; sends are framed into a batch written once per flush.
// Unframing is strict: a length of 0 or beyond MAX_FRAME cannot be resynchronised (no frame
// boundary can be trusted after it), so the connection is dropped and counted — the VMM
// reconnects. A frame longer than a slot but within MAX_FRAME is skipped and counted.

class StreamLink final : public ListeningLink {
 public:
  static constexpr uint32_t MAX_FRAME = 65535 + 14 + 4;  // an IP packet of 64 KiB + Ethernet + VLAN
  static constexpr size_t RBUF = 4 * (MAX_FRAME + 4);
  static constexpr size_t WBUF = 8 * (MAX_FRAME + 4);

  StreamLink(int lfd, const std::string& path) : ListeningLink(lfd, path), rbuf_(RBUF), wbuf_(WBUF) {}
  ~StreamLink() override { close(); }

  uint32_t event(uint32_t sub, uint32_t events) override {
    if (sub == SUB_LISTEN) {
      acceptPeers();
      return LINK_READABLE | LINK_WRITABLE;
    }
    uint32_t r = 0;
    if (events & EPOLLOUT) {
      flushOut();
      if (wlen_ == 0) r |= LINK_WRITABLE;
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) r |= LINK_READABLE;
    return r;
  }

  uint32_t recv(uint8_t* buf, uint32_t cap) override {
    for (;;) {
      const size_t avail = rend_ - rpos_;
      if (avail >= 4) {
        uint32_t n;
        memcpy(&n, &rbuf_[rpos_], 4);
        n = ntohl(n);
        if (n == 0 || n > MAX_FRAME) {  // cannot resynchronise: drop the peer
          counters.bump(counters.malformed);
          dropPeer();
          return 0;
        }
        if (avail >= 4 + static_cast<size_t>(n)) {
          rpos_ += 4 + n;
          if (n > cap) {
            counters.bump(counters.malformed);
            continue;
          }
          memcpy(buf, &rbuf_[rpos_ - n], n);
          return n;
        }
      }
      if (!fill()) return 0;
    }
  }

  bool recvPending() const override {
    const size_t avail = rend_ - rpos_;
    if (avail < 4) return false;
    uint32_t n;
    memcpy(&n, &rbuf_[rpos_], 4);
    return avail >= 4 + static_cast<size_t>(ntohl(n)) || ntohl(n) == 0 || ntohl(n) > MAX_FRAME;
  }

  bool send(const uint8_t* frame, uint32_t len) override {
    if (pfd_ < 0) {
      counters.bump(counters.txErrors);  // no VMM attached: the frame is lost, counted
      return true;
    }
    if (len > MAX_FRAME) {
      counters.bump(counters.txErrors);
      return true;
    }
    if (wlen_ + 4 + len > wbuf_.size()) {
      flushOut();
      if (wlen_ + 4 + len > wbuf_.size()) return false;  // EPOLLOUT is watched
    }
    const uint32_t be = htonl(len);
    memcpy(&wbuf_[wlen_], &be, 4);
    memcpy(&wbuf_[wlen_ + 4], frame, len);
    wlen_ += 4 + len;
    return true;
  }

  void sendDone() override { flushOut(); }

 private:
  void peerAccepted() override {
    int sz = 4 << 20;
    setsockopt(pfd_, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    setsockopt(pfd_, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
  }

  void dropPeer() override {
    ListeningLink::dropPeer();
    outWatched_ = false;
    rpos_ = rend_ = 0;
    wlen_ = 0;
  }

  // Read more of the stream into the buffer; false when nothing more is there now.
  bool fill() {
    if (pfd_ < 0) return false;
    if (rpos_ > 0) {  // keep the partial frame at the start
      memmove(&rbuf_[0], &rbuf_[rpos_], rend_ - rpos_);
      rend_ -= rpos_;
      rpos_ = 0;
    }
    if (rend_ == rbuf_.size()) return false;  // cannot happen: a frame is at most MAX_FRAME + 4
    ssize_t n = read(pfd_, &rbuf_[rend_], rbuf_.size() - rend_);
    if (n > 0) {
      rend_ += static_cast<size_t>(n);
      return true;
    }
    if (n == 0 || (errno != EAGAIN && errno != EINTR)) {  // the VMM went away: wait for the next
      if (n < 0) counters.bump(counters.rxErrors);
      dropPeer();
    }
    return false;
  }

  void flushOut() {
    size_t off = 0;
    while (off < wlen_ && pfd_ >= 0) {
      ssize_t n = write(pfd_, &wbuf_[off], wlen_ - off);
      if (n > 0) { off += static_cast<size_t>(n); continue; }
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
      counters.bump(counters.txErrors);
      dropPeer();
      return;
    }
    if (pfd_ < 0) return;
    if (off > 0) {
      memmove(&wbuf_[0], &wbuf_[off], wlen_ - off);
      wlen_ -= off;
    }
    const bool want = wlen_ > 0;
    if (want != outWatched_) {
      epollSet(epfd_, EPOLL_CTL_MOD, pfd_, EPOLLIN | (want ? static_cast<uint32_t>(EPOLLOUT) : 0u), base_ + SUB_PEER);
      outWatched_ = want;
    }
  }

  bool outWatched_ = false;
  std::vector<uint8_t> rbuf_;
  size_t rpos_ = 0, rend_ = 0;
  std::vector<uint8_t> wbuf_;
  size_t wlen_ = 0;
};

Link* newStreamLink(const std::string& path, std::string& err) {
  int fd = listenUnix(path, err);
  if (fd < 0) return nullptr;
  return new StreamLink(fd, path);
}

}  // namespace moat
