// test-pki.ts — certificates for the test world's TLS servers, made with openssl (P-256, two days).
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";

function openssl(dir: string, ...args: string[]): void {
  execFileSync("openssl", args, { stdio: ["ignore", "ignore", "pipe"], cwd: dir });
}

/** A CA named `cn`: dir/PREFIX.pem and dir/PREFIX.key. */
export function makeCa(dir: string, prefix: string, cn: string): void {
  openssl(dir, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", `${prefix}.key`, "-out", `${prefix}.pem`, "-days", "2",
    "-subj", `/CN=${cn}`, "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign");
}

/** A server certificate for `sans` (e.g. "DNS:a.test", "IP:192.0.2.1") signed by CA `ca`: dir/srv.pem and dir/srv.key. */
export function makeServerCert(dir: string, ca: string, sans: string[]): void {
  const cn = sans[0]!.replace(/^\w+:/, "").replace(/^\*\./, "");
  openssl(dir, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "srv.key", "-out", "srv.csr", "-subj", `/CN=${cn}`);
  writeFileSync(`${dir}/ext.cnf`, `subjectAltName=${sans.join(",")}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n`);
  openssl(dir, "x509", "-req", "-in", "srv.csr", "-CA", `${ca}.pem`, "-CAkey", `${ca}.key`, "-CAcreateserial", "-out", "srv.pem", "-days", "2", "-extfile", "ext.cnf");
}
