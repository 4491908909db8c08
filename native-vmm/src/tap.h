#pragma once
#include <string>

namespace moat {
// Create (or attach to) TAP device `ifname` inside the network namespace at `netnsPath` (e.g.
// /run/netns/NAME; empty = the caller's namespace). Returns a non-blocking fd, or -errno with a
// description in `err`. The device is created in that namespace (unless `create` is false: then
// a missing one is -ENODEV); the fd works from anywhere.
int openTapInNetns(const std::string& netnsPath, const std::string& ifname, bool create, std::string& err);
}
