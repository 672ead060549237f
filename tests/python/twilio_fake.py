"""A stand-in for Twilio's Messages resource, for the node's end-to-end SMS test.

Listens on 127.0.0.1 on a free port and prints, one JSON object per line on stdout:
  {"port": N}                                     once it listens
  {"path", "authorization", "idempotency", "form"} for every message posted
Answers 201 with a Twilio-shaped message resource (sid SM<n>, status queued). Checks
HTTP basic auth against --account-sid/--auth-token (401 otherwise). Exits when its
standard input closes. Standard library only.
"""

import argparse
import base64
import json
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--account-sid", required=True)
    ap.add_argument("--auth-token", required=True)
    args = ap.parse_args()
    expected = "Basic " + base64.b64encode(f"{args.account_sid}:{args.auth_token}".encode()).decode()
    lock = threading.Lock()
    count = [0]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
            form = {k: v[0] for k, v in urllib.parse.parse_qs(body).items()}
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.end_headers()
                return
            with lock:
                count[0] += 1
                sid = f"SM{count[0]:032d}"
                sys.stdout.write(json.dumps({"path": self.path, "authorization": "ok", "idempotency": self.headers.get("I-Twilio-Idempotency-Token"), "form": form}) + "\n")
                sys.stdout.flush()
            out = json.dumps({"sid": sid, "status": "queued", "to": form.get("To"), "from": form.get("From"), "body": form.get("Body")}).encode()
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdout.write(json.dumps({"port": server.server_address[1]}) + "\n")
    sys.stdout.flush()
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    main()
