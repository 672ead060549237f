#!/usr/bin/env python3
"""Run a local multi-node Chorus cluster, for development and fault drills.

Each node is a `chorus run --config DIR/nodeN.toml` process in the background (its output
in DIR/nodeN.log, its pid in DIR/nodeN.pid, its data in DIR/data/nodeN). Node N listens on
BASE+10*N (gRPC), BASE+10*N+1 (HTTP) and BASE+10*N+2 (node-to-node), BASE being 7700 by
default. The configuration files are rendered from cluster/config.template.toml with the
same rules as cluster/docker/entrypoint.sh.

    launch.py up --nodes 3 --shards 16 --replication 3   # start, wait for /healthz, init
    launch.py status                                     # processes, health, cluster status
    launch.py kill 2      # SIGKILL (a crash)              launch.py start 2   # restart it
    launch.py stop 3      # SIGSTOP (a frozen process)     launch.py cont 3    # SIGCONT
    launch.py add         # one more node, joined with `chorusctl node add`
    launch.py down        # SIGTERM, then SIGKILL after a deadline (--purge deletes DIR)

With `up --netns` (root only) every node runs in its own network namespace `chorusN`,
joined to the bridge `chorusbr0` by a veth pair, at 10.77.0.N/24 (the host is
10.77.0.254); `partition N` takes node N's link down, `heal N` brings it back. Nothing is
routed beyond that bridge. `down` removes the namespaces, the veth pairs and the bridge.

The state of a cluster (nodes, ports, binaries) is kept in DIR/cluster.json, so every
command only needs `--dir DIR` (default ./chorus-cluster). Python 3.11+, standard library
only; the openssl command is needed for `--tls`, iproute2 (`ip`) for `--netns`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
TEMPLATE = HERE / "config.template.toml"
STATE_FILE = "cluster.json"
STATE_VERSION = 1
DEFAULT_DIR = "./chorus-cluster"

# --netns: one private /24 on a bridge this script creates and deletes.
BRIDGE = "chorusbr0"
NETNS_PREFIX = "chorus"  # namespace of node N: chorusN
VETH_PREFIX = "vchorus"  # host side of node N's veth pair: vchorusN (eth0 inside)
SUBNET = "10.77.0"
HOST_ADDR = f"{SUBNET}.254"
PREFIX_LEN = 24
NETNS_NODES_MAX = 253
IPTABLES_COMMENT = "chorus-launch.py"

LOOPBACK = "127.0.0.1"
LOG_TAIL_LINES = 25
INIT_ATTEMPTS_MAX = 5

# Direct connections only: an http_proxy in the environment must not see /healthz probes.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class LaunchError(Exception):
    """A problem the user can act on; printed as `launch.py: error: ...`, no traceback."""


# ---------------------------------------------------------------------------- state


@dataclasses.dataclass
class Node:
    id: int
    host: str  # the IP address the node listens on and is reached at
    grpc_port: int
    http_port: int
    cluster_port: int
    netns: str | None = None  # network namespace (--netns)
    veth: str | None = None  # host side of its veth pair (--netns)

    @property
    def grpc_addr(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def endpoint(self) -> str:
        return f"http://{self.grpc_addr}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def advertise(self) -> str:
        return f"{self.host}:{self.cluster_port}"


@dataclasses.dataclass
class Cluster:
    dir: Path
    chorus_bin: str
    ctl_bin: str
    base_port: int
    shards: int
    replication: int
    initial_nodes: int
    netns: bool
    tls: bool
    log_level: str
    seeds: list[str]
    tracking_secret: str
    nodes: list[Node]
    iptables_rule: bool = False
    created: str = ""

    # Files of node N, all inside the cluster directory.
    def config_path(self, n: Node) -> Path:
        return self.dir / f"node{n.id}.toml"

    def log_path(self, n: Node) -> Path:
        return self.dir / f"node{n.id}.log"

    def pid_path(self, n: Node) -> Path:
        return self.dir / f"node{n.id}.pid"

    def data_dir(self, n: Node) -> Path:
        return self.dir / "data" / f"node{n.id}"

    @property
    def tls_dir(self) -> Path:
        return self.dir / "tls"

    def node(self, node_id: int) -> Node:
        for n in self.nodes:
            if n.id == node_id:
                return n
        ids = ", ".join(str(n.id) for n in self.nodes)
        raise LaunchError(f"there is no node {node_id} in {self.dir} (nodes: {ids})")

    def save(self) -> None:
        data = dataclasses.asdict(self)
        data.pop("dir")
        data["version"] = STATE_VERSION
        tmp = self.dir / (STATE_FILE + ".tmp")
        # 0600: the file holds the cluster's tracking secret.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, self.dir / STATE_FILE)

    @classmethod
    def load(cls, directory: str) -> Cluster:
        d = Path(directory).resolve()
        path = d / STATE_FILE
        if not path.is_file():
            raise LaunchError(
                f"no cluster in {directory} ({path} does not exist); start one with "
                f"`launch.py up --dir {directory}`, or pass the --dir you gave to `up`"
            )
        try:
            data = json.loads(path.read_text())
            if data.pop("version", None) != STATE_VERSION:
                raise ValueError(f"unknown state version (this script writes {STATE_VERSION})")
            nodes = [Node(**n) for n in data.pop("nodes")]
            return cls(dir=d, nodes=nodes, **data)
        except (ValueError, TypeError, KeyError) as e:
            raise LaunchError(f"{path} is not a state file this script understands: {e}") from e


def plan_node(node_id: int, base_port: int, netns: bool) -> Node:
    port = base_port + 10 * node_id
    if netns:
        if node_id > NETNS_NODES_MAX:
            raise LaunchError(f"--netns supports at most {NETNS_NODES_MAX} nodes (one {SUBNET}.N address each)")
        return Node(
            node_id,
            f"{SUBNET}.{node_id}",
            port,
            port + 1,
            port + 2,
            f"{NETNS_PREFIX}{node_id}",
            f"{VETH_PREFIX}{node_id}",
        )
    return Node(node_id, LOOPBACK, port, port + 1, port + 2)


def check_ports(base_port: int, node_ids: list[int]) -> None:
    top = base_port + 10 * max(node_ids) + 2
    if base_port < 1 or top > 65535:
        raise LaunchError(f"--base-port {base_port}: node {max(node_ids)} would need port {top}; ports are 1-65535")


# ------------------------------------------------------------------------- config


def toml_string_value(name: str, value: str) -> str:
    if any(ch in value for ch in '"\\\n'):
        raise LaunchError(f"{name} may not contain a double quote, a backslash or a newline (got: {value!r})")
    return value


def render_template(text: str, values: dict[str, str], source: str) -> str:
    """`${NAME}` -> values[NAME] on every non-comment line (the rules in the template)."""
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.lstrip(" \t").startswith("#"):
            out.append(line)
            continue
        rendered = ""
        while "${" in line:
            pre, rest = line.split("${", 1)
            if "}" not in rest:
                raise LaunchError(f"{source}:{lineno}: ${{ without a closing }}")
            name, line = rest.split("}", 1)
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise LaunchError(f"{source}:{lineno}: ${{{name}}} is not a valid placeholder")
            if name not in values:
                raise LaunchError(f"{source}:{lineno}: the template needs ${name}, which launch.py does not provide")
            rendered += pre + values[name]
        out.append(rendered + line)
    return "\n".join(out) + "\n"


def node_config(c: Cluster, n: Node) -> str:
    tls = ""
    if c.tls:
        ca, cert, key = tls_files(c, n)
        tls = f'[cluster.tls]\nca = "{ca}"\ncert = "{cert}"\nkey = "{key}"'
    values = {
        "NODE_ID": str(n.id),
        "DATA_DIR": str(c.data_dir(n)),
        "GRPC_ADDR": n.grpc_addr,
        "HTTP_ADDR": f"{n.host}:{n.http_port}",
        "LOG_LEVEL": c.log_level,
        "CLUSTER_LISTEN": n.advertise,
        "ADVERTISE": n.advertise,
        "SEEDS": "[" + ", ".join(f'"{s}"' for s in c.seeds) + "]",
        "CLUSTER_TLS": tls,
    }
    for name in ("DATA_DIR", "LOG_LEVEL"):
        toml_string_value(name, values[name])
    if c.tls:
        for path in tls_files(c, n):
            toml_string_value("the TLS file path", str(path))
    try:
        template = TEMPLATE.read_text()
    except OSError as e:
        raise LaunchError(f"cannot read the config template {TEMPLATE}: {e}") from e
    text = render_template(template, values, str(TEMPLATE))
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise LaunchError(f"{TEMPLATE} rendered for node {n.id} is not valid TOML: {e}") from e
    return text


def write_config(c: Cluster, n: Node) -> None:
    c.config_path(n).write_text(node_config(c, n))


# ---------------------------------------------------------------------------- TLS


def tls_files(c: Cluster, n: Node) -> tuple[Path, Path, Path]:
    return c.tls_dir / "ca.pem", c.tls_dir / f"node{n.id}.pem", c.tls_dir / f"node{n.id}-key.pem"


def openssl(*args: str, cwd: Path) -> None:
    if not shutil.which("openssl"):
        raise LaunchError("--tls needs the openssl command (install OpenSSL, or start without --tls)")
    run(["openssl", *args], cwd=cwd)


def make_ca(c: Cluster) -> None:
    """A private CA for this cluster only: DIR/tls/ca.pem and ca-key.pem (P-256)."""
    c.tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if (c.tls_dir / "ca.pem").exists():
        return
    openssl(
        "req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "3650", "-subj", "/CN=Chorus local cluster CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=c.tls_dir,
    )  # fmt: skip


def make_node_cert(c: Cluster, n: Node) -> None:
    """nodeN.pem / nodeN-key.pem signed by the CA, for both ends of node-to-node mTLS."""
    name = f"node{n.id}"
    if (c.tls_dir / f"{name}.pem").exists():
        return
    ext = c.tls_dir / f"{name}.ext"
    ext.write_text(
        f"subjectAltName = IP:{n.host}, DNS:{name}, DNS:localhost\n"
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = serverAuth, clientAuth\n"
    )
    openssl(
        "req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", "-subj", f"/CN=chorus-{name}",
        cwd=c.tls_dir,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
        "-set_serial", f"0x{secrets.token_hex(16)}", "-days", "825", "-sha256",
        "-extfile", ext.name, "-out", f"{name}.pem",
        cwd=c.tls_dir,
    )  # fmt: skip
    for leftover in (ext, c.tls_dir / f"{name}.csr"):
        leftover.unlink(missing_ok=True)
    for key in c.tls_dir.glob("*-key.pem"):
        key.chmod(0o600)


# ---------------------------------------------------------------------- processes


def run(cmd: list[str], cwd: Path | None = None, ok_if: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a helper command; raise LaunchError with its stderr unless it succeeds (or its
    error output contains `ok_if`, for deleting what is already gone)."""
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise LaunchError(f"`{cmd[0]}` is not installed or not on PATH") from e
    if p.returncode != 0 and not (ok_if and ok_if in (p.stderr + p.stdout)):
        raise LaunchError(f"`{shlex.join(cmd)}` failed (exit {p.returncode}): {(p.stderr or p.stdout).strip()}")
    return p


def process_cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return None  # Linux, and the process is gone
    except OSError:
        return None
    p = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)  # no /proc (macOS)
    return p.stdout.strip() or None


def process_state(pid: int) -> str | None:
    """`R`/`S`/`D` running, `T` stopped, `Z` zombie, None gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return None
    except (OSError, IndexError):
        return None
    p = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True)
    return p.stdout.strip()[:1] or None


def alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child that exited
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return process_state(pid) not in (None, "Z", "X")


def node_pid(c: Cluster, n: Node) -> int | None:
    """The pid of node N's process if it is alive and really is that node (the pid file
    may be stale and the number reused: the command line must name the node's config)."""
    try:
        pid = int(c.pid_path(n).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if not alive(pid):
        return None
    cmdline = process_cmdline(pid)
    if cmdline is None or str(c.config_path(n)) not in cmdline:
        return None
    return pid


def require_pid(c: Cluster, n: Node) -> int:
    pid = node_pid(c, n)
    if pid is None:
        raise LaunchError(f"node {n.id} is not running (start it with `launch.py start {n.id}{dir_flag(c)}`)")
    return pid


def node_env(c: Cluster) -> dict[str, str]:
    # CHORUS_* variables of the caller's shell would override every node's config alike
    # (one CHORUS_GRPC_ADDR for all nodes); the nodes get only the files' settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHORUS_")}
    env["CHORUS_TRACKING_SECRET"] = c.tracking_secret  # every node needs the same key
    env.setdefault("RUST_BACKTRACE", "1")
    return env


def start_node(c: Cluster, n: Node) -> subprocess.Popen[bytes]:
    pid = node_pid(c, n)
    if pid is not None:
        raise LaunchError(f"node {n.id} is already running (pid {pid})")
    if not c.config_path(n).is_file():
        raise LaunchError(f"{c.config_path(n)} is missing; `launch.py down{dir_flag(c)} --purge` and `up` again")
    c.data_dir(n).mkdir(parents=True, exist_ok=True)
    cmd = [c.chorus_bin, "run", "--config", str(c.config_path(n))]
    if n.netns:
        cmd = ["ip", "netns", "exec", n.netns, *cmd]  # ip execs the node: the pid stays the node's
    with open(c.log_path(n), "ab") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"\n=== launch.py {stamp}: starting node {n.id}: {shlex.join(cmd)}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=c.dir,
                env=node_env(c),
                start_new_session=True,  # Ctrl-C here does not reach the nodes
            )
        except OSError as e:
            raise LaunchError(f"cannot start node {n.id} ({cmd[0]}): {e}") from e
    c.pid_path(n).write_text(f"{proc.pid}\n")
    return proc


def log_tail(c: Cluster, n: Node, lines: int = LOG_TAIL_LINES) -> str:
    path = c.log_path(n)
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return f"({path} does not exist)"
    return f"--- last {len(text)} lines of {path} ---\n" + "\n".join(text) + f"\n--- end of {path.name} ---"


def http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with HTTP.open(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError, ValueError):
        return None


def wait_healthy(c: Cluster, nodes: list[Node], procs: dict[int, subprocess.Popen[bytes]], timeout: float) -> None:
    """Until every node's GET /healthz answers 200; a node that exits fails at once."""
    deadline = time.monotonic() + timeout
    pending = {n.id: n for n in nodes}
    while pending:
        for n in list(pending.values()):
            proc = procs.get(n.id)
            if proc is not None and proc.poll() is not None:
                raise LaunchError(
                    f"node {n.id} exited (status {proc.returncode}) before answering {n.http_url}/healthz\n{log_tail(c, n)}"
                )
            if http_status(f"{n.http_url}/healthz") == 200:
                print(f"  node {n.id}: {n.http_url}/healthz answers 200")
                del pending[n.id]
        if pending and time.monotonic() > deadline:
            tails = "\n".join(log_tail(c, n) for n in pending.values())
            ids = ", ".join(str(i) for i in pending)
            raise LaunchError(f"node {ids} did not answer GET /healthz within {timeout:g}s (--timeout)\n{tails}")
        if pending:
            time.sleep(0.2)


def wait_ready(nodes: list[Node], timeout: float) -> list[Node]:
    """Until every node's GET /readyz answers 200 or the deadline; returns the nodes that are not ready."""
    deadline = time.monotonic() + timeout
    pending = list(nodes)
    while pending and time.monotonic() < deadline:
        pending = [n for n in pending if http_status(f"{n.http_url}/readyz") != 200]
        if pending:
            time.sleep(0.5)
    return pending


def stop_pids(c: Cluster, pids: dict[int, int], timeout: float) -> None:
    """SIGTERM (and SIGCONT, so a SIGSTOPped node sees it), then SIGKILL after `timeout`."""
    for node_id, pid in pids.items():
        for sig in (signal.SIGTERM, signal.SIGCONT):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        print(f"  node {node_id}: SIGTERM sent to pid {pid}")
    deadline = time.monotonic() + timeout
    remaining = dict(pids)
    while remaining and time.monotonic() < deadline:
        remaining = {i: p for i, p in remaining.items() if alive(p)}
        if remaining:
            time.sleep(0.1)
    for node_id, pid in remaining.items():
        print(f"  node {node_id}: still running after {timeout:g}s; SIGKILL (see {c.log_path(c.node(node_id))})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while remaining and time.monotonic() < deadline:
        remaining = {i: p for i, p in remaining.items() if alive(p)}
        if remaining:
            time.sleep(0.1)
    for node_id, pid in remaining.items():
        print(f"  node {node_id}: pid {pid} is still there after SIGKILL (uninterruptible I/O?)")
    for node_id in pids:
        if node_id not in remaining:
            c.pid_path(c.node(node_id)).unlink(missing_ok=True)


def stop_nodes(c: Cluster, timeout: float) -> None:
    pids = {n.id: pid for n in c.nodes if (pid := node_pid(c, n)) is not None}
    for n in c.nodes:
        if n.id not in pids:
            c.pid_path(n).unlink(missing_ok=True)  # stale
    if pids:
        stop_pids(c, pids, timeout)


def ctl(c: Cluster, n: Node, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = [c.ctl_bin, "--endpoint", n.endpoint, *args]
    print(f"$ {shlex.join(cmd)}")
    try:
        env = {k: v for k, v in os.environ.items() if k != "CHORUS_ENDPOINT"}
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except FileNotFoundError as e:
        raise LaunchError(f"chorusctl not found at {c.ctl_bin}") from e
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"no answer within {timeout:g}s")


def ctl_output(p: subprocess.CompletedProcess[str]) -> str:
    return "\n".join(s.strip() for s in (p.stdout, p.stderr) if s.strip())


def already_initialized(p: subprocess.CompletedProcess[str]) -> bool:
    return re.search(r"already initiali[sz]ed", p.stdout + p.stderr, re.IGNORECASE) is not None


def cluster_init(c: Cluster, via: Node) -> None:
    """`chorusctl cluster init` once; a few retries for a node whose node-to-node listener
    lags its /healthz. "already initialized" (a retry after a lost answer, or a resumed
    cluster) counts as done."""
    args = ("cluster", "init", "--shards", str(c.shards), "--replication", str(c.replication))
    for attempt in range(1, INIT_ATTEMPTS_MAX + 1):
        p = ctl(c, via, *args)
        if p.returncode == 0 or already_initialized(p):
            if out := ctl_output(p):
                print(out)
            return
        if attempt == INIT_ATTEMPTS_MAX:
            raise LaunchError(f"`chorusctl cluster init` failed {attempt} times; last answer:\n{ctl_output(p)}")
        print(f"  init failed (attempt {attempt}/{INIT_ATTEMPTS_MAX}), retrying in 2s: {ctl_output(p)}")
        time.sleep(2)


# -------------------------------------------------------------------------- netns


def require_root(what: str) -> None:
    if not sys.platform.startswith("linux"):
        raise LaunchError(f"{what} needs Linux network namespaces")
    if os.geteuid() != 0:
        raise LaunchError(
            f"{what} needs root: it creates network namespaces, veth pairs and the bridge {BRIDGE}. "
            "Run it with sudo (e.g. `sudo ./cluster/launch.py up --netns`), or start without --netns"
        )
    if not shutil.which("ip"):
        raise LaunchError(f"{what} needs the `ip` command (iproute2)")


def require_netns(c: Cluster, what: str) -> None:
    if not c.netns:
        raise LaunchError(f"`{what}` needs a cluster started with `up --netns` (the one in {c.dir} was not)")
    require_root(what)


def link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def link_is_up(name: str) -> bool | None:
    try:
        return bool(int(Path(f"/sys/class/net/{name}/flags").read_text(), 16) & 0x1)  # IFF_UP
    except (OSError, ValueError):
        return None


def netns_names() -> set[str]:
    out = run(["ip", "netns", "list"]).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def netns_preflight(nodes: list[Node]) -> None:
    """Refuse to touch anything that is not ours: an existing bridge, namespace or a
    route/address already in the subnet."""
    if link_exists(BRIDGE):
        raise LaunchError(
            f"the bridge {BRIDGE} already exists: another `launch.py up --netns` cluster is running "
            f"(stop it with `launch.py down --dir ITS_DIR`) or a previous one was not cleaned up "
            f"(`ip link del {BRIDGE}`)"
        )
    taken = netns_names() & {n.netns for n in nodes if n.netns}
    if taken:
        raise LaunchError(
            f"network namespace {', '.join(sorted(taken))} already exists (remove it: `ip netns del NAME`)"
        )
    routes = run(["ip", "-4", "route", "show", "root", f"{SUBNET}.0/{PREFIX_LEN}"]).stdout.strip()
    addrs = [line for line in run(["ip", "-4", "-o", "addr", "show"]).stdout.splitlines() if f" {SUBNET}." in line]
    if routes or addrs:
        raise LaunchError(
            f"{SUBNET}.0/{PREFIX_LEN} is already in use on this host; --netns needs it for itself:\n"
            + "\n".join([routes, *addrs]).strip()
        )


def bridge_netfilter_fix() -> bool:
    """With br_netfilter loaded, frames crossing a bridge go through iptables' FORWARD
    chain, whose policy is often DROP (Docker sets it), which would silently partition
    every node. Accept traffic that stays on our bridge; returns whether a rule was added."""
    try:
        on = Path("/proc/sys/net/bridge/bridge-nf-call-iptables").read_text().strip() == "1"
    except OSError:
        return False
    if not on:
        return False
    if not shutil.which("iptables"):
        print(
            "  warning: br_netfilter is active and iptables is not installed: if the FORWARD policy "
            f"drops packets, the nodes cannot reach each other across {BRIDGE}"
        )
        return False
    rule = ["FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-m", "comment", "--comment", IPTABLES_COMMENT, "-j", "ACCEPT"]
    if subprocess.run(["iptables", "-C", *rule], capture_output=True).returncode != 0:
        run(["iptables", "-I", *rule])
        print(f"  iptables: accepting forwarded traffic within {BRIDGE} (br_netfilter is on; removed by `down`)")
    return True


def netns_setup_bridge(c: Cluster) -> None:
    if link_exists(BRIDGE):
        return
    run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    run(["ip", "addr", "add", f"{HOST_ADDR}/{PREFIX_LEN}", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])
    print(f"  bridge {BRIDGE} at {HOST_ADDR}/{PREFIX_LEN}")
    c.iptables_rule = bridge_netfilter_fix() or c.iptables_rule
    c.save()


def netns_setup_node(n: Node) -> None:
    """Namespace chorusN with eth0 = 10.77.0.N/24 and lo, its peer vchorusN on the bridge.
    No default route: a node can reach the other nodes and the host, nothing else."""
    assert n.netns and n.veth
    if n.netns not in netns_names():
        run(["ip", "netns", "add", n.netns])
    if not link_exists(n.veth):
        run(["ip", "link", "add", n.veth, "type", "veth", "peer", "name", "eth0", "netns", n.netns])
        run(["ip", "link", "set", n.veth, "master", BRIDGE])
        run(["ip", "link", "set", n.veth, "up"])
        run(["ip", "-n", n.netns, "addr", "add", f"{n.host}/{PREFIX_LEN}", "dev", "eth0"])
        run(["ip", "-n", n.netns, "link", "set", "eth0", "up"])
        run(["ip", "-n", n.netns, "link", "set", "lo", "up"])
        print(f"  namespace {n.netns}: eth0 {n.host}/{PREFIX_LEN} <-> {n.veth} on {BRIDGE}")


def netns_teardown(c: Cluster) -> None:
    existing = netns_names()
    removed = []
    for n in c.nodes:
        if n.netns in existing:
            run(["ip", "netns", "del", n.netns])  # deletes eth0 and with it the veth pair
            removed.append(n.netns)
        if n.veth and link_exists(n.veth):
            run(["ip", "link", "del", n.veth], ok_if="Cannot find device")
    if link_exists(BRIDGE):
        run(["ip", "link", "del", BRIDGE], ok_if="Cannot find device")
        removed.append(BRIDGE)
    if c.iptables_rule and shutil.which("iptables"):
        rule = ["FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-m", "comment", "--comment", IPTABLES_COMMENT, "-j", "ACCEPT"]
        while subprocess.run(["iptables", "-C", *rule], capture_output=True).returncode == 0:
            run(["iptables", "-D", *rule])
        c.iptables_rule = False
    if removed:
        print(f"  removed {', '.join(removed)} (with the veth pairs)")


# ------------------------------------------------------------------------ helpers


def resolve_binary(given: str | None, name: str, flag: str) -> str:
    if given:
        p = Path(given).expanduser()
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise LaunchError(f"{flag} {given}: not an executable file")
        return str(p.resolve())
    targets = []
    if os.environ.get("CARGO_TARGET_DIR"):
        targets.append(Path(os.environ["CARGO_TARGET_DIR"]))
    targets.append(REPO_ROOT / "target")
    candidates = [t / profile / name for t in targets for profile in ("release", "debug")]
    for p in candidates:
        if p.is_file() and os.access(p, os.X_OK):
            return str(p.resolve())
    tried = ", ".join(str(p) for p in candidates)
    raise LaunchError(
        f"no {name} binary found (tried {tried}). Build both binaries first:\n"
        f"    cargo build --release -p chorus-node -p chorus-ctl\nor pass {flag} PATH"
    )


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the node's listeners do
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_ports_free(nodes: list[Node]) -> None:
    for n in nodes:
        for what, port in (("gRPC", n.grpc_port), ("HTTP", n.http_port), ("node-to-node", n.cluster_port)):
            if not port_free(n.host, port):
                raise LaunchError(
                    f"port {port} (node {n.id} {what}) on {n.host} is already in use: is another cluster or "
                    f"`chorus dev` running? Stop it, or choose other ports with --base-port"
                )


def dir_flag(c: Cluster) -> str:
    """` --dir X` for printed commands, empty for the default directory."""
    if c.dir == Path(DEFAULT_DIR).resolve():
        return ""
    return f" --dir {shlex.quote(display_path(c.dir))}"


def display_path(p: Path) -> str:
    try:
        rel = p.relative_to(Path.cwd())
        return f"./{rel}" if str(rel) != "." else "."
    except ValueError:
        return str(p)


def parse_node_ids(c: Cluster, specs: list[str]) -> list[Node]:
    if specs == ["all"]:
        return list(c.nodes)
    nodes = []
    for spec in specs:
        try:
            node_id = int(spec)
        except ValueError:
            raise LaunchError(
                f"{spec!r} is not a node number (nodes: {', '.join(str(n.id) for n in c.nodes)}, or all)"
            ) from None
        nodes.append(c.node(node_id))
    return nodes


def print_summary(c: Cluster) -> None:
    me = display_path(Path(sys.argv[0]).resolve()) if Path(sys.argv[0]).name == "launch.py" else "cluster/launch.py"
    d = dir_flag(c)
    ctl_bin = display_path(Path(c.ctl_bin))
    first = c.nodes[0]
    rows = [("NODE", "GRPC (chorusctl --endpoint)", "HTTP (Segment, /healthz, /metrics)", "NODE-TO-NODE", "LOG")]
    rows += [(str(n.id), n.endpoint, n.http_url, n.advertise, display_path(c.log_path(n))) for n in c.nodes]
    print()
    print(
        f"Chorus cluster up: {len(c.nodes)} nodes, {c.shards} shards, replication {c.replication}"
        f"{', network namespaces' if c.netns else ''}{', mutual TLS between nodes' if c.tls else ''}"
        f" (state in {display_path(c.dir)})"
    )
    print_table(rows)
    print(f"""
Try:
  export CHORUS_ENDPOINT={first.endpoint}
  {ctl_bin} cluster status
  {ctl_bin} node list
  {ctl_bin} shard list
  {ctl_bin} event send --name "Product Viewed" --anonymous-id a-1 --properties '{{"sku":"X1"}}'
  curl -s {first.http_url}/metrics | head

Fault drills:
  {me} status{d}
  {me} kill 2{d}        # SIGKILL node 2 (a crash); then: {me} start 2{d}
  {me} stop 3{d}        # SIGSTOP node 3 (a frozen process); then: {me} cont 3{d}
  {me} add{d}           # one more node, joined with `chorusctl node add`""")
    if c.netns:
        print(f"  {me} partition 2{d}   # take node 2's link down; then: {me} heal 2{d}")
    print(f"""
Stop:
  {me} down{d}          # --purge also deletes {display_path(c.dir)}""")


def print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


# ------------------------------------------------------------------------ commands


def cmd_up(args: argparse.Namespace) -> int:
    if args.nodes < 1:
        raise LaunchError("--nodes must be at least 1")
    if args.shards < 1:
        raise LaunchError("--shards must be at least 1")
    if not 1 <= args.replication <= args.nodes:
        raise LaunchError(
            f"--replication {args.replication} needs at least that many nodes (--nodes {args.nodes}) and at least 1"
        )
    check_ports(args.base_port, [args.nodes])
    if args.netns:
        require_root("--netns")
    directory = Path(args.dir).resolve()
    chorus_bin = resolve_binary(args.bin, "chorus", "--bin")
    ctl_bin = resolve_binary(args.ctl, "chorusctl", "--ctl")

    old: Cluster | None = None
    if (directory / STATE_FILE).exists():
        old = Cluster.load(args.dir)
        running = [n.id for n in old.nodes if node_pid(old, n) is not None]
        if running:
            raise LaunchError(
                f"the cluster in {args.dir} is running (node {', '.join(map(str, running))}); "
                f"see `launch.py status{dir_flag(old)}`, or stop it with `launch.py down{dir_flag(old)}`"
            )
        if not args.reset:
            same = (old.initial_nodes, old.base_port, old.netns, old.tls) == (
                args.nodes,
                args.base_port,
                args.netns,
                args.tls,
            )
            if not same:
                raise LaunchError(
                    f"{args.dir} holds a stopped cluster of {old.initial_nodes} nodes (base port {old.base_port}, "
                    f"netns {old.netns}, tls {old.tls}); run `up` with the same options to resume it, "
                    "or add --reset to delete it and start afresh"
                )
    elif directory.exists() and any(directory.iterdir()):
        raise LaunchError(
            f"{args.dir} exists and is not empty, but holds no cluster ({STATE_FILE}); choose another --dir"
        )

    resumed = old is not None and not args.reset
    if resumed:
        assert old is not None
        c = old
        c.chorus_bin, c.ctl_bin = chorus_bin, ctl_bin
        print(f"Resuming the stopped cluster in {display_path(directory)} with its data (--reset starts afresh)")
        if (args.shards, args.replication) != (c.shards, c.replication):
            print(f"  note: it was initialized with --shards {c.shards} --replication {c.replication}; those stay")
    else:
        nodes = [plan_node(i, args.base_port, args.netns) for i in range(1, args.nodes + 1)]
        toml_string_value("--log", args.log)
        c = Cluster(
            dir=directory,
            chorus_bin=chorus_bin,
            ctl_bin=ctl_bin,
            base_port=args.base_port,
            shards=args.shards,
            replication=args.replication,
            initial_nodes=args.nodes,
            netns=args.netns,
            tls=args.tls,
            log_level=args.log,
            seeds=[n.advertise for n in nodes],
            tracking_secret=secrets.token_hex(32),
            nodes=nodes,
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )

    # Everything that can refuse, before anything is deleted or created.
    if old is not None and args.reset and old.netns:
        leftovers = link_exists(BRIDGE) or any(Path("/run/netns", n.netns or "-").exists() for n in old.nodes)
        if leftovers:
            require_root("removing the old cluster's namespaces")
            netns_teardown(old)
    if c.netns and not resumed:
        netns_preflight(c.nodes)
    if not c.netns:
        check_ports_free(c.nodes)
    if old is not None and args.reset:
        print(f"--reset: deleting {display_path(directory)} (data, logs and configs of the old cluster)")
        shutil.rmtree(directory)

    c.dir.mkdir(parents=True, exist_ok=True)
    c.save()  # from here on, `down` can clean up whatever exists
    procs: dict[int, subprocess.Popen[bytes]] = {}
    try:
        if c.tls:
            print(f"Making a private CA and node certificates in {display_path(c.tls_dir)}")
            make_ca(c)
            for n in c.nodes:
                make_node_cert(c, n)
        for n in c.nodes:
            write_config(c, n)
        if c.netns:
            print("Network namespaces:")
            netns_setup_bridge(c)
            for n in c.nodes:
                netns_setup_node(n)
        print(f"Starting {len(c.nodes)} node{'s' if len(c.nodes) != 1 else ''} ({display_path(Path(c.chorus_bin))}):")
        for n in c.nodes:
            procs[n.id] = start_node(c, n)
            print(
                f"  node {n.id}: pid {procs[n.id].pid}, {display_path(c.config_path(n))}, log {display_path(c.log_path(n))}"
            )
        print(f"Waiting for /healthz (up to {args.timeout:g}s):")
        wait_healthy(c, c.nodes, procs, args.timeout)
        print(f"Initializing the cluster through node {c.nodes[0].id}:")
        cluster_init(c, c.nodes[0])
    except BaseException as e:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.stdout = sys.stderr  # the clean-up must not stop half-way on a closed pipe
        what = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        print(f"\nlaunch.py: up {what}; stopping the nodes it started (logs and data stay in {display_path(c.dir)})")
        # Our own children, whatever their command line has become.
        stop_pids(c, {i: p.pid for i, p in procs.items() if p.poll() is None}, timeout=10)
        stop_nodes(c, timeout=10)
        if c.netns:
            netns_teardown(c)
        if isinstance(e, LaunchError):
            raise LaunchError(
                f"{e}\n\nFix the cause, then `launch.py up{dir_flag(c)} --reset` (or without --reset to keep the data)"
            ) from e
        raise

    print(f"Waiting for /readyz (up to {args.timeout:g}s):")
    not_ready = wait_ready(c.nodes, args.timeout)
    if not_ready:
        ids = ", ".join(str(n.id) for n in not_ready)
        print(
            f"  warning: node {ids} not ready yet (GET /readyz is not 200); see `launch.py status{dir_flag(c)}` and the logs"
        )
    else:
        print("  every node is ready")
    print_summary(c)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    c = Cluster.load(args.dir)
    if c.netns:
        require_root("stopping a --netns cluster")
    print(f"Stopping the cluster in {display_path(c.dir)}:")
    stop_nodes(c, args.timeout)
    if c.netns:
        netns_teardown(c)
        c.save()
    if args.purge:
        shutil.rmtree(c.dir)
        print(f"  deleted {display_path(c.dir)}")
    else:
        print(
            f"  stopped; data and logs stay in {display_path(c.dir)} (`launch.py up{dir_flag(c)}` resumes, --purge deletes)"
        )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    c = Cluster.load(args.dir)
    rows = [("NODE", "PID", "PROCESS", "LINK", "HEALTHZ", "READYZ", "GRPC", "HTTP")]
    healthy: list[Node] = []
    all_ok = True
    for n in c.nodes:
        pid = node_pid(c, n)
        state = process_state(pid) if pid else None
        process = "-" if pid is None else ("stopped (SIGSTOP)" if state == "T" else "running")
        link = "-"
        if n.veth:
            up = link_is_up(n.veth)
            link = "missing" if up is None else ("up" if up else "PARTITIONED")
        hz = rz = "-"
        if pid and state != "T":
            h, r = http_status(f"{n.http_url}/healthz"), http_status(f"{n.http_url}/readyz")
            hz, rz = (str(h) if h else "no answer"), (str(r) if r else "no answer")
            if h == 200:
                healthy.append(n)
        if pid is None:
            process = "not running"
        all_ok &= hz == "200" and rz == "200"
        rows.append((str(n.id), str(pid or "-"), process, link, hz, rz, n.endpoint, n.http_url))
    print(f"Cluster in {display_path(c.dir)}: {len(c.nodes)} nodes, {c.shards} shards, replication {c.replication}")
    print_table(rows)
    if healthy:
        print()
        p = ctl(c, healthy[0], "cluster", "status", timeout=20)
        print(ctl_output(p))
        all_ok &= p.returncode == 0
    else:
        print("\nNo node answers /healthz; nothing to ask `chorusctl cluster status`.")
    return 0 if all_ok else 1


def send_signal(args: argparse.Namespace, sig: signal.Signals, verb: str, undo: str) -> int:
    c = Cluster.load(args.dir)
    nodes = parse_node_ids(c, args.node)
    for n in nodes:
        pid = require_pid(c, n)
        os.kill(pid, sig)
        print(f"node {n.id} (pid {pid}): {sig.name} sent, {verb}; {undo.format(n=n.id, d=dir_flag(c))}")
    return 0


def cmd_kill(args: argparse.Namespace) -> int:
    return send_signal(args, signal.SIGKILL, "killed like a crash", "`launch.py start {n}{d}` restarts it")


def cmd_stop(args: argparse.Namespace) -> int:
    return send_signal(
        args, signal.SIGSTOP, "frozen (it keeps its sockets but answers nothing)", "`launch.py cont {n}{d}` resumes it"
    )


def cmd_cont(args: argparse.Namespace) -> int:
    return send_signal(args, signal.SIGCONT, "resumed", "`launch.py status{d}` shows the cluster")


def cmd_start(args: argparse.Namespace) -> int:
    c = Cluster.load(args.dir)
    nodes = parse_node_ids(c, args.node)
    if c.netns:
        require_root("starting a node of a --netns cluster")
    procs = {}
    for n in nodes:
        pid = node_pid(c, n)
        if pid is not None:
            state = process_state(pid)
            hint = f" but stopped: `launch.py cont {n.id}{dir_flag(c)}`" if state == "T" else ""
            print(f"node {n.id} is already running (pid {pid}){hint}")
            continue
        if c.netns:
            netns_setup_bridge(c)
            netns_setup_node(n)
        procs[n.id] = start_node(c, n)
        print(f"node {n.id}: started with {display_path(c.config_path(n))} (pid {procs[n.id].pid})")
    if procs:
        wait_healthy(c, [c.node(i) for i in procs], procs, args.timeout)
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    c = Cluster.load(args.dir)
    if c.netns:
        require_root("adding a node to a --netns cluster")
    members = [n for n in c.nodes if node_pid(c, n) is not None and http_status(f"{n.http_url}/healthz") == 200]
    if not members:
        raise LaunchError(
            f"no node of the cluster in {args.dir} is running and healthy; `launch.py start all{dir_flag(c)}` first"
        )
    n = plan_node(max(m.id for m in c.nodes) + 1, c.base_port, c.netns)
    check_ports(c.base_port, [n.id])
    if not c.netns:
        check_ports_free([n])
    c.nodes.append(n)
    c.save()
    if c.tls:
        make_node_cert(c, n)
    write_config(c, n)
    if c.netns:
        netns_setup_bridge(c)
        netns_setup_node(n)
    proc = start_node(c, n)
    print(f"node {n.id}: started (pid {proc.pid}), {display_path(c.config_path(n))}, log {display_path(c.log_path(n))}")
    wait_healthy(c, [n], {n.id: proc}, args.timeout)
    p = ctl(c, members[0], "node", "add", "--id", str(n.id), "--addr", n.advertise)
    print(ctl_output(p))
    if p.returncode != 0:
        raise LaunchError(
            f"`chorusctl node add` failed; node {n.id} is running but not a member. Retry with:\n"
            f"    {c.ctl_bin} --endpoint {members[0].endpoint} node add --id {n.id} --addr {n.advertise}"
        )
    print(f"node {n.id} joined: gRPC {n.endpoint}, HTTP {n.http_url}; it hosts no replica until shards move onto it")
    return 0


def cmd_partition(args: argparse.Namespace, up: bool) -> int:
    c = Cluster.load(args.dir)
    require_netns(c, "heal" if up else "partition")
    for n in parse_node_ids(c, args.node):
        assert n.veth
        if not link_exists(n.veth):
            raise LaunchError(
                f"node {n.id}'s link {n.veth} does not exist (`launch.py start {n.id}{dir_flag(c)}` recreates it)"
            )
        run(["ip", "link", "set", n.veth, "up" if up else "down"])
        if up:
            print(f"node {n.id}: link {n.veth} up; it can reach the other nodes again")
        else:
            print(
                f"node {n.id}: link {n.veth} down; cut off from every other node and the host "
                f"(`launch.py heal {n.id}{dir_flag(c)}` reconnects it)"
            )
    return 0


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch.py",
        description="Run a local multi-node Chorus cluster (one process per node) for development and fault drills.",
        epilog="Start with: cargo build --release -p chorus-node -p chorus-ctl && ./cluster/launch.py up. "
        "`launch.py COMMAND --help` describes each command; cluster/README.md has the walk-through.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir",
        default=DEFAULT_DIR,
        metavar="DIR",
        help=f"the cluster's directory: state, configs, logs, pids, data (default {DEFAULT_DIR})",
    )
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument(
        "--timeout",
        type=float,
        default=60,
        metavar="SECONDS",
        help="how long to wait for the nodes' /healthz (and, after `up` runs init, /readyz); default 60",
    )
    nodes_arg = {"nargs": "+", "metavar": "N", "help": "node number(s), e.g. 2 or 2 3"}

    p = sub.add_parser(
        "up",
        parents=[common, waiting],
        help="write configs, start the nodes, wait for /healthz, run `cluster init`",
        description="Write one config per node, start every node in the background, wait until each "
        "answers GET /healthz, run `chorusctl cluster init` against node 1 and print the endpoints. "
        "On a directory holding a stopped cluster started with the same options, resume it with its data.",
    )
    p.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    p.add_argument("--shards", type=int, default=16, help="shards, for `cluster init` (default 16)")
    p.add_argument(
        "--replication", type=int, default=3, help="replicas per shard, for `cluster init` (default 3; at most --nodes)"
    )
    p.add_argument(
        "--bin", metavar="PATH", help="the chorus binary (default target/release/chorus, else target/debug/chorus)"
    )
    p.add_argument(
        "--ctl",
        metavar="PATH",
        help="the chorusctl binary (default target/release/chorusctl, else target/debug/chorusctl)",
    )
    p.add_argument(
        "--base-port",
        type=int,
        default=7700,
        metavar="PORT",
        help="node N listens on PORT+10N (gRPC), +1 (HTTP), +2 (node-to-node); default 7700",
    )
    p.add_argument(
        "--netns",
        action="store_true",
        help=f"root only: each node in network namespace chorusN at {SUBNET}.N on bridge {BRIDGE} (enables partition/heal)",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="mutual TLS between nodes: make a private CA and node certificates in DIR/tls (needs openssl)",
    )
    p.add_argument(
        "--log",
        default="info,openraft=warn",
        metavar="FILTER",
        help="the nodes' log filter (default info,openraft=warn)",
    )
    p.add_argument(
        "--reset", action="store_true", help="delete a stopped cluster in DIR (data included) and start afresh"
    )
    p.set_defaults(func=cmd_up)

    p = sub.add_parser(
        "down",
        parents=[common],
        help="stop every node (SIGTERM, then SIGKILL) and remove the namespaces",
        description="Send SIGTERM to every node, SIGKILL to those still running after --timeout; remove "
        "the network namespaces, veth pairs and bridge of a --netns cluster. Data and logs are kept unless --purge.",
    )
    p.add_argument(
        "--timeout", type=float, default=15, metavar="SECONDS", help="grace period before SIGKILL (default 15)"
    )
    p.add_argument("--purge", action="store_true", help="also delete DIR (data, logs, configs)")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser(
        "status",
        parents=[common],
        help="each node's process, link, /healthz and /readyz, then `chorusctl cluster status`",
        description="Show each node's process state, link (--netns), GET /healthz and /readyz, then "
        "`chorusctl cluster status` from a healthy node. Exit status 1 unless every node is healthy and ready.",
    )
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "kill",
        parents=[common],
        help="SIGKILL node N (a crash; `start N` restarts it)",
        description="Kill node N with SIGKILL: no shutdown, like a crash or a power cut.",
    )
    p.add_argument("node", **nodes_arg)
    p.set_defaults(func=cmd_kill)

    p = sub.add_parser(
        "stop",
        parents=[common],
        help="SIGSTOP node N (a frozen process; `cont N` resumes it)",
        description="Freeze node N with SIGSTOP: its sockets stay open but it answers nothing (a GC "
        "pause, a hung disk, a VM migration).",
    )
    p.add_argument("node", **nodes_arg)
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser(
        "cont",
        parents=[common],
        help="SIGCONT node N (resume a stopped node)",
        description="Resume node N, frozen by `stop N`, with SIGCONT.",
    )
    p.add_argument("node", **nodes_arg)
    p.set_defaults(func=cmd_cont)

    p = sub.add_parser(
        "start",
        parents=[common, waiting],
        help="restart node N with its existing config and data",
        description="Start node N again (after `kill N` or `down`) with its existing config and data, "
        "and wait for its /healthz. `start all` starts every node that is not running.",
    )
    p.add_argument("node", nargs="+", metavar="N", help="node number(s), or all")
    p.set_defaults(func=cmd_start)

    p = sub.add_parser(
        "add",
        parents=[common, waiting],
        help="start one more node and join it with `chorusctl node add`",
        description="Start a new node (the next number, with the cluster's seeds) and run "
        "`chorusctl node add --id N --addr ADVERTISE` against a running member.",
    )
    p.set_defaults(func=cmd_add)

    p = sub.add_parser(
        "partition",
        parents=[common],
        help="--netns clusters: take node N's link down (cut it off)",
        description="Take the host side of node N's veth pair down: node N can reach no other node "
        "(and the host cannot reach it) until `heal N`. Needs a cluster started with --netns, and root.",
    )
    p.add_argument("node", **nodes_arg)
    p.set_defaults(func=lambda a: cmd_partition(a, up=False))

    p = sub.add_parser(
        "heal",
        parents=[common],
        help="--netns clusters: bring node N's link back up",
        description="Bring node N's link back up after `partition N`. Needs root.",
    )
    p.add_argument("node", **nodes_arg)
    p.set_defaults(func=lambda a: cmd_partition(a, up=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LaunchError as e:
        print(f"launch.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("launch.py: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `launch.py status | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
