"""A real SMTP server (aiosmtpd) for the email connector's tests.

Listens on 127.0.0.1 on a free port and prints, one JSON object per line on stdout:
  {"port": N}                                  once it listens
  {"mail_from", "rcpt_tos", "login", "raw",    for every message received, with the
   "headers": [[name, value], ...],            message parsed by Python's email package
   "parts": [{"content_type", "body"}, ...]}   (header values decoded, bodies decoded)

Options:
  --reject-550 ADDR   refuse RCPT TO:<ADDR> with "550 5.1.1 ... mailbox unavailable"
  --reject-451 ADDR   refuse RCPT TO:<ADDR> with "451 4.3.0 ... try again later"
  --auth USER:PASS    require AUTH (PLAIN/LOGIN, allowed without TLS) with these credentials
  --tls MODE          "starttls" (offer and require STARTTLS) or "tls" (TLS from the first
                      byte), with a certificate for 127.0.0.1 from a private CA made with
                      trustme; the CA's PEM is written to --ca-out

It exits when its standard input closes (the test that started it ended).

Needs aiosmtpd (and trustme for --tls): pip install -r tests/python/requirements.txt
"""

import argparse
import asyncio
import email
import email.policy
import json
import ssl
import sys
import threading

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Sink:
    def __init__(self, reject_550, reject_451):
        self.reject_550 = {a.lower() for a in reject_550}
        self.reject_451 = {a.lower() for a in reject_451}

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in self.reject_550:
            return f"550 5.1.1 <{address}>: mailbox unavailable"
        if address.lower() in self.reject_451:
            return f"451 4.3.0 <{address}>: try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content.decode("utf-8", "replace")
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        parts = []
        for part in msg.walk():
            if part.is_multipart():
                continue
            parts.append({"content_type": part.get_content_type(), "body": part.get_content()})
        login = getattr(session, "chorus_login", None)
        ssl_object = server.transport.get_extra_info("ssl_object") if server.transport else None
        emit(
            {
                "mail_from": envelope.mail_from,
                "rcpt_tos": envelope.rcpt_tos,
                "login": login,
                "tls": ssl_object.version() if ssl_object else None,
                "headers": [[k, str(v)] for k, v in msg.items()],
                "content_type": msg.get_content_type(),
                "parts": parts,
                "raw": raw,
            }
        )
        return "250 2.0.0 Ok: queued"


def authenticator_for(user, password):
    def authenticate(server, session, envelope, mechanism, auth_data):
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        if auth_data.login.decode() == user and auth_data.password.decode() == password:
            session.chorus_login = user
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    return authenticate


async def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reject-550", action="append", default=[])
    p.add_argument("--reject-451", action="append", default=[])
    p.add_argument("--auth", default=None, help="USER:PASS")
    p.add_argument("--tls", choices=["starttls", "tls"], default=None)
    p.add_argument("--ca-out", default=None, help="where to write the CA certificate (PEM) with --tls")
    args = p.parse_args()

    server_ssl = None
    if args.tls:
        import trustme

        ca = trustme.CA()
        ca.cert_pem.write_to_path(args.ca_out)
        server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server_ssl)

    handler = Sink(args.reject_550, args.reject_451)
    smtp_kwargs = {"decode_data": False, "hostname": "sink.test"}
    if args.tls == "starttls":
        smtp_kwargs.update(tls_context=server_ssl, require_starttls=True)
    if args.auth:
        user, _, password = args.auth.partition(":")
        smtp_kwargs.update(
            authenticator=authenticator_for(user, password),
            auth_required=True,
            auth_require_tls=False,
        )

    loop = asyncio.get_running_loop()
    implicit = server_ssl if args.tls == "tls" else None
    server = await loop.create_server(lambda: SMTP(handler, **smtp_kwargs), host="127.0.0.1", port=0, ssl=implicit)
    port = server.sockets[0].getsockname()[1]
    emit({"port": port})

    stop = asyncio.Event()

    def watch_stdin():
        sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    await stop.wait()
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
