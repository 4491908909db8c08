// trust-store.test.ts — what a sandbox that intercepts TLS trusts (tls/setup.ts, writeTrustBundle):
// a host store laid out as Debian's (a Mozilla set, update-ca-certificates' selection, a CA the
// operator added under /usr/local/share/ca-certificates, OpenSSL's hashed links) is built in a
// temporary directory, the sandbox's store is written from it, and OpenSSL itself says which
// server certificates verify against it, by the bundle and by the hashed directory.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync, copyFileSync, lstatSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeTrustBundle, trustBundle, hasDistroCas, type TrustSources } from "../../orchestrator/src/tls/setup.js";
import { makeCa, makeServerCert } from "../testbed/test-pki.js";

const skip = (() => { try { execFileSync("openssl", ["version"], { stdio: "ignore" }); return undefined; } catch { return "openssl is not installed"; } })();
let root = "";
let host: TrustSources;
let MOAT_CA = ""; // a CA of its own, as moat's

before(() => {
  if (skip) return;
  root = mkdtempSync(join(tmpdir(), "moat-trust-"));
  const pki = join(root, "pki");
  const mozilla = join(root, "share/ca-certificates/mozilla");
  const local = join(root, "local/share/ca-certificates");
  const certs = join(root, "etc/ssl/certs");
  for (const d of [pki, mozilla, local, certs]) mkdirSync(d, { recursive: true });
  for (const ca of ["distro-a", "distro-b", "deselected", "operator", "moat"]) makeCa(pki, ca, `${ca} test CA`);
  MOAT_CA = readFileSync(join(pki, "moat.pem"), "utf8");
  for (const ca of ["distro-a", "operator"]) {
    makeServerCert(pki, ca, ["DNS:server.test"]);
    copyFileSync(join(pki, "srv.pem"), join(pki, `server-by-${ca}.pem`));
  }
  // The distribution's set and the operator's addition, as update-ca-certificates would link
  // them: NAME.pem -> the certificate, then OpenSSL's HASH.0 -> NAME.pem (openssl rehash).
  for (const ca of ["distro-a", "distro-b", "deselected"]) copyFileSync(join(pki, `${ca}.pem`), join(mozilla, `${ca}.crt`));
  copyFileSync(join(pki, "operator.pem"), join(local, "operator.crt"));
  for (const [name, target] of [["distro-a", mozilla], ["distro-b", mozilla], ["operator", local]] as const) symlinkSync(join(target, `${name}.crt`), join(certs, `${name}.pem`));
  execFileSync("openssl", ["rehash", certs], { stdio: "ignore" });
  writeFileSync(join(certs, "ca-certificates.crt"), ["distro-a", "distro-b", "operator"].map((c) => readFileSync(join(pki, `${c}.pem`), "utf8")).join(""));
  writeFileSync(join(root, "etc/ssl/openssl.cnf"), "# host's openssl.cnf\n");
  writeFileSync(join(root, "ca-certificates.conf"), "mozilla/distro-a.crt\nmozilla/distro-b.crt\n!mozilla/deselected.crt\n");
  host = { sslDir: join(root, "etc/ssl"), distroDir: mozilla, distroConf: join(root, "ca-certificates.conf") };
});
after(() => { if (root) rmSync(root, { recursive: true, force: true }); });

/** Does OpenSSL verify server-by-CA against the sandbox's store at `etc`? By the bundle, and by the hashed directory alone. */
function verifies(etc: string, ca: string): { bundle: boolean; dir: boolean } {
  const attempt = (args: string[]) => {
    try {
      execFileSync("openssl", ["verify", ...args, join(root, "pki", `server-by-${ca}.pem`)], { stdio: "ignore" });
      return true;
    } catch {
      return false;
    }
  };
  return { bundle: attempt(["-CAfile", join(etc, "ssl/certs/ca-certificates.crt")]), dir: attempt(["-no-CAfile", "-no-CAstore", "-CApath", join(etc, "ssl/certs")]) };
}

function sandboxStore(trustHostCas: boolean, sources = host): string {
  const etc = mkdtempSync(join(root, "sandbox-"));
  writeTrustBundle(etc, MOAT_CA, trustHostCas, sources);
  return etc;
}

test("by default a sandbox trusts the distribution's CA set and moat's CA, not a CA the operator added", { skip }, () => {
  const etc = sandboxStore(false);
  assert.deepEqual(verifies(etc, "distro-a"), { bundle: true, dir: true });
  assert.deepEqual(verifies(etc, "operator"), { bundle: false, dir: false });
  const bundle = readFileSync(join(etc, "ssl/certs/ca-certificates.crt"), "utf8");
  assert.equal(bundle.match(/BEGIN CERTIFICATE/g)?.length, 3, "distro-a, distro-b and moat's CA");
  assert.ok(bundle.endsWith(`# moat TLS interception CA\n${MOAT_CA}`));
  assert.equal(readFileSync(join(etc, "ssl/certs/moat-interception-ca.pem"), "utf8"), MOAT_CA);
  assert.equal(readFileSync(join(etc, "ssl/openssl.cnf"), "utf8"), "# host's openssl.cnf\n");
  const links = readdirSync(join(etc, "ssl/certs")).filter((n) => lstatSync(join(etc, "ssl/certs", n)).isSymbolicLink()).sort();
  assert.equal(links.length, 4, `distro-a and distro-b, by name and by hash: ${links}`);
  assert.ok(!links.includes("operator.pem"));
});

test("a certificate the host's selection deselects is left out, even when it is in the distribution's directory", { skip }, () => {
  const bundle = trustBundle(MOAT_CA, false, host);
  assert.ok(!bundle.includes(readFileSync(join(root, "pki/deselected.pem"), "utf8").trim()));
  assert.ok(bundle.includes(readFileSync(join(root, "pki/distro-b.pem"), "utf8").trim()));
});

test("with trustHostCas the sandbox trusts the host's whole store, the operator's CA included, and moat's CA", { skip }, () => {
  const etc = sandboxStore(true);
  assert.deepEqual(verifies(etc, "operator"), { bundle: true, dir: true });
  assert.deepEqual(verifies(etc, "distro-a"), { bundle: true, dir: true });
  assert.ok(readFileSync(join(etc, "ssl/certs/ca-certificates.crt"), "utf8").endsWith(`# moat TLS interception CA\n${MOAT_CA}`));
});

test("writing the sandbox's store never writes through a link into the host's", { skip }, () => {
  // A host whose bundle is a link to elsewhere (Fedora's layout): copied as a link, it must be
  // replaced, not written through.
  const other = mkdtempSync(join(root, "linked-host-"));
  mkdirSync(join(other, "ssl/certs"), { recursive: true });
  const real = join(other, "real-bundle.crt");
  writeFileSync(real, readFileSync(join(root, "etc/ssl/certs/ca-certificates.crt")));
  symlinkSync(real, join(other, "ssl/certs/ca-certificates.crt"));
  const before = readFileSync(real, "utf8");
  const etc = sandboxStore(true, { ...host, sslDir: join(other, "ssl") });
  assert.equal(readFileSync(real, "utf8"), before);
  assert.ok(!lstatSync(join(etc, "ssl/certs/ca-certificates.crt")).isSymbolicLink());
  assert.ok(readFileSync(join(etc, "ssl/certs/ca-certificates.crt"), "utf8").startsWith(before));
});

test("a host with no distribution CA set: the sandbox trusts moat's CA alone", { skip }, () => {
  const none = { ...host, distroDir: join(root, "nowhere/mozilla") };
  assert.equal(hasDistroCas(none), false);
  assert.equal(hasDistroCas(host), true);
  assert.equal(trustBundle(MOAT_CA, false, none), `# moat TLS interception CA\n${MOAT_CA}`);
  const etc = sandboxStore(false, none);
  assert.deepEqual(verifies(etc, "distro-a"), { bundle: false, dir: false });
});
