// ports.test.ts — what a user can write to publish a port (-p, the config file's ports, the API),
// and the errors and warnings they get.
import { test } from "node:test";
import assert from "node:assert/strict";
import { parsePublish, validatePort, exposureWarning } from "../../orchestrator/src/gateway/ports.js";
import { parseConfig } from "../../orchestrator/src/cli/config-file.js";
import { parseFlags } from "../../orchestrator/src/cli/args.js";
import { option } from "../../orchestrator/src/gateway/schema.js";
import { ConfigError } from "../../orchestrator/src/errors.js";

test("-p forms: HOST:GUEST, BIND:HOST:GUEST, [v6]:HOST:GUEST, /udp", () => {
  assert.deepEqual(parsePublish("8080:80"), { bind: undefined, host: 8080, guest: 80, protocol: "tcp" });
  assert.deepEqual(parsePublish("0.0.0.0:8080:80/tcp"), { bind: "0.0.0.0", host: 8080, guest: 80, protocol: "tcp" });
  assert.deepEqual(parsePublish("[::1]:5353:53/udp"), { bind: "::1", host: 5353, guest: 53, protocol: "udp" });
  assert.deepEqual(parsePublish("0:80"), { bind: undefined, host: 0, guest: 80, protocol: "tcp" }, "host 0: any free port");
  assert.deepEqual(validatePort(parsePublish("8080:80")), { bind: "127.0.0.1", host: 8080, guest: 80, protocol: "tcp" }, "loopback by default");
});

test("bad -p values say what was wrong", () => {
  const bad: [string, RegExp][] = [
    ["8080", /needs HOSTPORT:GUESTPORT/],
    ["8080:0", /guest port "0" is not a port/],
    ["70000:80", /host port "70000" is not a port/],
    ["8080:80/sctp", /unknown protocol "sctp"/],
    ["::1:8080:80", /too many colons/],
    ["[::1]8080:80", /IPv6 bind address goes in brackets/],
    ["a:b", /host port "a"/],
  ];
  for (const [text, why] of bad) {
    assert.throws(() => parsePublish(text, "-p"), (e: unknown) => e instanceof ConfigError && why.test(e.message) && e.message.startsWith(`-p "${text}"`), text);
  }
  assert.throws(() => validatePort({ bind: "localhost", host: 1, guest: 1 }), /bind "localhost" is not an IP address/);
  assert.throws(() => validatePort({ host: 1.5, guest: 1 }), /host is 1.5, not a port/);
  assert.throws(() => validatePort({ host: 1, guest: 1, protocol: "icmp" as "tcp" }), /protocol is "icmp"/);
});

test("binds beyond loopback warn; loopback ones do not", () => {
  assert.equal(exposureWarning(validatePort({ host: 8080, guest: 80 })), undefined);
  assert.equal(exposureWarning(validatePort({ bind: "::1", host: 8080, guest: 80 })), undefined);
  assert.match(exposureWarning(validatePort({ bind: "0.0.0.0", host: 8080, guest: 80 }))!, /exposes sandbox port 80\/tcp to every network/);
  assert.match(exposureWarning(validatePort({ bind: "::", host: 8080, guest: 80 }))!, /every network/);
  assert.match(exposureWarning(validatePort({ bind: "192.0.2.5", host: 8080, guest: 80, protocol: "udp" }))!, /80\/udp to the network of 192\.0\.2\.5/);
});

test("config file: network.ports takes -p strings and objects; network.defaultIngress", () => {
  const c = parseConfig({ network: { ports: ["8080:80", { bind: "::1", host: 5353, guest: 53, protocol: "udp" }], defaultIngress: "deny" } }, "m.json");
  assert.deepEqual(c.network!.ports, [
    { bind: undefined, host: 8080, guest: 80, protocol: "tcp" },
    { bind: "::1", host: 5353, guest: 53, protocol: "udp" },
  ]);
  assert.equal(c.network!.defaultIngress, "deny");
  assert.throws(() => parseConfig({ network: { ports: "8080:80" } }, "m.json"), /m\.json: network\.ports: is .*not a list/);
  assert.throws(() => parseConfig({ network: { ports: ["8080"] } }, "m.json"), /m\.json: network\.ports\[0\] "8080"/);
  assert.throws(() => parseConfig({ network: { ports: [{ host: 1 }] } }, "m.json"), /m\.json: network\.ports\[0\]\.guest is undefined/);
  assert.throws(() => parseConfig({ network: { defaultIngress: "maybe" } }, "m.json"), /defaultIngress/);
});

test("-p is the short form of --publish, repeatable", () => {
  const specs = [option("publish")];
  const r = parseFlags(["-p", "8080:80", "--publish=9090:90/udp", "-p=1:2", "--", "cmd"], specs, "run");
  assert.deepEqual(r.lists.get("publish"), ["8080:80", "9090:90/udp", "1:2"]);
  assert.deepEqual(r.rest, ["cmd"]);
});
