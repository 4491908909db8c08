// tap.cc — opening a TAP device inside another network namespace.
//
// setns(CLONE_NEWNET) changes the namespace of the calling *thread* only, and a TAP device is
// created in the namespace of the thread that issues TUNSETIFF. So a short-lived helper thread
// enters the sandbox's namespace, creates the device, and exits; the fd it returns stays valid in
// the (unchanged) namespace of every other thread. No fork, no exec.
#include "tap.h"

#include <fcntl.h>
#include <net/if.h>  // before linux/if.h, which then leaves glibc's definitions be
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

namespace moat {

static constexpr int TAP_TX_QUEUE_LEN = 8192;

int openTapInNetns(const std::string& netnsPath, const std::string& ifname, bool create, std::string& err) {
  if (ifname.size() >= IFNAMSIZ) {
    err = "interface name '" + ifname + "' is longer than " + std::to_string(IFNAMSIZ - 1) + " characters";
    return -EINVAL;
  }
  int result = -EIO;
  std::thread worker([&]() {
    if (!netnsPath.empty()) {
      int ns = open(netnsPath.c_str(), O_RDONLY | O_CLOEXEC);
      if (ns < 0) {
        result = -errno;
        err = "cannot open network namespace " + netnsPath + ": " + strerror(errno);
        return;
      }
      if (setns(ns, CLONE_NEWNET) != 0) {
        result = -errno;
        err = "cannot enter network namespace " + netnsPath + ": " + strerror(errno);
        close(ns);
        return;
      }
      close(ns);
    }
    if (!create && if_nametoindex(ifname.c_str()) == 0) {
      result = -ENODEV;
      err = "no TAP device " + ifname + " in " + (netnsPath.empty() ? std::string("this network namespace") : netnsPath) +
            " (moat attaches to an existing one and creates none)";
      return;
    }
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
      result = -errno;
      err = std::string("cannot open /dev/net/tun: ") + strerror(errno) +
            (errno == ENOENT ? " (load the tun module: modprobe tun)" : "");
      return;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    // A device moat makes gets a virtio-net header before each frame (link.cc, TapLink), to learn
    // which frames the guest's kernel left unchecksummed. One that exists already is opened as
    // before: its header and offloads would outlive moat on it (a persistent TAP), for whoever
    // opens it next.
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (create ? IFF_VNET_HDR : 0);
    strncpy(ifr.ifr_name, ifname.c_str(), IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) != 0) {
      result = -errno;
      const int e = errno;
      err = std::string(create ? "cannot create TAP device " : "cannot attach to TAP device ") + ifname + ": " + strerror(e) +
            (e == EPERM ? " (needs CAP_NET_ADMIN: run as root)"
             : e == EBUSY ? " (another process holds it, e.g. the VMM: serve it from its kernel side with moat serve --attach " + ifname + ")"
             : e == EINVAL ? " (it is not a TAP device: for a veth or a TAP that is held, use moat serve --attach " + ifname + ")"
             : "");
      close(fd);
      return;
    }
    // Checksum offload, no segmentation offload: every frame stays within the MTU. Without it the
    // guest's kernel checksums every byte it sends (and, since the device then has no
    // scatter-gather either, copies each send into one linear buffer). Best effort: without it the
    // frames come checksummed, as before.
    if (create) ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM);
    // The device's queue toward moat (the tun driver's ring) holds txqueuelen frames, 500 by
    // default; beyond that the guest's frames are dropped, not held back (tun never stops the
    // guest's queue), and every loss costs the guest a retransmission. Many connections sending
    // at once overflow 500 while the engine drains a batch: 1000 x 1 MiB echo lost ~10,000
    // frames per run. Each socket's share of the queue stays bounded by its own send buffer.
    int ctl = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (ctl >= 0) {
      ifr.ifr_qlen = TAP_TX_QUEUE_LEN;
      ioctl(ctl, SIOCSIFTXQLEN, &ifr);  // best effort: the default still works
      close(ctl);
    }
    result = fd;
  });
  worker.join();
  return result;
}

}  // namespace moat
