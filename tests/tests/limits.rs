//! Limits a user relies on (issue "Core platform" item 3): overload is refused with
//! RESOURCE_EXHAUSTED (nothing half-accepted, nothing buffered without bound), the
//! dedup window is configurable and expires, and bad limits are refused at startup.

use chorus_tests::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_with_resource_exhausted_and_nothing_is_applied() {
    // One shard whose proposer admits at most 20 queued events.
    let config = "[shards]\ncount = 1\ningest_queue_max = 20\nproposal_events_max = 10\n";
    let node = Node::start(NodeOpts::new("overload").shards(1).config(config)).await;
    phase("a batch larger than the shard's queue is refused as a whole");
    let events: Vec<_> = (0..50).map(|i| track(&format!("o-{i}"), "Product Viewed", &[("user_id", "u-over")], json!({}))).collect();
    let mut client = node.ingest().await;
    let err = client.send(v1::IngestRequest { batch_id: 1, events: events.clone() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("overloaded") && err.message().contains("retry"), "{}", err.message());
    let missing = node.profile("user_id", "u-over", 0).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "nothing of the refused batch was applied");
    phase("a stream gets RETRY results for the refused batch and keeps going");
    let mut stream = node.open_stream().await;
    assert!(stream.send(v1::IngestRequest { batch_id: 7, events }).await);
    let answer = stream.next().await.unwrap().unwrap();
    assert_eq!(answer.batch_id, 7);
    assert!(!answer.results.is_empty() && answer.results.iter().all(|r| status_of(r) == v1::EventStatus::Retry), "{answer:?}");
    phase("batches within the bound are accepted on the same stream");
    for b in 0..5u64 {
        let small: Vec<_> = (0..10).map(|i| track(&format!("ok-{b}-{i}"), "Product Viewed", &[("user_id", "u-over")], json!({}))).collect();
        assert!(stream.send(v1::IngestRequest { batch_id: 100 + b, events: small }).await);
        let a = stream.next().await.unwrap().unwrap();
        assert!(a.results.iter().all(|r| status_of(r) == v1::EventStatus::Accepted), "{a:?}");
    }
    let p = node.profile("user_id", "u-over", 0).await.unwrap();
    assert_eq!(p.event_count, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_recognised_within_the_configured_window_only() {
    let config = "[shards]\ncount = 2\ndedup_window = \"1h\"\n[clock]\nmode = \"manual\"\nallow_manual = true\n";
    let node = Node::start(NodeOpts::new("dedup-window").shards(2).manual_clock().config(config)).await;
    let e = || vec![track("same-id", "Product Viewed", &[("user_id", "u-dedup")], json!({}))];
    assert_eq!(status_of(&node.send(e()).await.results[0]), v1::EventStatus::Accepted);
    node.ctl(&["clock", "advance", "59m"]).await.ok();
    assert_eq!(status_of(&node.send(e()).await.results[0]), v1::EventStatus::Duplicate, "inside the window");
    node.ctl(&["clock", "advance", "2m"]).await.ok();
    assert_eq!(status_of(&node.send(e()).await.results[0]), v1::EventStatus::Accepted, "the window has passed");
    let p = node.profile("user_id", "u-dedup", 0).await.unwrap();
    assert_eq!(p.event_count, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_limits_are_refused_at_startup_with_a_clear_error() {
    let bins = bins();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("chorus.toml");
    for (toml, expected) in [
        ("[shards]\ndedup_window = \"30d\"\n", "dedup window"),
        ("[shards]\ncount = 0\n", "shard_count"),
        ("[shards]\ncont = 4\n", "unknown field"),
        ("[clock]\nmode = \"manual\"\n", "allow_manual"),
    ] {
        std::fs::write(&cfg, toml).unwrap();
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(&bins.chorus).arg("run").arg("--config").arg(&cfg).arg("--data-dir").arg(dir.path().join("d")).output(),
        )
        .await
        .expect("chorus exits")
        .unwrap();
        assert!(!out.status.success(), "{toml} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{toml}: stderr does not mention {expected:?}: {stderr}");
    }
}
