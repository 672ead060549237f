//! The `chorusctl` binary as scripts see it, without a node: help text, exit codes,
//! the unreachable-node message and offline event-file checks (`--dry-run`). Tests
//! against a live node belong to the workspace end-to-end suite.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn chorusctl(args: &[&str]) -> Output {
    chorusctl_with_stdin(args, None)
}

fn chorusctl_with_stdin(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chorusctl"))
        .args(args)
        .env_remove("CHORUS_ENDPOINT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run chorusctl");
    let mut pipe = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(pipe);
    child.wait_with_output().expect("wait for chorusctl")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A local port with nothing listening on it.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[test]
fn every_command_has_help() {
    let commands: &[&[&str]] = &[
        &[],
        &["cluster", "init"],
        &["cluster", "status"],
        &["node", "list"],
        &["node", "add"],
        &["node", "remove"],
        &["node", "drain"],
        &["shard", "list"],
        &["shard", "move"],
        &["shard", "transfer-leader"],
        &["shard", "rebalance"],
        &["event", "send"],
        &["profile", "get"],
        &["profile", "find"],
        &["profile", "explain"],
        &["messages", "tail"],
        &["clock", "show"],
        &["clock", "advance"],
        &["clock", "set"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let out = chorusctl(&args);
        let help = text(&out.stdout);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(help.contains("--endpoint") && help.contains("--output"), "{args:?} help lacks the globals:\n{help}");
        assert!(help.lines().next().is_some_and(|l| l.len() > 20), "{args:?} help has no description:\n{help}");
    }
}

#[test]
fn an_unreachable_node_is_explained_with_exit_code_1() {
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let out = chorusctl(&["cluster", "status", "--endpoint", &endpoint]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("cannot reach Chorus at {endpoint}: connection refused")) && err.contains("CHORUS_ENDPOINT"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn usage_errors_exit_with_2() {
    let out = chorusctl(&["clock", "advance", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("units: ms, s, m, h, d, w"));
    let out = chorusctl(&["profile", "get", "ada@example.com"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("did you mean email:ada@example.com?"));
    let out = chorusctl(&["event", "send", "--email", "a@b.c"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--name"));
}

#[test]
fn cluster_operations_check_their_arguments_before_sending_anything() {
    // Exit 2 against a closed port: the command line was refused before connecting
    // (a connection attempt would have failed with exit 1).
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let cases: &[(&[&str], &str)] = &[
        (&["cluster", "init", "--shards", "0"], "give 1 to 4096 shards, not 0"),
        (&["cluster", "init", "--shards", "5000"], "give 1 to 4096 shards, not 5000"),
        (&["cluster", "init", "--shards", "64", "--replication", "0"], "give 1 to 7 replicas, not 0"),
        (&["cluster", "init", "--replication", "3"], "--shards <N>"),
        (&["node", "add", "--id", "0", "--addr", "n4:7900"], "node ids start at 1"),
        (&["node", "add", "--id", "4", "--addr", "http://n4:7900"], "give host:port without a scheme, e.g. n4:7900"),
        (&["node", "add", "--id", "4", "--addr", "n4"], "is not host:port"),
        (&["node", "add", "--id", "4"], "--addr <HOST:PORT>"),
        (&["node", "remove", "zero"], "is not a node id"),
        (&["node", "drain"], "<ID>"),
        (&["shard", "move", "3"], "--to <NODE>"),
        (&["shard", "move", "3", "--to", "2", "--from", "2"], "--from and --to both name node 2"),
        (&["shard", "move", "x", "--to", "2"], "invalid value 'x' for '<SHARD>'"),
        (&["shard", "transfer-leader", "3", "--to", "0"], "node ids start at 1"),
        (&["shard", "rebalance", "--dry-run=yes"], "--dry-run"),
    ];
    for (args, says) in cases {
        let mut argv = args.to_vec();
        argv.extend(["--endpoint", &endpoint]);
        let out = chorusctl(&argv);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?} should say {says:?}:\n{err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn cluster_operations_against_an_unreachable_node_exit_with_1() {
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let commands: &[&[&str]] = &[
        &["cluster", "init", "--shards", "8"],
        &["node", "list"],
        &["node", "add", "--id", "4", "--addr", "127.0.0.1:7900"],
        &["node", "remove", "4"],
        &["node", "drain", "4"],
        &["shard", "move", "3", "--to", "2"],
        &["shard", "transfer-leader", "3", "--to", "2"],
        &["shard", "rebalance", "--dry-run"],
    ];
    for args in commands {
        let mut argv = args.to_vec();
        argv.extend(["--endpoint", &endpoint]);
        let out = chorusctl(&argv);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("cannot reach Chorus") && err.contains("connection refused"), "{args:?}: {err}");
    }
}

#[test]
fn cluster_help_documents_defaults_and_json_shapes() {
    let help = |args: &[&str]| {
        let mut argv = args.to_vec();
        argv.push("--help");
        let out = chorusctl(&argv);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let init = help(&["cluster", "init"]);
    assert!(init.contains("[default: 3]") && init.contains("JSON: {cluster_id, shard_count, replication, nodes"), "{init}");
    let status = help(&["cluster", "status"]);
    for field in
        ["clustered", "placement_leader", "leaderless: [shard]", "under_replicated: [shard]", "lag_max", "draining", "moves: [{shard, from, to, running}]"]
    {
        assert!(status.contains(field), "cluster status help lacks {field}:\n{status}");
    }
    let moves = help(&["shard", "move"]);
    assert!(moves.contains("--from <NODE>") && moves.contains("node holding the most replicas"), "{moves}");
    assert!(help(&["shard", "rebalance"]).contains("JSON: {dry_run, moves: [{shard, from, to}], queued}"));
    assert!(help(&["node", "drain"]).contains("JSON: {node_id, moves: [{shard, from, to}], queued}"));
    let top = help(&[]);
    assert!(top.contains("node ") && top.contains("Cluster members"), "{top}");
}

#[test]
fn dry_run_prints_the_events_it_would_send() {
    let input = "{\"messageId\":\"m-1\",\"event\":\"A\",\"userId\":42}\n{\"event\":\"B\",\"anonymousId\":\"x\",\"properties\":{\"n\":1}}\n";
    let out = chorusctl_with_stdin(&["event", "send", "--file", "-", "--dry-run"], Some(input));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("NDJSON")).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["messageId"], "m-1");
    assert_eq!(lines[0]["identities"][0], serde_json::json!({"kind": "user_id", "value": "42"}));
    assert_eq!(lines[1]["properties"]["n"], 1);
    assert!(lines[1]["messageId"].as_str().is_some_and(|id| id.len() == 36));
}

#[test]
fn a_bad_line_in_an_events_file_is_named_and_nothing_is_sent() {
    let dir = std::env::temp_dir().join(format!("chorusctl-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("events.ndjson");
    std::fs::write(&path, "{\"event\":\"A\",\"userId\":\"1\"}\n{\"event\":\"B\",\"userId\":\"2\"}\n{\"event\": \"C\" \"userId\": \"3\"}\n").unwrap();
    // A closed port proves nothing is sent: parsing fails before connecting.
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let out = chorusctl(&["event", "send", "--file", path.to_str().unwrap(), "--endpoint", &endpoint]);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("events.ndjson line 3, column"), "{err}");
    assert!(err.contains("nothing was sent"), "{err}");
}

#[test]
fn journey_validate_checks_files_offline_with_lines() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/journeys/browse-abandon.yaml");
    let out = chorusctl(&["journey", "validate", example]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok — journey \"browse-abandon\", 5 steps"), "{}", text(&out.stdout));

    let dir = std::env::temp_dir().join(format!("chorusctl-journey-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    let source = std::fs::read_to_string(example).unwrap().replace("next: wait_engagement", "next: wait_engagment");
    std::fs::write(&bad, source).unwrap();
    let out = chorusctl(&["journey", "validate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("bad.yaml:21: steps[0].next: unknown step \"wait_engagment\" (did you mean \"wait_engagement\"?)"), "{err}");

    let out = chorusctl(&["-o", "json", "journey", "validate", bad.to_str().unwrap(), example]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["valid"], false);
    assert_eq!(v[0]["problems"][0]["line"], 21);
    assert_eq!(v[0]["problems"][0]["path"], "steps[0].next");
    assert_eq!(v[1]["valid"], true);
    assert_eq!(v[1]["journey"], "browse-abandon");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn journey_simulate_prints_the_decisions_of_a_trace() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
    let journey = format!("{root}/journeys/browse-abandon.yaml");
    let trace = format!("{root}/traces/ada-browses.ndjson");
    let profile = format!("{root}/traces/ada.json");
    let out = chorusctl(&["journey", "simulate", &journey, "--events", &trace, "--profile", &profile]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("send      email browse-recos to ada@example.com"), "{stdout}");
    assert!(stdout.contains("fallback — push: no valid push token"), "{stdout}");
    assert!(stdout.contains("converted — goal Order Completed (browse-abandon value 129"), "{stdout}");
    let out = chorusctl(&["-o", "json", "journey", "simulate", &journey, "--events", &trace, "--profile", &profile]);
    let lines: Vec<serde_json::Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("ndjson")).collect();
    assert_eq!(lines[0]["kind"], "event");
    assert_eq!(lines[0]["at"], "2026-12-01T10:00:00Z");
    assert!(lines.iter().any(|l| l["kind"] == "trigger" && l["text"] == "enroll in post-purchase"));
}
