#!/usr/bin/env python3
"""Write test certificates for mutual TLS between cluster nodes (trustme).

usage: make_certs.py OUT_DIR

OUT_DIR/ca.pem, node.pem, node-key.pem: the cluster CA and a node certificate it signed
(for 127.0.0.1 and localhost, usable as server and client). OUT_DIR/rogue-ca.pem,
rogue.pem, rogue-key.pem: the same from another CA, for a process that must not join.
"""
import pathlib
import sys

import trustme


def write(out: pathlib.Path, prefix: str, ca: trustme.CA) -> None:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    (out / f"{prefix}ca.pem").write_bytes(ca.cert_pem.bytes())
    (out / f"{prefix}.pem" if prefix else out / "node.pem").write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
    (out / f"{prefix}-key.pem" if prefix else out / "node-key.pem").write_bytes(cert.private_key_pem.bytes())


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    write(out, "", trustme.CA())
    rogue = trustme.CA()
    cert = rogue.issue_cert("127.0.0.1", "localhost")
    (out / "rogue-ca.pem").write_bytes(rogue.cert_pem.bytes())
    (out / "rogue.pem").write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
    (out / "rogue-key.pem").write_bytes(cert.private_key_pem.bytes())


if __name__ == "__main__":
    main()
