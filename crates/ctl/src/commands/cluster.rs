//! `cluster status` and `shard list`: Admin.ClusterStatus and Admin.ListShards shown
//! as tables or JSON. Read-only.

use super::Ctx;
use crate::failure::EXIT_OK;
use crate::output::{self, Table, emit, emit_json, key_values, time_json};
use crate::timefmt::format_rfc3339_ms;
use chorus_proto::v1::admin_client::AdminClient;
use chorus_proto::v1::{ClusterStatusRequest, ClusterStatusResponse, ListShardsRequest, ListShardsResponse};
use serde_json::{Value, json};

pub async fn status(ctx: &Ctx) -> anyhow::Result<u8> {
    let mut admin = AdminClient::new(ctx.connect().await?);
    let status = ctx.call("get the cluster status", admin.cluster_status(ClusterStatusRequest {})).await?;
    if ctx.json() {
        emit_json(&status_json(&status));
    } else {
        emit(&status_table(&status));
    }
    Ok(EXIT_OK)
}

pub async fn shards(ctx: &Ctx) -> anyhow::Result<u8> {
    let mut admin = AdminClient::new(ctx.connect().await?);
    let list = ctx.call("list shards", admin.list_shards(ListShardsRequest {})).await?;
    if ctx.json() {
        emit_json(&shards_json(&list));
    } else if list.shards.is_empty() {
        emit("no shards (the cluster is not initialized yet)");
    } else {
        emit(&shards_table(&list));
    }
    Ok(EXIT_OK)
}

fn status_json(s: &ClusterStatusResponse) -> Value {
    json!({
        "cluster_id": s.cluster_id,
        "shard_count": s.shard_count,
        "nodes": s.nodes.iter().map(|n| json!({
            "node_id": n.node_id,
            "grpc_addr": n.grpc_addr,
            "http_addr": n.http_addr,
            "version": n.version,
            "healthy": n.healthy,
            "shards_led": n.shards_led,
            "shards_followed": n.shards_followed,
        })).collect::<Vec<_>>(),
        "leaderless_shards": s.leaderless_shards,
        "under_replicated_shards": s.under_replicated_shards,
        "clock_mode": s.clock_mode,
        "now_ms": s.now_ms,
        "now": time_json(s.now_ms),
    })
}

fn status_table(s: &ClusterStatusResponse) -> String {
    let unhealthy = s.nodes.iter().filter(|n| !n.healthy).count();
    let mut problems = Vec::new();
    if s.leaderless_shards > 0 {
        problems.push(format!("{} shards without a leader", s.leaderless_shards));
    }
    if s.under_replicated_shards > 0 {
        problems.push(format!("{} shards under-replicated", s.under_replicated_shards));
    }
    if unhealthy > 0 {
        problems.push(format!("{unhealthy} of {} nodes unhealthy", s.nodes.len()));
    }
    let health = if problems.is_empty() { "healthy".to_string() } else { format!("degraded: {}", problems.join(", ")) };
    let mut out = key_values(&[
        ("cluster", output::or_dash(&s.cluster_id)),
        ("health", health),
        (
            "shards",
            format!(
                "{} ({} leaderless, {} under-replicated)",
                s.shard_count, s.leaderless_shards, s.under_replicated_shards
            ),
        ),
        ("clock", format!("{}, now {} ({} ms)", output::or_dash(&s.clock_mode), format_rfc3339_ms(s.now_ms), s.now_ms)),
    ]);
    out.push_str("\n\n");
    let mut nodes =
        Table::new(&["NODE", "GRPC", "HTTP", "VERSION", "HEALTHY", "LEADS", "FOLLOWS"]).align_right(&[0, 5, 6]);
    for n in &s.nodes {
        nodes.push(vec![
            n.node_id.to_string(),
            output::or_dash(&n.grpc_addr),
            output::or_dash(&n.http_addr),
            output::or_dash(&n.version),
            if n.healthy { "yes" } else { "NO" }.to_string(),
            n.shards_led.to_string(),
            n.shards_followed.to_string(),
        ]);
    }
    out.push_str(&nodes.render());
    out
}

fn shards_json(l: &ListShardsResponse) -> Value {
    json!({
        "shards": l.shards.iter().map(|s| json!({
            "shard": s.shard,
            "leader": s.leader,
            "voters": s.voters,
            "learners": s.learners,
            "term": s.term,
            "last_log_index": s.last_log_index,
            "applied_index": s.applied_index,
            "live_actors": s.live_actors,
            "customers": s.customers,
            "pending_timers": s.pending_timers,
            "pending_intents": s.pending_intents,
            "quarantined": s.quarantined,
        })).collect::<Vec<_>>(),
    })
}

fn shards_table(l: &ListShardsResponse) -> String {
    let mut t =
        Table::new(&["SHARD", "LEADER", "TERM", "APPLIED", "ACTORS", "CUSTOMERS", "TIMERS", "INTENTS", "QUARANTINED"])
            .align_right(&[0, 1, 2, 3, 4, 5, 6, 7, 8]);
    for s in &l.shards {
        t.push(vec![
            s.shard.to_string(),
            // Node ids start at 1: 0 means no leader is known.
            if s.leader == 0 { "-".to_string() } else { s.leader.to_string() },
            s.term.to_string(),
            s.applied_index.to_string(),
            s.live_actors.to_string(),
            s.customers.to_string(),
            s.pending_timers.to_string(),
            s.pending_intents.to_string(),
            s.quarantined.to_string(),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_proto::v1::{NodeStatus, ShardStatus};

    #[test]
    fn shard_table_has_the_documented_columns_aligned() {
        let list = ListShardsResponse {
            shards: vec![
                ShardStatus { shard: 0, leader: 1, term: 3, applied_index: 1200, customers: 5, ..Default::default() },
                ShardStatus { shard: 1, leader: 0, term: 12, applied_index: 7, quarantined: 2, ..Default::default() },
            ],
        };
        let text = shards_table(&list);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "SHARD  LEADER  TERM  APPLIED  ACTORS  CUSTOMERS  TIMERS  INTENTS  QUARANTINED");
        assert_eq!(lines[2], "    1       -    12        7       0          0       0        0            2");
        assert!(lines.iter().all(|l| l.len() == lines[0].len()));
        let j = shards_json(&list);
        assert_eq!(j["shards"][1]["quarantined"], 2);
        assert_eq!(j["shards"][0]["voters"], json!([]));
    }

    #[test]
    fn cluster_status_reports_degradation() {
        let s = ClusterStatusResponse {
            cluster_id: "c1".into(),
            shard_count: 8,
            nodes: vec![
                NodeStatus { node_id: 1, healthy: true, ..Default::default() },
                NodeStatus { node_id: 2, ..Default::default() },
            ],
            leaderless_shards: 1,
            clock_mode: "manual".into(),
            now_ms: 1_795_773_600_000,
            ..Default::default()
        };
        let text = status_table(&s);
        assert!(text.contains("health   degraded: 1 shards without a leader, 1 of 2 nodes unhealthy"), "{text}");
        assert!(text.contains("clock    manual, now 2026-11-27T10:00:00Z (1795773600000 ms)"), "{text}");
        let j = status_json(&s);
        assert_eq!(j["now"], "2026-11-27T10:00:00Z");
        assert_eq!(j["nodes"][1]["healthy"], false);
    }
}
