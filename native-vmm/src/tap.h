#pragma once
#include <string>

namespace moat {
// Create (or attach to) TAP device `ifname` inside the network namespace at `netnsPath` (e.g.
// /run/netns/NAME; empty = the caller's namespace). Returns a non-blocking fd, or -errno with a
// description in `err`. The device is created in that namespace; the fd works from anywhere.
int openTapInNetns(const std::string& netnsPath, const std::string& ifname, std::string& err);
}
