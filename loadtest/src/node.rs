//! Bench mode's own node: find the `chorus` binary, start `chorus dev` on a fresh
//! temporary data directory with port 0, wait for its ready line, and stop it with
//! SIGTERM (then SIGKILL after a bound) and remove the data directory.
//!
//! It talks to the node only through its command line and stdout ready line; it never
//! links product code.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long the node may take from spawn to its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the node may take to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the `chorus` binary is: `explicit`, or next to this executable (same target
/// directory and profile), or `<target>/release/chorus` when `release` is asked for.
pub fn find_chorus(explicit: Option<&Path>, release: bool) -> anyhow::Result<PathBuf> {
    let exe_name = format!("chorus{}", std::env::consts::EXE_SUFFIX);
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("--chorus-bin {} does not exist", p.display());
    }
    let me = std::env::current_exe().context("find this executable")?;
    let dir = me.parent().ok_or_else(|| anyhow!("{} has no parent directory", me.display()))?;
    // Integration tests run from target/<profile>/deps; binaries sit one level up.
    let profile_dir = if dir.file_name().is_some_and(|n| n == "deps") { dir.parent().unwrap_or(dir) } else { dir };
    let (candidate, build) = if release {
        let target = profile_dir.parent().unwrap_or(profile_dir);
        (target.join("release").join(&exe_name), "cargo build --release -p chorus-node --bin chorus")
    } else {
        let is_release = profile_dir.file_name().is_some_and(|n| n == "release");
        (profile_dir.join(&exe_name), if is_release { "cargo build --release -p chorus-node --bin chorus" } else { "cargo build -p chorus-node --bin chorus" })
    };
    if candidate.is_file() {
        Ok(candidate)
    } else {
        bail!("the node binary {} is missing: build it first with `{build}` (or pass --chorus-bin PATH)", candidate.display())
    }
}

/// How to start the node.
#[derive(Clone, Debug)]
pub struct NodeOpts {
    pub chorus: PathBuf,
    pub shards: u32,
    /// Parent of the temporary data directory (default: the system temp dir).
    pub data_root: Option<PathBuf>,
    /// The node's log filter (its stderr goes to a file next to the data directory).
    pub log: String,
    /// Keep the data directory and log after the run.
    pub keep: bool,
    /// A node of a local cluster: (node id, node-to-node port, every node's port).
    pub cluster: Option<(u64, u16, Vec<u16>)>,
    /// Extra TOML for the node's configuration file (e.g. a `[shards]` table); when it
    /// is empty and the node is not a cluster member, the node runs as `chorus dev`.
    pub config: String,
}

/// A running node started by bench mode.
pub struct Node {
    child: Option<Child>,
    pub pid: u32,
    pub grpc: String,
    pub http: String,
    pub log_path: PathBuf,
    pub data_dir: PathBuf,
    opts: NodeOpts,
    tmp: Option<tempfile::TempDir>,
}

impl Node {
    pub async fn start(opts: &NodeOpts) -> anyhow::Result<Node> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("chorus-loadtest-");
        let tmp = match &opts.data_root {
            Some(root) => {
                std::fs::create_dir_all(root).with_context(|| format!("create {}", root.display()))?;
                builder.tempdir_in(root)
            }
            None => builder.tempdir(),
        }
        .context("create a temporary data directory")?;
        let (child, pid, grpc, http) = spawn(opts, tmp.path()).await?;
        Ok(Node {
            child: Some(child),
            pid,
            grpc,
            http,
            log_path: tmp.path().join("chorus.log"),
            data_dir: tmp.path().join("data"),
            opts: opts.clone(),
            tmp: if opts.keep {
                let _ = tmp.keep();
                None
            } else {
                Some(tmp)
            },
        })
    }

    /// Stop the node with SIGTERM and start it again on the same data directory (new
    /// ports, same configuration), as an operator's restart would.
    pub async fn restart(&mut self) -> anyhow::Result<String> {
        let exit = self.terminate().await?;
        let dir = self.data_dir.parent().expect("the data directory has a parent").to_path_buf();
        let (child, pid, grpc, http) = spawn(&self.opts, &dir).await?;
        (self.child, self.pid, self.grpc, self.http) = (Some(child), pid, grpc, http);
        Ok(exit)
    }
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM, wait up to [`STOP_TIMEOUT`], then SIGKILL; removes the data directory
    /// unless it is kept. Returns a description of how it ended.
    pub async fn stop(mut self) -> anyhow::Result<String> {
        let outcome = self.terminate().await?;
        if let Some(tmp) = self.tmp.take() {
            let path = tmp.path().to_path_buf();
            tmp.close().with_context(|| format!("remove {}", path.display()))?;
        }
        Ok(outcome)
    }

    /// SIGTERM, wait up to [`STOP_TIMEOUT`], then SIGKILL. Returns how it ended.
    async fn terminate(&mut self) -> anyhow::Result<String> {
        let Some(mut child) = self.child.take() else {
            return Ok("not running".into());
        };
        Ok(if let Ok(Some(status)) = child.try_wait() {
            format!("had already exited: {status}")
        } else {
            // std has no signal API and unsafe code is forbidden: use kill(1).
            let st = std::process::Command::new("kill").args(["-TERM", &self.pid.to_string()]).status().context("run kill -TERM")?;
            if !st.success() {
                bail!("kill -TERM {} failed: {st}", self.pid);
            }
            match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
                Ok(Ok(status)) => format!("stopped by SIGTERM: {status}"),
                Ok(Err(e)) => return Err(e).context("wait for the node to exit"),
                Err(_) => {
                    let _ = child.kill().await;
                    format!("did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed")
                }
            }
        })
    }

    /// The last `n` lines of the node's log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log_path, n)
    }
}

/// Start the node process on `dir` (data in `dir/data`, log appended to `dir/chorus.log`)
/// and wait for its ready line: (child, pid, gRPC address, HTTP address).
async fn spawn(opts: &NodeOpts, dir: &Path) -> anyhow::Result<(Child, u32, String, String)> {
    let data_dir = dir.join("data");
    let log_path = dir.join("chorus.log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).with_context(|| format!("open {}", log_path.display()))?;
    let tmp_path = dir;
    let mut cmd = Command::new(&opts.chorus);
    let cluster = opts.cluster.as_ref().map(|(id, port, seeds)| {
        let seeds: Vec<String> = seeds.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        format!("node_id = {id}\n[cluster]\nlisten = \"127.0.0.1:{port}\"\nseeds = [{}]\n", seeds.join(", "))
    });
    if cluster.is_none() && opts.config.is_empty() {
        cmd.arg("dev");
    } else {
        let toml = format!("{}\n{}", cluster.unwrap_or_default(), opts.config);
        let path = tmp_path.join("chorus.toml");
        std::fs::write(&path, toml).with_context(|| format!("write {}", path.display()))?;
        cmd.arg("run").arg("--config").arg(path);
    }
    cmd.arg("--data-dir")
        .arg(&data_dir)
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .arg("--shards")
        .arg(opts.shards.to_string())
        .arg("--log")
        .arg(&opts.log);
    for (k, _) in std::env::vars() {
        if k.starts_with("CHORUS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("NO_COLOR", "1").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::from(log)).kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("start {}", opts.chorus.display()))?;
    let pid = child.id().ok_or_else(|| anyhow!("the node exited at once"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(READY_TIMEOUT, async {
        loop {
            match lines.next_line().await {
                Ok(Some(line)) if line.starts_with("chorus ready ") => return Ok(line),
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return Err(()),
            }
        }
    })
    .await;
    let ready = match ready {
        Ok(Ok(line)) => line,
        Ok(Err(())) => {
            let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            bail!("the node exited before it was ready ({status:?}); its log:\n{}", tail(&log_path, 40));
        }
        Err(_) => {
            let _ = child.kill().await;
            bail!("the node printed no ready line within {READY_TIMEOUT:?}; its log:\n{}", tail(&log_path, 40));
        }
    };
    // Keep draining stdout so the node never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let fields: HashMap<&str, &str> = ready.split_whitespace().filter_map(|t| t.split_once('=')).collect();
    let field = |k: &str| fields.get(k).map(|s| s.to_string()).ok_or_else(|| anyhow!("the ready line has no {k}=: {ready:?}"));
    let grpc = field("grpc")?;
    let http = field("http")?;
    Ok((child, pid, grpc, http))
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Node-wide sums of the per-shard gauges of `/metrics` that a report uses.
#[derive(Clone, Debug, Default)]
pub struct NodeGauges {
    pub customers: u64,
    pub live_actors: u64,
    pub pending_cross_shard: u64,
    pub queued_events: u64,
    pub messages_decided: u64,
    pub pending_timers: u64,
    /// Node-wide timer lateness histogram: (upper bound ms or +Inf, cumulative count).
    pub timer_lateness: Vec<(f64, u64)>,
    pub timer_lateness_count: u64,
    pub timer_lateness_sum_ms: u64,
    pub timer_lateness_max_ms: u64,
    /// Each shard's raft term as this node sees it.
    pub raft_terms: std::collections::BTreeMap<u32, u64>,
}

/// Read the node's `/metrics` (plain HTTP/1.1 on loopback; no client library needed)
/// and sum the per-shard gauges.
pub async fn scrape(http_addr: &str) -> anyhow::Result<NodeGauges> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(http_addr))
        .await
        .context("connect to /metrics")?
        .with_context(|| format!("connect to {http_addr}"))?;
    s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {http_addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut body)).await.context("read /metrics")??;
    if !body.starts_with("HTTP/1.1 200") {
        bail!("GET /metrics: {}", body.lines().next().unwrap_or(""));
    }
    let sum = |name: &str| -> u64 {
        body.lines().filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{')).filter_map(|l| l.rsplit(' ').next()?.trim().parse::<u64>().ok()).sum()
    };
    let plain = |name: &str| -> u64 { body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0) };
    Ok(NodeGauges {
        customers: sum("chorus_shard_customers"),
        live_actors: sum("chorus_shard_live_actors"),
        pending_cross_shard: sum("chorus_shard_pending_cross_shard"),
        queued_events: sum("chorus_shard_queued_events"),
        messages_decided: sum("chorus_shard_messages_decided_total"),
        pending_timers: sum("chorus_shard_pending_timers"),
        timer_lateness: body
            .lines()
            .filter_map(|l| l.strip_prefix("chorus_timer_fire_lateness_ms_bucket{le=\""))
            .filter_map(|l| {
                let (le, rest) = l.split_once("\"}")?;
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                Some((le, rest.trim().parse().ok()?))
            })
            .collect(),
        timer_lateness_count: plain("chorus_timer_fire_lateness_ms_count"),
        timer_lateness_sum_ms: plain("chorus_timer_fire_lateness_ms_sum"),
        raft_terms: body
            .lines()
            .filter_map(|l| l.strip_prefix("chorus_shard_raft_term{shard=\""))
            .filter_map(|l| {
                let (shard, rest) = l.split_once("\"}")?;
                Some((shard.parse().ok()?, rest.trim().parse().ok()?))
            })
            .collect(),
        timer_lateness_max_ms: body
            .lines()
            .filter(|l| l.starts_with("chorus_shard_timer_lateness_max_ms{"))
            .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<u64>().ok())
            .max()
            .unwrap_or(0),
    })
}
