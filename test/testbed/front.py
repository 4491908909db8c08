#!/usr/bin/env python3
# front.py — a shared HTTPS front as CDNs and API gateways run one: one address, many tenants,
# the tenant chosen by the request target's authority when it is absolute-form (as RFC 9112
# §3.2.2 says a server must) and by Host otherwise; lenient as many servers are (a bare LF ends a
# line, http.server's reading). Every request is appended to RECORD as a JSON line with its
# tenant, so a test can see what each tenant received. The API reflects what it is sent, as real
# ones do: Access-Control-Allow-Origin echoes Origin, and the body is the request as JSON.
#   python3 front.py ADDR PORT CERT KEY RECORD      prints "ready" once listening
import http.server, json, ssl, sys, urllib.parse

addr, port, cert, key, record = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]

class Front(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def handle_any(self):
        target = self.path
        if target.startswith(("http://", "https://")):
            tenant = urllib.parse.urlsplit(target).hostname
        else:
            tenant = (self.headers.get("Host") or "").split(":")[0].lower()
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        rec = {"tenant": tenant, "method": self.command, "target": target,
               "headers": dict(self.headers.items()), "body": body.decode("latin1")}
        with open(record, "a") as f:
            f.write(json.dumps(rec) + "\n")
        out = json.dumps(rec).encode()
        self.send_response(200)
        if self.headers.get("Origin"):
            self.send_header("Access-Control-Allow-Origin", self.headers.get("Origin"))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_TRACE = do_HEAD = do_OPTIONS = handle_any

    def log_message(self, *args):
        pass

srv = http.server.ThreadingHTTPServer((addr, port), Front)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.set_alpn_protocols(["http/1.1"])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
print("ready", flush=True)
srv.serve_forever()
