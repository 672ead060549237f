#!/usr/bin/env python3
"""Send a fixed scenario of Segment calls to a Chorus node with the REAL official SDK.

What it is for: proving that what segment-analytics-python actually puts on the wire
(/v1/batch, Basic auth with the write key, writeKey/sentAt in the body, optional gzip)
is accepted by Chorus's Segment HTTP API. A Rust integration test starts a node, runs

    python3 tests/python/segment_sdk_send.py --host http://127.0.0.1:PORT --write-key KEY all

and checks the events it reads back against the JSON lines printed on stdout, one per
call sent: {"call", "type", "message_id", "user_id", "anonymous_id", "event", "name",
"category", "gzip"}.

What it must not do: talk to anything but --host, or hide an SDK error. The exit status
is 0 only if every call was queued and the SDK reported no error (on_error callback);
errors go to stderr. Requires: pip install -r tests/python/requirements.txt
"""

import argparse
import json
import sys
import threading

SCENARIOS = ("all", "basic", "gzip")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", nargs="?", default="all", choices=SCENARIOS,
                   help="all = basic + gzip (default); basic = identify, track, page, screen, group, alias; "
                        "gzip = one track sent with gzip=True")
    p.add_argument("--host", required=True, help="base URL of the Chorus HTTP API, e.g. http://127.0.0.1:8080")
    p.add_argument("--write-key", required=True, help="Segment write key configured on the Chorus source")
    p.add_argument("--user-id", default="sdk-user-1", help="userId for every call (default %(default)s)")
    p.add_argument("--anonymous-id", default="sdk-anon-1", help="anonymousId before login (default %(default)s)")
    p.add_argument("--email", default="ada.sdk@example.com", help="traits.email on identify (default %(default)s)")
    p.add_argument("--max-retries", type=int, default=2,
                   help="SDK retries per batch before on_error fires (default %(default)s; the SDK's own is 10)")
    p.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout per request in seconds")
    p.add_argument("--debug", action="store_true", help="SDK debug logging (to stderr)")
    return p.parse_args(argv)


class Sender:
    """One SDK client plus the bookkeeping needed to report what it sent."""

    def __init__(self, args, gzip):
        from segment.analytics import Client  # imported late so --help works without the SDK

        self.gzip = gzip
        self.errors = []
        self._lock = threading.Lock()
        self.sent = []
        self.client = Client(
            write_key=args.write_key,
            host=args.host,
            gzip=gzip,
            on_error=self._on_error,
            max_retries=args.max_retries,
            timeout=args.timeout,
            debug=args.debug,
            upload_interval=0.2,
        )

    def _on_error(self, error, batch):
        with self._lock:
            ids = [m.get("messageId") for m in batch]
            self.errors.append("SDK error (gzip=%s) for %d message(s) %s: %s" % (self.gzip, len(batch), ids, error))

    def call(self, label, method, **kwargs):
        ok, msg = getattr(self.client, method)(**kwargs)
        if not ok:
            self.errors.append("SDK refused to queue %s (queue full?)" % label)
        self.sent.append({
            "call": label,
            "type": msg.get("type"),
            "message_id": msg.get("messageId"),
            "user_id": msg.get("userId"),
            "anonymous_id": msg.get("anonymousId"),
            "event": msg.get("event"),
            "name": msg.get("name"),
            "category": msg.get("category"),
            "gzip": self.gzip,
        })

    def finish(self):
        self.client.flush()
        self.client.shutdown()


def send_basic(args):
    s = Sender(args, gzip=False)
    s.call("identify", "identify", user_id=args.user_id, anonymous_id=args.anonymous_id,
           traits={"email": args.email, "first_name": "Ada", "last_name": "Lovelace", "plan": "pro",
                   "phone": "+14155550123", "timezone": "Europe/Paris"},
           context={"consent": {"categoryPreferences": {"Advertising": True, "Product News": False}}})
    s.call("track", "track", user_id=args.user_id, event="Product Viewed",
           properties={"product_id": "sku-1234", "name": "Analytical Engine", "price": 19.99, "currency": "EUR",
                       "category": "Machines"})
    s.call("page", "page", user_id=args.user_id, category="Docs", name="Pricing",
           properties={"url": "https://shop.example/pricing", "path": "/pricing", "title": "Pricing"})
    s.call("screen", "screen", user_id=args.user_id, name="Checkout",
           properties={"items": 2},
           context={"device": {"id": "sdk-device-1", "type": "ios"}})
    s.call("group", "group", user_id=args.user_id, group_id="acme-co",
           traits={"name": "Acme Co", "industry": "Manufacturing", "employees": 120})
    s.call("alias", "alias", previous_id=args.anonymous_id, user_id=args.user_id)
    s.finish()
    return s


def send_gzip(args):
    s = Sender(args, gzip=True)
    s.call("track_gzip", "track", user_id=args.user_id, event="Order Completed",
           properties={"order_id": "ord-0001", "revenue": 39.98, "currency": "EUR",
                       "products": [{"product_id": "sku-1234", "quantity": 2}]})
    s.finish()
    return s


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        import segment.analytics  # noqa: F401
    except ImportError as e:
        print("segment-analytics-python is not installed (%s): pip install -r tests/python/requirements.txt" % e,
              file=sys.stderr)
        return 3

    senders = []
    if args.scenario in ("all", "basic"):
        senders.append(send_basic(args))
    if args.scenario in ("all", "gzip"):
        senders.append(send_gzip(args))

    for s in senders:
        for line in s.sent:
            print(json.dumps(line, sort_keys=True))
    sys.stdout.flush()

    errors = [e for s in senders for e in s.errors]
    for e in errors:
        print(e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
