//! The end-to-end harness: builds the real `chorus` and `chorusctl` binaries once per
//! test process, runs nodes as child processes on port 0 with their stderr kept in a
//! log file, and gives tests gRPC clients, a `chorusctl` runner, a raw HTTP/1.1
//! client, seeded randomness and `wait_until` (poll observed state with a deadline).
//!
//! It must not mock or link product code: everything goes through the public gRPC,
//! HTTP and command-line interfaces of real processes. No timing assertions either:
//! deadlines here are generous bounds for a loaded machine, never measurements.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};

pub use chorus_proto::internal;
pub use chorus_proto::v1;
use v1::admin_client::AdminClient;
use v1::ingest_client::IngestClient;
use v1::profiles_client::ProfilesClient;

/// How long a node may take from spawn to its ready line (debug build, loaded machine).
pub const NODE_READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a node may take to exit after SIGTERM (it drains streams for up to 10 s).
pub const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(45);
/// How long one `chorusctl` run may take.
pub const CTL_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest gRPC message the test clients accept.
const GRPC_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Print a test phase (ENGINEERING.md §3.8: tests are stories told in phases).
/// The elapsed time since the test process started is shown for diagnosis only.
pub fn phase(name: &str) {
    static START: OnceLock<Instant> = OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed();
    eprintln!("--- {name} [{:.1}s]", t.as_secs_f64());
}

// ---------------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------------

/// The binaries under test and where the build puts its scratch files.
#[derive(Debug)]
pub struct Bins {
    pub chorus: PathBuf,
    pub chorusctl: PathBuf,
    /// `<target>/tmp/chorus-tests`: node logs live here (kept after the test).
    pub scratch: PathBuf,
}

static BINS: OnceLock<Result<Bins, String>> = OnceLock::new();

/// Build `chorus` and `chorusctl` (once per test process) with the profile of this test
/// build, into this test build's target directory. `CHORUS_TEST_BIN_DIR` points at
/// prebuilt binaries instead (no build).
pub fn bins() -> &'static Bins {
    match BINS.get_or_init(build_bins) {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    }
}

fn build_bins() -> Result<Bins, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the test executable: {e}"))?;
    // target/<profile>/deps/<test>-<hash>
    let deps = exe.parent().ok_or("test executable has no parent directory")?;
    let profile_dir = deps.parent().ok_or("test executable is not in target/<profile>/deps")?;
    if deps.file_name().and_then(|n| n.to_str()) != Some("deps") {
        return Err(format!(
            "the test executable {} is not in target/<profile>/deps; set CHORUS_TEST_BIN_DIR to a directory holding chorus and chorusctl",
            exe.display()
        ));
    }
    let target_dir = profile_dir.parent().ok_or("no target directory above the profile directory")?;
    let scratch = target_dir.join("tmp").join("chorus-tests");
    std::fs::create_dir_all(&scratch).map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
    let exe_suffix = std::env::consts::EXE_SUFFIX;
    if let Some(dir) = std::env::var_os("CHORUS_TEST_BIN_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        let b = Bins { chorus: dir.join(format!("chorus{exe_suffix}")), chorusctl: dir.join(format!("chorusctl{exe_suffix}")), scratch };
        for p in [&b.chorus, &b.chorusctl] {
            if !p.is_file() {
                return Err(format!("CHORUS_TEST_BIN_DIR is set but {} does not exist", p.display()));
            }
        }
        return Ok(b);
    }
    let profile_name = profile_dir.file_name().and_then(|n| n.to_str()).ok_or("profile directory name is not UTF-8")?;
    let cargo_profile = if profile_name == "debug" { "dev" } else { profile_name };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("Cargo.toml");
    let cargo = env!("CARGO");
    let args = [
        "build",
        "--quiet",
        "-p",
        "chorus-node",
        "-p",
        "chorus-ctl",
        "--bins",
        "--profile",
        cargo_profile,
        "--manifest-path",
        manifest.to_str().ok_or("manifest path is not UTF-8")?,
        "--target-dir",
        target_dir.to_str().ok_or("target directory is not UTF-8")?,
    ];
    eprintln!("chorus-tests: building the binaries under test: {cargo} {}", args.join(" "));
    let started = Instant::now();
    let out = std::process::Command::new(cargo)
        .args(args)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .map_err(|e| format!("cannot run {cargo} to build chorus and chorusctl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building chorus and chorusctl failed ({}): `cargo build -p chorus-node -p chorus-ctl --bins` must pass before the end-to-end tests can run\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    eprintln!("chorus-tests: binaries ready in {:.1?}", started.elapsed());
    Ok(Bins { chorus: profile_dir.join(format!("chorus{exe_suffix}")), chorusctl: profile_dir.join(format!("chorusctl{exe_suffix}")), scratch })
}

// ---------------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------------

/// How to start a node.
#[derive(Clone, Debug)]
pub struct NodeOpts {
    /// Used in log file names and messages.
    pub name: String,
    pub shards: u32,
    pub manual_clock: bool,
    /// Run `chorus run --config FILE` with this TOML instead of `chorus dev`.
    pub config_toml: Option<String>,
    /// Extra environment (`CHORUS_*` from the caller's environment is removed first).
    pub env: Vec<(String, String)>,
    pub log: String,
    /// Data directory; a fresh temporary one (removed on drop) when `None`.
    pub data_dir: Option<PathBuf>,
    /// A cluster node: its shard count comes from `cluster init`, not `--shards`.
    pub cluster: bool,
    /// A fixed public gRPC port (kept across restarts), else port 0.
    pub grpc_port: Option<u16>,
    /// Run inside this network namespace (`ip netns exec`), listening on `bind_ip`.
    pub netns: Option<String>,
    /// The address the node's gRPC and HTTP servers bind (default 127.0.0.1).
    pub bind_ip: String,
}

impl NodeOpts {
    pub fn new(name: &str) -> NodeOpts {
        NodeOpts {
            name: name.to_string(),
            shards: 4,
            manual_clock: false,
            config_toml: None,
            env: Vec::new(),
            log: "info,openraft=warn".to_string(),
            data_dir: None,
            cluster: false,
            grpc_port: None,
            netns: None,
            bind_ip: "127.0.0.1".to_string(),
        }
    }

    /// A cluster node in network namespace `netns` at address `ip`, with fixed ports
    /// (7700 gRPC, 7900 node-to-node) and `seeds` (the other nodes' addresses).
    pub fn cluster_node_in_netns(name: &str, id: u64, netns: &str, ip: &str, seeds: &[String], heartbeat: &str) -> NodeOpts {
        let seeds: Vec<String> = seeds.iter().map(|a| format!("\"{a}:7900\"")).collect();
        let toml = format!("node_id = {id}\n[cluster]\nlisten = \"{ip}:7900\"\nseeds = [{}]\nheartbeat = \"{heartbeat}\"\n", seeds.join(", "));
        let mut o = NodeOpts::new(name).config(&toml);
        o.cluster = true;
        o.grpc_port = Some(7700);
        o.netns = Some(netns.to_string());
        o.bind_ip = ip.to_string();
        o
    }

    /// A node of a local cluster: node id `id`, node-to-node address 127.0.0.1:`port`,
    /// the given seeds, raft heartbeat `heartbeat` (e.g. `150ms`), and extra TOML
    /// appended after the `[cluster]` table (e.g. `[cluster.tls]`).
    pub fn cluster_node(name: &str, id: u64, port: u16, seeds: &[u16], heartbeat: &str, extra_toml: &str) -> NodeOpts {
        let seeds: Vec<String> = seeds.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        let toml =
            format!("node_id = {id}\n[cluster]\nlisten = \"127.0.0.1:{port}\"\nseeds = [{}]\nheartbeat = \"{heartbeat}\"\n{extra_toml}\n", seeds.join(", "));
        let mut o = NodeOpts::new(name).config(&toml);
        o.cluster = true;
        o.grpc_port = Some(free_port());
        o
    }
    pub fn shards(mut self, n: u32) -> Self {
        self.shards = n;
        self
    }
    pub fn manual_clock(mut self) -> Self {
        self.manual_clock = true;
        self
    }
    pub fn config(mut self, toml: &str) -> Self {
        self.config_toml = Some(toml.to_string());
        self
    }
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
}

/// A running (or stopped) `chorus` process. Killed on drop; on a failing test its log
/// tail is printed.
pub struct Node {
    opts: NodeOpts,
    child: Option<Child>,
    grpc: SocketAddr,
    http: SocketAddr,
    data_dir: PathBuf,
    logs: Vec<PathBuf>,
    /// One gRPC connection per run, shared by the client helpers.
    channel: tokio::sync::OnceCell<Channel>,
    // Dropped after `child` (fields drop in declaration order).
    _scratch: tempfile::TempDir,
    _data_tmp: Option<tempfile::TempDir>,
}

static NODE_SEQ: AtomicU32 = AtomicU32::new(0);

impl Node {
    /// Start a node and wait for its ready line.
    pub async fn start(opts: NodeOpts) -> Node {
        let scratch = tempfile::Builder::new().prefix("chorus-test-").tempdir().expect("create a scratch directory");
        let (data_dir, data_tmp) = match &opts.data_dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::Builder::new().prefix("chorus-data-").tempdir().expect("create a data directory");
                (t.path().join("data"), Some(t))
            }
        };
        let mut node = Node {
            opts,
            child: None,
            grpc: "0.0.0.0:0".parse().expect("addr"),
            http: "0.0.0.0:0".parse().expect("addr"),
            data_dir,
            logs: Vec::new(),
            channel: tokio::sync::OnceCell::new(),
            _scratch: scratch,
            _data_tmp: data_tmp,
        };
        node.spawn().await;
        node
    }

    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "node {} is already running", self.opts.name);
        self.channel = tokio::sync::OnceCell::new();
        let bins = bins();
        let seq = NODE_SEQ.fetch_add(1, Ordering::Relaxed);
        let log = bins.scratch.join(format!("{}-{}-{}-{}.log", self.opts.name, std::process::id(), seq, unix_ms()));
        let log_file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let mut cmd = match &self.opts.netns {
            None => Command::new(&bins.chorus),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&bins.chorus);
                c
            }
        };
        match &self.opts.config_toml {
            Some(toml) => {
                let path = self._scratch.path().join("chorus.toml");
                std::fs::write(&path, toml).expect("write the node config");
                cmd.arg("run").arg("--config").arg(path);
            }
            None => {
                cmd.arg("dev");
            }
        }
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--grpc-addr")
            .arg(format!("{}:{}", self.opts.bind_ip, self.opts.grpc_port.unwrap_or(0)))
            .arg("--http-addr")
            .arg(format!("{}:0", self.opts.bind_ip))
            .arg("--shards")
            .arg(self.opts.shards.to_string())
            .arg("--log")
            .arg(&self.opts.log);
        if self.opts.manual_clock {
            cmd.args(["--clock", "manual"]);
        }
        for (k, _) in std::env::vars() {
            if k.starts_with("CHORUS_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("NO_COLOR", "1");
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::from(log_file)).kill_on_drop(true);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", bins.chorus.display()));
        self.logs.push(log.clone());
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + NODE_READY_TIMEOUT;
        let ready = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, lines.next_line()).await {
                Ok(Ok(Some(line))) if line.starts_with("chorus ready ") => break line,
                Ok(Ok(Some(_other))) => continue,
                Ok(Ok(None)) | Ok(Err(_)) => {
                    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
                    panic!("node {} exited before it was ready ({status:?}); its log {}:\n{}", self.opts.name, log.display(), tail(&log, 60));
                }
                Err(_) => {
                    let _ = child.kill().await;
                    panic!("node {} printed no ready line within {NODE_READY_TIMEOUT:?}; its log {}:\n{}", self.opts.name, log.display(), tail(&log, 60));
                }
            }
        };
        // Keep draining stdout so the node never blocks on (or dies of) a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let fields: HashMap<&str, &str> = ready.split_whitespace().filter_map(|t| t.split_once('=')).collect();
        let addr = |k: &str| -> SocketAddr { fields.get(k).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("ready line has no valid {k}=: {ready:?}")) };
        self.grpc = addr("grpc");
        self.http = addr("http");
        if !self.opts.cluster {
            assert_eq!(fields.get("shards").copied(), Some(self.opts.shards.to_string().as_str()), "ready line: {ready:?}");
        }
        let clock = if self.opts.manual_clock { "manual" } else { "system" };
        assert_eq!(fields.get("clock").copied(), Some(clock), "ready line: {ready:?}");
        eprintln!("node {} ready: grpc={} http={} log={}", self.opts.name, self.grpc, self.http, log.display());
        self.child = Some(child);
    }

    pub fn name(&self) -> &str {
        &self.opts.name
    }
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    pub fn pid(&self) -> u32 {
        self.child.as_ref().and_then(|c| c.id()).expect("the node is running")
    }

    /// Whether the process is still running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }

    /// The exit status if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL, and wait until the process is gone.
    pub async fn kill9(&mut self) {
        let mut child = self.child.take().expect("kill9: the node is not running");
        eprintln!("node {}: kill -9 {}", self.opts.name, child.id().unwrap_or(0));
        child.kill().await.expect("kill -9 the node");
    }

    /// Send SIGTERM without waiting (see [`Node::wait_exit`]).
    pub fn sigterm(&self) {
        let pid = self.pid();
        eprintln!("node {}: kill -TERM {pid}", self.opts.name);
        let st = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("run kill -TERM");
        assert!(st.success(), "kill -TERM {pid} failed: {st}");
    }

    /// Wait (bounded by [`NODE_STOP_TIMEOUT`]) for the process to exit; the node is
    /// then stopped and may be restarted.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("wait_exit: the node is not running");
        match tokio::time::timeout(NODE_STOP_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) => {
                eprintln!("node {} exited: {status}", self.opts.name);
                status
            }
            Ok(Err(e)) => panic!("waiting for node {} to exit: {e}", self.opts.name),
            Err(_) => {
                let _ = child.kill().await;
                panic!("node {} did not exit within {NODE_STOP_TIMEOUT:?}; log tail:\n{}", self.opts.name, self.log_tail(60));
            }
        }
    }

    /// SIGTERM, and wait (bounded) for the exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.sigterm();
        self.wait_exit().await
    }

    /// Start again on the same data directory (new ports). The node must be stopped.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart: stop node {} first (kill9 or terminate)", self.opts.name);
        self.spawn().await;
    }

    /// The last `n` lines of the current (latest) log.
    pub fn log_tail(&self, n: usize) -> String {
        self.logs.last().map(|p| tail(p, n)).unwrap_or_default()
    }

    /// Everything every run of this node logged so far.
    pub fn log_text(&self) -> String {
        self.logs.iter().map(|p| std::fs::read_to_string(p).unwrap_or_default()).collect::<Vec<_>>().join("\n")
    }

    // ---- gRPC clients

    /// The node's gRPC channel (connected once per run, then shared).
    pub async fn channel(&self) -> Channel {
        self.channel.get_or_init(|| self.connect()).await.clone()
    }

    /// A new gRPC connection (retried briefly).
    pub async fn connect(&self) -> Channel {
        let ep = Endpoint::from_shared(self.grpc_url()).expect("endpoint").connect_timeout(Duration::from_secs(10)).tcp_nodelay(true);
        let mut last = None;
        for _ in 0..20 {
            match ep.connect().await {
                Ok(c) => return c,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("cannot connect to node {} at {}: {last:?}", self.opts.name, self.grpc_url());
    }
    pub async fn ingest(&self) -> IngestClient<Channel> {
        IngestClient::new(self.channel().await).max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX).max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    }
    pub async fn profiles(&self) -> ProfilesClient<Channel> {
        ProfilesClient::new(self.channel().await).max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    }
    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel().await)
    }

    /// Ingest.Send one batch; panics on a gRPC error.
    pub async fn send(&self, events: Vec<v1::Event>) -> v1::IngestResponse {
        let n = events.len();
        let resp = self
            .ingest()
            .await
            .send(v1::IngestRequest { batch_id: 1, events })
            .await
            .unwrap_or_else(|s| panic!("Ingest.Send of {n} events failed: {s:?}"))
            .into_inner();
        assert_eq!(resp.results.len(), n, "one result per event: {resp:?}");
        resp
    }

    /// Profiles.Get by identity.
    pub async fn profile(&self, kind: &str, value: &str, events: u32) -> Result<v1::Profile, tonic::Status> {
        let req = v1::GetProfileRequest { profile: Some(by_identity(kind, value)), events };
        self.profiles().await.get(req).await.map(|r| r.into_inner())
    }

    /// Profiles.Get by customer id.
    pub async fn profile_by_id(&self, customer_id: &str, events: u32) -> Result<v1::Profile, tonic::Status> {
        let req = v1::GetProfileRequest { profile: Some(by_id(customer_id)), events };
        self.profiles().await.get(req).await.map(|r| r.into_inner())
    }

    pub async fn list_shards(&self) -> Vec<v1::ShardStatus> {
        self.admin().await.list_shards(v1::ListShardsRequest {}).await.expect("Admin.ListShards").into_inner().shards
    }

    /// Open an Ingest.Stream.
    pub async fn open_stream(&self) -> IngestStream {
        let (tx, rx) = tokio::sync::mpsc::channel::<v1::IngestRequest>(64);
        let responses = self
            .ingest()
            .await
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap_or_else(|s| panic!("open Ingest.Stream: {s:?}"))
            .into_inner();
        IngestStream { tx: Some(tx), responses }
    }

    // ---- chorusctl

    /// Apply minimal templates `(id, channel)` (marketing, one line of text each; email
    /// ones carry the unsubscribe link) with `chorusctl template apply`.
    pub async fn apply_simple_templates(&self, templates: &[(&str, &str)]) {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut files = Vec::new();
        for (id, channel) in templates {
            let body = match *channel {
                "email" => format!("email:\n  subject: '{id}'\n  html: '<p>{id}</p><p><a href=\"{{{{ links.unsubscribe }}}}\">Unsubscribe</a></p>'\n"),
                "sms" => format!("sms:\n  body: '{id}. Reply STOP to opt out'\n"),
                "push" => format!("push:\n  body: '{id}'\n"),
                "webhook" => "webhook:\n  url: 'https://hooks.example.com/chorus'\n  body: '{\"customer\": \"{{ profile.id }}\"}'\n".to_string(),
                other => panic!("no simple template for channel {other}"),
            };
            let path = dir.path().join(format!("{id}.yaml"));
            std::fs::write(&path, format!("id: {id}\ncategory: marketing\n{body}")).expect("write template");
            files.push(path.to_string_lossy().into_owned());
        }
        let mut args = vec!["template", "apply"];
        args.extend(files.iter().map(String::as_str));
        self.ctl(&args).await.ok();
    }

    /// Apply every template of examples/templates.
    pub async fn apply_example_templates(&self) {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/templates");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("examples/templates")
            .filter_map(|e| e.ok())
            .map(|e| e.path().to_string_lossy().into_owned())
            .filter(|p| p.ends_with(".yaml"))
            .collect();
        files.sort();
        let mut args = vec!["template", "apply"];
        args.extend(files.iter().map(String::as_str));
        self.ctl(&args).await.ok();
    }

    /// Run `chorusctl --endpoint <this node> ARGS`.
    pub async fn ctl(&self, args: &[&str]) -> CtlOutput {
        let mut full = vec!["--endpoint".to_string(), self.grpc_url()];
        full.extend(args.iter().map(|s| s.to_string()));
        chorusctl(&full, &[], None).await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in &self.logs {
                eprintln!("==== node {} log {} (last 80 lines) ====\n{}", self.opts.name, p.display(), tail(p, 80));
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
        }
    }
}

/// A bidirectional Ingest.Stream: send batches, read answers.
pub struct IngestStream {
    tx: Option<tokio::sync::mpsc::Sender<v1::IngestRequest>>,
    responses: tonic::Streaming<v1::IngestResponse>,
}

impl IngestStream {
    /// Queue a batch; false if the stream is gone.
    pub async fn send(&self, req: v1::IngestRequest) -> bool {
        match &self.tx {
            Some(tx) => tx.send(req).await.is_ok(),
            None => false,
        }
    }
    /// A sender that can be moved to another task.
    pub fn sender(&self) -> tokio::sync::mpsc::Sender<v1::IngestRequest> {
        self.tx.clone().expect("stream not closed")
    }
    /// Half-close: no more batches from this side.
    pub fn close(&mut self) {
        self.tx = None;
    }
    /// The next answer; `Ok(None)` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<v1::IngestResponse>, tonic::Status> {
        self.responses.message().await
    }
    /// Split into the sending half and the answers.
    pub fn split(mut self) -> (tokio::sync::mpsc::Sender<v1::IngestRequest>, tonic::Streaming<v1::IngestResponse>) {
        (self.tx.take().expect("stream not closed"), self.responses)
    }
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------
// Events and profiles
// ---------------------------------------------------------------------------------

pub fn ident(kind: &str, value: &str) -> v1::Identity {
    v1::Identity { kind: kind.to_string(), value: value.to_string() }
}

pub fn by_identity(kind: &str, value: &str) -> v1::ProfileRef {
    v1::ProfileRef { r#ref: Some(v1::profile_ref::Ref::Identity(ident(kind, value))) }
}

pub fn by_id(customer_id: &str) -> v1::ProfileRef {
    v1::ProfileRef { r#ref: Some(v1::profile_ref::Ref::CustomerId(customer_id.to_string())) }
}

/// An event of `event_type` (track, identify, page, ...) with identities as (kind, value).
pub fn event(event_type: &str, message_id: &str, name: &str, ids: &[(&str, &str)]) -> v1::Event {
    v1::Event {
        message_id: message_id.to_string(),
        r#type: event_type.to_string(),
        name: name.to_string(),
        identities: ids.iter().map(|(k, v)| ident(k, v)).collect(),
        ..Default::default()
    }
}

/// A track event with properties.
pub fn track(message_id: &str, name: &str, ids: &[(&str, &str)], properties: serde_json::Value) -> v1::Event {
    v1::Event { properties_json: properties.to_string(), ..event("track", message_id, name, ids) }
}

/// An identify event with traits.
pub fn identify(message_id: &str, ids: &[(&str, &str)], traits: serde_json::Value) -> v1::Event {
    v1::Event { traits_json: traits.to_string(), ..event("identify", message_id, "", ids) }
}

pub fn status_of(r: &v1::EventResult) -> v1::EventStatus {
    v1::EventStatus::try_from(r.status).unwrap_or(v1::EventStatus::Unspecified)
}

/// `r` in one line for assertion messages.
pub fn show_result(r: &v1::EventResult) -> String {
    format!("#{} {:?} customer={:?} field={:?} error={:?}", r.index, status_of(r), r.customer_id, r.field, r.error)
}

/// Message ids of a profile's recent events, oldest first.
pub fn history_oldest_first(p: &v1::Profile) -> Vec<&v1::RecentEvent> {
    p.recent_events.iter().rev().collect()
}

pub fn has_identity(p: &v1::Profile, kind: &str, value: &str) -> bool {
    p.identities.iter().any(|i| i.kind == kind && i.value == value)
}

// ---------------------------------------------------------------------------------
// chorusctl
// ---------------------------------------------------------------------------------

/// What a `chorusctl` run produced.
#[derive(Debug)]
pub struct CtlOutput {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
    /// Panics (showing everything) unless the exit code is 0.
    pub fn ok(&self) -> &Self {
        assert!(self.status.success(), "chorusctl {:?} failed: {self:#?}", self.args);
        self
    }
    /// stdout as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("chorusctl {:?}: stdout is not JSON ({e}): {self:#?}", self.args))
    }
}

/// Run `chorusctl ARGS` with extra environment and optional stdin. `CHORUS_ENDPOINT`
/// from the caller's environment is removed unless given in `env`.
pub async fn chorusctl(args: &[String], env: &[(&str, &str)], stdin: Option<&str>) -> CtlOutput {
    let mut cmd = Command::new(&bins().chorusctl);
    cmd.args(args).env_remove("CHORUS_ENDPOINT").env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn chorusctl");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes()).await.expect("write chorusctl stdin");
        drop(pipe);
    }
    let out = match tokio::time::timeout(CTL_TIMEOUT, child.wait_with_output()).await {
        Ok(r) => r.expect("wait for chorusctl"),
        Err(_) => panic!("chorusctl {args:?} did not finish within {CTL_TIMEOUT:?}"),
    };
    CtlOutput {
        args: args.to_vec(),
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// ---------------------------------------------------------------------------------
// Raw HTTP/1.1
// ---------------------------------------------------------------------------------

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("HTTP body is not JSON ({e}): {self:?} {}", self.text()))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// `Authorization: Basic base64("KEY:")`, as the Segment SDKs send it.
pub fn basic_auth(write_key: &str) -> String {
    use base64::Engine as _;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{write_key}:")))
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub async fn http_request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    // The body is written while the answer is read: a server may answer (413) and close
    // before it read a large body, and that answer is what the caller wants to see.
    let io = async {
        let s = tokio::net::TcpStream::connect(addr).await?;
        let (mut rd, mut wr) = s.into_split();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let writer = async {
            wr.write_all(head.as_bytes()).await?;
            wr.write_all(body).await
        };
        let mut raw = Vec::new();
        let (written, read) = tokio::join!(writer, rd.read_to_end(&mut raw));
        let answered = raw.windows(4).any(|w| w == b"\r\n\r\n");
        match (written, read) {
            (_, Ok(_)) if answered => {}
            (_, Err(_)) if answered => {}
            (Err(e), _) | (_, Err(e)) => return Err(e),
            _ => {}
        }
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(30), io)
        .await
        .unwrap_or_else(|_| panic!("HTTP {method} {path} to {addr} timed out"))
        .unwrap_or_else(|e| panic!("HTTP {method} {path} to {addr}: {e}"));
    parse_http_response(&raw).unwrap_or_else(|e| panic!("HTTP {method} {path}: {e}: {:?}", String::from_utf8_lossy(&raw)))
}

fn parse_http_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("no status line")?;
    let status: u16 = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("bad status line")?;
    let headers: Vec<(String, String)> = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").ok_or("bad chunk header")?;
            let size_text = std::str::from_utf8(&rest[..eol]).map_err(|_| "bad chunk size")?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).map_err(|_| "bad chunk size")?;
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size).ok_or("truncated chunk")?);
            rest = rest.get(size + 2..).ok_or("truncated chunk")?;
        }
        body = out;
    }
    Ok(HttpResponse { status, headers, body })
}

/// A streaming plan for history checks: `customers` customers, each with between
/// `events_min` and `events_max` events (seeded), split into `lanes` lanes by customer
/// (customer c in lane c mod lanes); each lane interleaves its customers' events at
/// random, each customer's in sequence order. Returns the per-customer counts and the
/// lanes as (customer, seq) pairs.
pub fn lane_plan(rng: &mut Rng, customers: u32, events_min: u32, events_max: u32, lanes: usize) -> (Vec<u32>, Vec<std::collections::VecDeque<(u32, u32)>>) {
    let counts: Vec<u32> = (0..customers).map(|_| rng.range(events_min as u64, events_max as u64) as u32).collect();
    let mut out = vec![std::collections::VecDeque::new(); lanes];
    for (l, lane) in out.iter_mut().enumerate() {
        let mut next: Vec<(u32, u32)> = (0..customers).filter(|c| *c as usize % lanes == l).map(|c| (c, 0)).collect();
        while !next.is_empty() {
            let i = rng.below(next.len() as u64) as usize;
            let (c, seq) = next[i];
            lane.push_back((c, seq));
            if seq + 1 == counts[c as usize] {
                next.swap_remove(i);
            } else {
                next[i].1 += 1;
            }
        }
    }
    (counts, out)
}

/// `anchor_ms` (a moment a test's story is written for), moved forward by whole
/// 52-week steps until it is at least a day after `now_ms`: same weekday and time of
/// day, same season, and always in the future of a manual clock that never goes back.
pub fn future_anchor(anchor_ms: i64, now_ms: i64) -> i64 {
    const STEP_MS: i64 = 364 * 86_400_000;
    let mut t = anchor_ms;
    while t < now_ms + 86_400_000 {
        t += STEP_MS;
    }
    t
}

/// The node's clock now (Unix ms).
pub async fn clock_now(node: &Node) -> i64 {
    let out = node.ctl(&["-o", "json", "clock", "show"]).await;
    out.ok();
    out.json()["now_ms"].as_i64().unwrap_or_else(|| panic!("clock show: {}", out.stdout))
}

/// A free loopback port (bound then released: for addresses that must be known
/// before a node starts, such as cluster seeds).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

// ---------------------------------------------------------------------------------
// Waiting and randomness
// ---------------------------------------------------------------------------------

/// Poll `check` until it returns `Ok`, or panic after `timeout` with `what` and the
/// last observation (`Err` text). Never a fixed sleep: the loop watches real state.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(20);
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting until {what}; last observed: {last}")
            }
            Err(_) => {}
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// xorshift64*: tiny, seeded, reproducible. The seed is printed; rerun a failure
/// with `CHORUS_TEST_SEED=<seed>`.
pub struct Rng(u64);

impl Rng {
    pub fn seeded(test: &str) -> Rng {
        let seed = std::env::var("CHORUS_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
            t ^ (u64::from(std::process::id()) << 32)
        });
        eprintln!("{test}: random seed {seed} (rerun with CHORUS_TEST_SEED={seed})");
        Rng::new(seed)
    }
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::future_anchor;

    #[test]
    fn future_anchor_keeps_the_weekday_and_time_and_lands_after_now() {
        const DAY: i64 = 86_400_000;
        let anchor = 1_799_983_800_000; // Friday 2027-01-15 03:30 UTC
        assert_eq!(future_anchor(anchor, anchor - 10 * DAY), anchor, "already in the future");
        let later = future_anchor(anchor, anchor + 400 * DAY);
        assert_eq!(later, anchor + 2 * 364 * DAY);
        assert_eq!((later - anchor) % (7 * DAY), 0, "same weekday and time of day");
        assert!(later >= anchor + 401 * DAY);
    }
}

/// A Python stand-in for a provider (tests/python/NAME), started with `args`: it prints
/// one JSON object per line on stdout, `{"port": N}` first, and exits when its standard
/// input closes (or the child is dropped).
pub struct PythonFake {
    pub port: u16,
    pub lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    _child: Child,
}

impl PythonFake {
    pub async fn start(name: &str, args: &[&str]) -> PythonFake {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python").join(name);
        let mut child = Command::new("python3")
            .arg(&script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("python3 runs {}: {e}", script.display()));
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let first = next_json_line(&mut lines, name).await;
        PythonFake { port: first["port"].as_u64().unwrap_or_else(|| panic!("{name} printed no port: {first}")) as u16, lines, _child: child }
    }

    /// The next JSON line it printed (within 30 s).
    pub async fn next(&mut self) -> serde_json::Value {
        next_json_line(&mut self.lines, "the fake").await
    }

    /// The next JSON line it printed, however long that takes; `None` once it exited.
    pub async fn next_forever(&mut self) -> Option<serde_json::Value> {
        let line = self.lines.next_line().await.ok().flatten()?;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("the fake printed a line that is not JSON ({e}): {line}")))
    }
}

async fn next_json_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>, who: &str) -> serde_json::Value {
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("{who} printed nothing within 30 s"))
        .unwrap_or_else(|e| panic!("read {who}: {e}"))
        .unwrap_or_else(|| panic!("{who} exited"));
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{who} printed a line that is not JSON ({e}): {line}"))
}
