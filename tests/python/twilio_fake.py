"""A stand-in for Twilio's Messages resource, for the node's end-to-end SMS test.

Listens on 127.0.0.1 on a free port and prints, one JSON object per line on stdout:
  {"port": N}                                     once it listens
  {"path", "authorization", "idempotency", "form"} for every message posted
  {"list": query}                                 for every Messages list read
Answers 201 with a Twilio-shaped message resource (sid SM<n>, status queued). Like
Twilio, it does not de-duplicate on any header: every POST is a new message. GET of the
Messages list filters by To, From and DateSent> (a UTC day) like Twilio's, newest first,
with RFC 2822 dates. Checks HTTP basic auth against --account-sid/--auth-token (401
otherwise). --delay-ms holds each POST's answer that long after the message is created
(a window for crashes between the provider's answer and the node's record). Exits when
its standard input closes. Standard library only.
"""

import argparse
import base64
import datetime
import email.utils
import json
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--account-sid", required=True)
    ap.add_argument("--auth-token", required=True)
    ap.add_argument("--delay-ms", type=int, default=0)
    args = ap.parse_args()
    messages = []
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
                now = datetime.datetime.now(datetime.timezone.utc)
                messages.append({"sid": sid, "to": form.get("To"), "from": form.get("From"), "body": form.get("Body"), "status": "sent",
                                 "date_created": email.utils.format_datetime(now), "date_sent": email.utils.format_datetime(now), "_day": now.date().isoformat()})
                sys.stdout.write(json.dumps({"path": self.path, "authorization": "ok", "idempotency": self.headers.get("I-Twilio-Idempotency-Token"), "form": form}) + "\n")
                sys.stdout.flush()
            if args.delay_ms:
                time.sleep(args.delay_ms / 1000)
            out = json.dumps({"sid": sid, "status": "queued", "to": form.get("To"), "from": form.get("From"), "body": form.get("Body")}).encode()
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    def list_messages(handler):
        if handler.headers.get("Authorization") != expected:
            handler.send_response(401)
            handler.end_headers()
            return
        query = {k: v[0] for k, v in urllib.parse.parse_qs(urllib.parse.urlsplit(handler.path).query).items()}
        with lock:
            sys.stdout.write(json.dumps({"list": query}) + "\n")
            sys.stdout.flush()
            found = [m for m in reversed(messages)
                     if ("To" not in query or m["to"] == query["To"])
                     and ("From" not in query or m["from"] == query["From"])
                     and ("DateSent>" not in query or m["_day"] >= query["DateSent>"])]
        size = int(query.get("PageSize", "50"))
        page = [{k: v for k, v in m.items() if not k.startswith("_")} for m in found[:size]]
        out = json.dumps({"messages": page, "page_size": size, "next_page_uri": None}).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(out)))
        handler.end_headers()
        handler.wfile.write(out)

    Handler.do_GET = list_messages

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdout.write(json.dumps({"port": server.server_address[1]}) + "\n")
    sys.stdout.flush()
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    main()
