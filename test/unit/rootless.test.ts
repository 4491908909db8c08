// rootless.test.ts — what keeps an ordinary user from running a namespace sandbox, and what the
// error says to change (sandbox/rootless.ts), for each kind of host, read from a fake /proc/sys.
import { test } from "node:test";
import assert from "node:assert/strict";
import { rootlessProblem, type RootlessHost } from "../../orchestrator/src/sandbox/rootless.js";

function host(sysctls: Record<string, string>, tun = { openable: true, mode: "0666" }): RootlessHost {
  return { sysctl: (n) => sysctls[n], tun: () => tun };
}

test("a host that allows user namespaces and lets the user open /dev/net/tun stands in no one's way", () => {
  assert.equal(rootlessProblem(host({ "user.max_user_namespaces": "15000" })), undefined);
  assert.equal(rootlessProblem(host({ "kernel.unprivileged_userns_clone": "1", "kernel.apparmor_restrict_unprivileged_userns": "0" })), undefined);
});

test("each way a host forbids unprivileged user namespaces is named, with the sysctl that allows them", () => {
  const cases: [Record<string, string>, RegExp, RegExp][] = [
    [{ "kernel.unprivileged_userns_clone": "0" }, /kernel\.unprivileged_userns_clone = 0/, /sysctl -w kernel\.unprivileged_userns_clone=1/],
    [{ "user.max_user_namespaces": "0" }, /user\.max_user_namespaces = 0/, /sysctl -w user\.max_user_namespaces=15000/],
    [{ "kernel.apparmor_restrict_unprivileged_userns": "1" }, /AppArmor restricts/, /kernel\.apparmor_restrict_unprivileged_userns=0/],
  ];
  for (const [sysctls, message, hint] of cases) {
    const e = rootlessProblem(host(sysctls))!;
    assert.equal(e.code, "ERR_NO_USERNS");
    assert.match(e.message, message);
    assert.match(e.hint!, hint);
    assert.match(e.hint!, /or run moat as root/);
  }
});

test("a /dev/net/tun the user cannot open: its mode, and chmod 0666 (Debian's default) or a udev rule", () => {
  const e = rootlessProblem(host({}, { openable: false, mode: "0600" }))!;
  assert.equal(e.code, "ERR_NO_TUN");
  assert.match(e.message, /mode 0600 here/);
  assert.match(e.hint!, /chmod 0666 \/dev\/net\/tun \(Debian's default; persistently, a udev rule: KERNEL=="tun", MODE="0666"\)/);
  const absent = rootlessProblem(host({}, { openable: false, mode: "absent" }))!;
  assert.match(absent.message, /does not exist/);
  assert.match(absent.hint!, /modprobe tun/);
});
