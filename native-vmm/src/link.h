#pragma once
// link.h — the seam between the data path and a guest's NIC (DESIGN §3).
//
// The data path (datapath.cc) knows nothing of TAP devices, stream sockets or virtqueues: it asks
// a Link for the guest's next frame (written into an RX ring slot) and hands it frames from the
// TX ring. Every link lives in the data path's epoll set under its own tokens and does its own
// protocol work (accepting a VMM, vhost-user messages, clearing kicks) in event().
//
//   link          recv (guest -> engine)                    send (engine -> guest)
//   tap           read(2) straight into the slot            write(2) straight from the slot
//   stream        4-byte BE length + frame, batched reads   framed into a batch, one write per flush
//   vhost-user    guest TX descriptor chains, copied        guest RX buffers, copied (vhost-user.cc)
//   attach        an AF_PACKET ring frame, copied            sendmmsg straight from the slots (packet.cc)
//
// Malformed input from the guest or its VMM (a frame longer than a slot, an impossible length, a
// bad descriptor chain) is dropped and counted (LINK_MALFORMED), never fatal. A link whose peer
// goes away (a VMM disconnecting) waits for the next one; frames meanwhile are dropped, counted
// as LINK_TX_ERRORS.
#include <cstdint>
#include <vector>
#include <string>
#include <utility>

namespace moat {

// Counters a link adds to (pointers into the engine's shared counter block).
struct LinkCounters {
  uint64_t* rxErrors = nullptr;   // a read failed (other than "nothing to read")
  uint64_t* txErrors = nullptr;   // a frame could not be delivered (device down, no peer)
  uint64_t* malformed = nullptr;  // malformed input from the guest's side, dropped
  uint64_t* peers = nullptr;      // peers (VMMs) that connected
  void bump(uint64_t* c, uint64_t n = 1) const { if (c) *c += n; }
};

// What the data path should do after a link event.
enum : uint32_t { LINK_READABLE = 1, LINK_WRITABLE = 2 };

// Fill in the TCP/UDP checksum of an untagged IPv4/IPv6 frame whose sender left it to the NIC
// (the field holds the pseudo-header's sum). False when the frame is not TCP or UDP over IP or
// its headers do not fit (packet.cc).
bool completeL4Checksum(uint8_t* frame, uint32_t len);
// virtio-net header flags and GSO type (virtio 1.x §5.1.6), as the TAP's and vhost-user's
// headers carry them.
constexpr uint8_t VNET_F_NEEDS_CSUM = 1, VNET_F_DATA_VALID = 2, VNET_GSO_NONE = 0;
// A frame whose sender left a checksum to the NIC at csumStart + csumOffset (a virtio-net header's
// NEEDS_CSUM). When it is the frame's own TCP/UDP checksum, which the engine would verify (it ends
// that TCP or UDP and forwards only the payload): RX_F_CSUM_LEFT, and the engine does not. Any
// other (a tunnelled packet's, in the payload, which goes on to the world as it is) is completed
// here, as a NIC would: 0. UINT32_MAX when the offsets do not fit the frame (packet.cc).
uint32_t takeLeftChecksum(uint8_t* frame, uint32_t len, uint32_t csumStart, uint32_t csumOffset);

class Link {
 public:
  virtual ~Link() = default;
  // Register the link's fds in `epfd` with tokens `base + sub` (sub < LINK_SUBS). Called once.
  virtual void watch(int epfd, uint64_t base) = 0;
  // An epoll event on token base + sub. Returns LINK_READABLE / LINK_WRITABLE bits.
  virtual uint32_t event(uint32_t sub, uint32_t events) = 0;
  // The guest's next frame, written into `buf` (`cap` bytes): its length, or 0 when nothing more
  // is ready now. Frames that do not fit are dropped and counted here, never returned.
  virtual uint32_t recv(uint8_t* buf, uint32_t cap) = 0;
  // What is known of the frame recv() returned last (RX_F_* of the engine's layout, in its ring
  // descriptor): RX_F_CSUM_LEFT when the guest's kernel left its TCP/UDP checksum to the NIC.
  virtual uint32_t recvFlags() const { return 0; }
  // After a batch of recv(): e.g. tell the guest its transmit buffers were used.
  virtual void recvDone() {}
  // Frames are ready that no epoll event will announce again (edge-notified links, or frames
  // left behind when the ring filled): the data path reads again at its next pump.
  virtual bool recvPending() const { return false; }
  // Hand one frame to the guest: true = taken (or dropped and counted), false = the link is full;
  // the link reports LINK_WRITABLE once it can take more.
  virtual bool send(const uint8_t* frame, uint32_t len) = 0;
  // A frame whose TCP/UDP checksum the engine left (TX_F_CSUM_LEFT: the field holds the
  // pseudo-header's sum; the summed part starts at csumStart, the field is csumOffset into it).
  // A link that takesCsumLeft() hands it on so; any other fills the checksum in and sends it.
  virtual bool sendCsumLeft(uint8_t* frame, uint32_t len, uint32_t csumStart, uint32_t csumOffset) {
    (void)csumStart;
    (void)csumOffset;
    completeL4Checksum(frame, len);
    return send(frame, len);
  }
  // Whether frames with a left checksum go to the guest as they are (sendCsumLeft), so the engine
  // need not sum their bytes: the data path tells it (ST_TX_CSUM_LEFT_OK) as the link attaches.
  virtual bool takesCsumLeft() const { return false; }
  // After a batch of send(): write out what was batched, tell the guest.
  virtual void sendDone() {}
  // Close every fd (the epoll set is closed by the data path).
  virtual void close() = 0;
  // close(), but an fd whose close is slow (a TAP's unregisters its device) may be handed to
  // deferClose() instead, for the caller to close elsewhere (Datapath.close(), addon.cc).
  virtual void closeDeferring() { close(); }

  LinkCounters counters;
};

static constexpr uint32_t LINK_SUBS = 64;  // epoll tokens per link

// Set (op: EPOLL_CTL_ADD / MOD) `fd`'s `events` in `epfd` under `token`.
void epollSet(int epfd, int op, int fd, uint32_t events, uint64_t token);

// A link whose VMM connects to a unix socket moat listens on (stream, vhost-user). One peer at a
// time: the newest connection wins (a VMM restarting may reconnect before its old socket's
// hang-up is seen); when the peer goes, the next connection is waited for.
class ListeningLink : public Link {
 public:
  enum : uint32_t { SUB_LISTEN = 0, SUB_PEER = 1 };  // sub-tokens; a link's own start at 2
  ListeningLink(int lfd, std::string path);
  void watch(int epfd, uint64_t base) override;
  void close() override;

 protected:
  // Accept every waiting connection; each replaces the peer (dropPeer() first). Returns whether
  // one was taken.
  bool acceptPeers();
  // Forget the peer: close its socket and reset what it set up (a subclass adds its own state).
  virtual void dropPeer();
  // The peer's socket was just accepted (options, buffers).
  virtual void peerAccepted() {}

  int lfd_;
  std::string path_;  // the socket file, removed at close
  int spare_ = -1;    // an fd held back to refuse a connection when the process is out of fds
  int pfd_ = -1;
  int epfd_ = -1;
  uint64_t base_ = 0;
};

// A TAP device fd (takes ownership): one frame per read/write, after a virtio-net header when
// the fd has one (a device openTapInNetns made: IFF_VNET_HDR and checksum offload).
Link* newTapLink(int fd);

// A unix stream socket listening at `path` (QEMU -netdev stream, passt framing). The newest
// connection is the peer; when it goes, the next one is waited for. Returns nullptr with `err`.
Link* newStreamLink(const std::string& path, std::string& err);
// A vhost-user-net back-end listening at `path` (QEMU -netdev vhost-user, cloud-hypervisor),
// offering `mtu` (vhost-user.cc). The newest front-end is served; when it goes, device state is
// reset and the next one is waited for. Returns nullptr with `err`.
Link* newVhostUserLink(const std::string& path, uint32_t mtu, std::string& err);

// An interface whose other side someone else holds (the TAP a VMM opened, a veth end), served
// from its kernel side with an AF_PACKET socket (packet.cc); `mtu` is the gateway's (at most the
// interface's). The interface must exist; it is brought up. Returns nullptr with `err`.
Link* newPacketLink(const std::string& ifname, uint32_t mtu, std::string& err);

// What moat needs to know of a network interface in the caller's namespace before serving it.
struct InterfaceInfo {
  int index = 0;
  uint32_t mtu = 0;
  bool up = false, running = false;  // IFF_UP, IFF_RUNNING (a TAP: up and held by a process)
  bool ethernet = false;             // ARPHRD_ETHER (a TUN device, layer 3, is not)
  std::string driver;                // ethtool's: "tun" for TAP and TUN, "veth", ...
};
// 0, or -errno with `err` (-ENODEV: no such interface).
int interfaceInfo(const std::string& name, InterfaceInfo& out, std::string& err);

// Listen on a unix stream socket at `path`, mode 0600. A stale socket there (nobody listening) is
// replaced; anything else there is an error. Returns the non-blocking fd, or -errno with `err`.
int listenUnix(const std::string& path, std::string& err);

// fds to be closed off the engine thread (link.cc, closeDeferring): closing a TAP waits out an RCU
// grace period (10-30 ms). Datapath.close() hands them straight back to the engine worker, which
// closes them with Node's fs.close, on libuv's thread pool (not on a thread of this library's,
// which Node may unload).
void deferClose(int fd);
std::vector<int> takeDeferredCloses();

}  // namespace moat
