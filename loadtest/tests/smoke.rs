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
    let deps = exe
        .parent()
        .expect("the test executable has a parent directory");
    assert_eq!(
        deps.file_name().and_then(|n| n.to_str()),
        Some("deps"),
        "the test runs from target/<profile>/deps: {}",
        exe.display()
    );
    let profile_dir = deps.parent().expect("target/<profile>");
    let target_dir = profile_dir.parent().expect("target");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile name is UTF-8");
    let cargo_profile = if profile == "debug" { "dev" } else { profile };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("Cargo.toml");
    let cargo = env!("CARGO");
    eprintln!(
        "--- build chorus ({cargo_profile}) into {}",
        target_dir.display()
    );
    let started = Instant::now();
    let out = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "chorus-node",
            "--bin",
            "chorus",
            "--profile",
            cargo_profile,
            "--manifest-path",
        ])
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
    assert!(
        out.status.success(),
        "chorus-loadtest bench failed ({}):\n{stderr}",
        out.status
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the report is JSON: {e}\nstdout:\n{}\nstderr:\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });

    eprintln!("--- check the report");
    let n = |k: &str| {
        report[k]
            .as_u64()
            .unwrap_or_else(|| panic!("report field {k} is a number: {report}"))
    };
    assert!(
        n("acked_in_window") > 0,
        "events were acknowledged in the window: {report}"
    );
    assert!(
        report["acked_events_per_s"]
            .as_f64()
            .is_some_and(|r| r > 0.0),
        "{report}"
    );
    assert!(n("events_sent") > 0);
    for k in [
        "rejected",
        "retry",
        "missing",
        "failed",
        "lost",
        "stream_errors",
        "unknown_batches",
    ] {
        assert_eq!(n(k), 0, "{k} must be zero: {report}");
    }
    assert_eq!(
        n("accepted") + n("duplicate"),
        n("events_sent"),
        "every sent event was acknowledged: {report}"
    );
    assert_eq!(n("duplicate"), 0, "message ids are unique: {report}");
    assert!(
        report["ack_latency"]["p99_ms"].as_f64().is_some(),
        "{report}"
    );
    assert!(
        report["node"]["rss_mib_end"]
            .as_f64()
            .is_some_and(|r| r > 0.0),
        "the node's RSS was read: {report}"
    );
    assert!(
        report["node_exit"]
            .as_str()
            .is_some_and(|s| s.contains("SIGTERM")),
        "the node was stopped with SIGTERM: {report}"
    );
    assert_eq!(report["scenario"]["workload"]["seed"].as_u64(), Some(7));
}
