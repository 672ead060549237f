//! Smoke test of `chorus-loadtest bench`: builds the real `chorus` binary in this test's
//! profile and target directory, runs a ~3 s bench against a small customer set, and
//! checks that events were acknowledged, none were lost or rejected, and the JSON
//! report parses. It asserts nothing about speed (BENCHMARKS.md holds the numbers).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// Build `chorus` next to the `chorus-loadtest` binary under test (same profile, same
/// target directory), where bench mode looks for it.
fn build_chorus() {
    let exe = std::env::current_exe().expect("find the test executable");
    // target/<profile>/deps/smoke-<hash>
    let deps = exe.parent().expect("the test executable has a parent directory");
    assert_eq!(deps.file_name().and_then(|n| n.to_str()), Some("deps"), "the test runs from target/<profile>/deps: {}", exe.display());
    let profile_dir = deps.parent().expect("target/<profile>");
    let target_dir = profile_dir.parent().expect("target");
    let profile = profile_dir.file_name().and_then(|n| n.to_str()).expect("profile name is UTF-8");
    let cargo_profile = if profile == "debug" { "dev" } else { profile };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("Cargo.toml");
    let cargo = env!("CARGO");
    eprintln!("--- build chorus ({cargo_profile}) into {}", target_dir.display());
    let started = Instant::now();
    let out = Command::new(cargo)
        .args(["build", "--quiet", "-p", "chorus-node", "--bin", "chorus", "--profile", cargo_profile, "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("run cargo build");
    assert!(
        out.status.success(),
        "cargo build -p chorus-node --bin chorus failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("--- chorus built in {:.1?}", started.elapsed());
}

#[test]
fn bench_mode_acknowledges_every_event_and_reports_json() {
    build_chorus();
    eprintln!("--- run chorus-loadtest bench for ~3 s");
    let out = Command::new(env!("CARGO_BIN_EXE_chorus-loadtest"))
        .args([
            "bench",
            "--shards",
            "4",
            "--customers",
            "500",
            "--streams",
            "2",
            "--batch",
            "100",
            "--warmup",
            "0.5",
            "--duration",
            "2.5",
            "--seed",
            "7",
            "--json",
        ])
        .env("NO_COLOR", "1")
        .output()
        .expect("run chorus-loadtest");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chorus-loadtest bench failed ({}):\n{stderr}", out.status);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("the report is JSON: {e}\nstdout:\n{}\nstderr:\n{stderr}", String::from_utf8_lossy(&out.stdout)));

    eprintln!("--- check the report");
    let n = |k: &str| report[k].as_u64().unwrap_or_else(|| panic!("report field {k} is a number: {report}"));
    assert!(n("acked_in_window") > 0, "events were acknowledged in the window: {report}");
    assert!(report["acked_events_per_s"].as_f64().is_some_and(|r| r > 0.0), "{report}");
    assert!(n("events_sent") > 0);
    for k in ["rejected", "retry", "missing", "failed", "lost", "stream_errors", "unknown_batches"] {
        assert_eq!(n(k), 0, "{k} must be zero: {report}");
    }
    assert_eq!(n("accepted") + n("duplicate"), n("events_sent"), "every sent event was acknowledged: {report}");
    assert_eq!(n("duplicate"), 0, "message ids are unique: {report}");
    assert!(report["ack_latency"]["p99_ms"].as_f64().is_some(), "{report}");
    assert!(report["node"]["rss_mib_end"].as_f64().is_some_and(|r| r > 0.0), "the node's RSS was read: {report}");
    assert!(report["node_exit"].as_str().is_some_and(|s| s.contains("SIGTERM")), "the node was stopped with SIGTERM: {report}");
    assert_eq!(report["scenario"]["workload"]["seed"].as_u64(), Some(7));
}

/// Run `chorus-loadtest ARGS --json` and parse its report.
fn run_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_chorus-loadtest")).args(args).arg("--json").env("NO_COLOR", "1").output().expect("run chorus-loadtest");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chorus-loadtest {args:?} failed ({}):\n{stderr}", out.status);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("the report is JSON: {e}\nstderr:\n{stderr}"))
}

#[test]
fn memory_scenario_counts_every_customer_dormant_hot_and_after_a_restart() {
    build_chorus();
    eprintln!("--- chorus-loadtest memory with 3,000 customers, 400 hot");
    let r = run_json(&["memory", "--shards", "4", "--customers", "3000", "--hot", "400", "--batch", "250", "--actor-idle", "2"]);
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} is a number: {r}"));
    assert_eq!(n("create_events"), 3000, "{r}");
    assert_eq!(n("customers_counted"), 3000, "the node counts every customer: {r}");
    assert_eq!(n("hot_events"), 400, "{r}");
    assert!(n("live_actors") >= 1 && n("live_actors") <= 400, "only touched customers are resident: {r}");
    for k in ["rss_empty_bytes", "rss_dormant_bytes", "rss_hot_bytes", "rss_passivated_bytes", "rss_restarted_bytes", "disk_bytes"] {
        assert!(n(k) > 0, "{k} was read: {r}");
    }
}

#[test]
fn timer_scenario_fires_every_wait_once_after_a_restart() {
    build_chorus();
    eprintln!("--- chorus-loadtest timers: 400 customers × 3 journeys, 40 s waits");
    let r = run_json(&["timers", "--shards", "4", "--customers", "400", "--journeys", "3", "--wait", "40", "--batch", "100", "--actor-idle", "2"]);
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} is a number: {r}"));
    assert_eq!(n("create_events"), 400, "{r}");
    assert_eq!(n("pending_timers"), 1200, "one wait per customer and journey: {r}");
    assert_eq!(r["due_before_created"], false, "{r}");
    assert!(n("rss_restarted_bytes") > 0, "the node restarted before the waits came due: {r}");
    assert_eq!(n("fired"), 1200, "every wait fired exactly once, from the restarted node: {r}");
    let buckets = r["lateness_buckets"].as_array().expect("lateness buckets");
    assert_eq!(buckets.last().and_then(|b| b[1].as_u64()), Some(1200), "{r}");
}
