//! `cluster init|status` and `shard list`: Admin.ClusterInit, Admin.ClusterStatus and
//! Admin.ListShards shown as tables or JSON, with the node table `node list` shares and
//! the hints for refused cluster operations. Decides nothing: the node does.

use super::Ctx;
use super::shard::{move_json, moves_table};
use crate::failure::{self, EXIT_OK, Failure};
use crate::output::{self, Table, emit, emit_json, key_values, time_json};
use crate::timefmt::format_rfc3339_ms;
use chorus_proto::v1::admin_client::AdminClient;
use chorus_proto::v1::{
    ClusterInitRequest, ClusterInitResponse, ClusterStatusRequest, ClusterStatusResponse, ListShardsRequest, ListShardsResponse, NodeStatus,
};
use serde_json::{Value, json};
use tonic::Code;

/// Most shard ranges a table lists (`0-3, 7, 9-12`); the rest are counted.
const SHARD_RANGES_SHOWN_MAX: usize = 32;
/// Most queued moves `cluster status` lists as rows; the rest are counted (JSON has all).
const MOVES_SHOWN_MAX: usize = 20;

pub async fn init(ctx: &Ctx, shards: u32, replication: u32) -> anyhow::Result<u8> {
    let mut admin = AdminClient::new(ctx.connect().await?);
    let action = format!("initialize the cluster with {shards} shards × {replication} replicas");
    let init =
        ctx.call_status(&action, admin.cluster_init(ClusterInitRequest { shards, replication })).await?.map_err(|s| cluster_failure(ctx, &s, &action))?;
    if ctx.json() {
        emit_json(&init_json(&init));
    } else {
        emit(&init_table(&init));
    }
    Ok(EXIT_OK)
}

pub async fn status(ctx: &Ctx) -> anyhow::Result<u8> {
    let status = fetch_status(ctx).await?;
    if ctx.json() {
        emit_json(&status_json(&status));
    } else {
        emit(&status_table(&status));
    }
    Ok(EXIT_OK)
}

/// Admin.ClusterStatus, for `cluster status` and `node list`.
pub(super) async fn fetch_status(ctx: &Ctx) -> Result<ClusterStatusResponse, Failure> {
    let mut admin = AdminClient::new(ctx.connect().await?);
    ctx.call("get the cluster status", admin.cluster_status(ClusterStatusRequest {})).await
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

/// A refused cluster operation, with a hint saying what to do where we know better
/// than the generic one.
pub(super) fn cluster_failure(ctx: &Ctx, status: &tonic::Status, action: &str) -> Failure {
    let failure = failure::from_status(status, &ctx.endpoint, action);
    if status.code() != Code::FailedPrecondition && status.code() != Code::NotFound {
        return failure;
    }
    let says = status.message().to_ascii_lowercase();
    let hint = if says.contains("runs alone") {
        "this node has no [cluster] section: start every node with one (listen, advertise, seeds), then run \
`chorusctl cluster init` against one of them"
    } else if says.contains("not initialized") {
        "form the cluster first: `chorusctl cluster init --shards N` against one of the seed nodes"
    } else if says.contains("already initiali") || says.contains("already belongs") {
        "the cluster exists already: see `chorusctl cluster status`"
    } else if says.contains("needs at least") {
        "give a smaller --replication, or start more nodes and list them as seeds"
    } else if says.contains("every seed must answer") || says.contains("did not answer") {
        "start the nodes named above (and check their [cluster] listen/advertise addresses), then retry"
    } else if says.contains("is not a member") {
        "see the members with `chorusctl node list`"
    } else if says.contains("does not exist") {
        "see the shards with `chorusctl shard list` (shard ids start at 0)"
    } else if says.contains("is not a voter") {
        "see each shard's voters with `chorusctl shard list -o json`"
    } else if says.contains("drain it first") {
        "drain it, wait until `chorusctl cluster status` shows no moves, then remove it"
    } else {
        return failure;
    };
    failure.hint(hint)
}

fn init_json(r: &ClusterInitResponse) -> Value {
    json!({
        "cluster_id": r.cluster_id,
        "shard_count": r.shard_count,
        "replication": r.replication,
        "nodes": r.nodes.iter().map(member_json).collect::<Vec<_>>(),
    })
}

fn init_table(r: &ClusterInitResponse) -> String {
    let mut out = key_values(&[
        ("cluster", output::or_dash(&r.cluster_id)),
        ("shards", r.shard_count.to_string()),
        ("replication", r.replication.to_string()),
        ("nodes", r.nodes.len().to_string()),
    ]);
    out.push_str("\n\n");
    out.push_str(&members_table(&r.nodes).render());
    out.push_str("\n\nthe shards are electing leaders: watch them with `chorusctl cluster status`");
    out
}

/// A member as placement records it (what `cluster init` and `node add` return).
pub(super) fn member_json(n: &NodeStatus) -> Value {
    json!({
        "node_id": n.node_id,
        "cluster_addr": n.cluster_addr,
        "grpc_addr": n.grpc_addr,
        "http_addr": n.http_addr,
        "draining": n.draining,
    })
}

fn members_table(nodes: &[NodeStatus]) -> Table {
    let mut t = Table::new(&["NODE", "CLUSTER", "GRPC", "HTTP"]).align_right(&[0]);
    for n in nodes {
        t.push(vec![n.node_id.to_string(), output::or_dash(&n.cluster_addr), output::or_dash(&n.grpc_addr), output::or_dash(&n.http_addr)]);
    }
    t
}

/// A node as `cluster status` and `node list` show it in JSON.
pub(super) fn node_json(n: &NodeStatus) -> Value {
    json!({
        "node_id": n.node_id,
        "cluster_addr": n.cluster_addr,
        "grpc_addr": n.grpc_addr,
        "http_addr": n.http_addr,
        "version": n.version,
        "healthy": n.healthy,
        "shards_led": n.shards_led,
        "shards_followed": n.shards_followed,
        "lag_max": n.lag_max,
        "draining": n.draining,
    })
}

/// The node table of `cluster status` and `node list`: a cluster's members with their
/// node-to-node address, lag and draining flag, or the one node running alone.
pub(super) fn nodes_table(s: &ClusterStatusResponse) -> Table {
    let yes_no = |b: bool, no: &str| if b { "yes".to_string() } else { no.to_string() };
    if !s.clustered {
        let mut t = Table::new(&["NODE", "GRPC", "HTTP", "VERSION", "HEALTHY", "LEADS", "FOLLOWS"]).align_right(&[0, 5, 6]);
        for n in &s.nodes {
            t.push(vec![
                n.node_id.to_string(),
                output::or_dash(&n.grpc_addr),
                output::or_dash(&n.http_addr),
                output::or_dash(&n.version),
                yes_no(n.healthy, "NO"),
                n.shards_led.to_string(),
                n.shards_followed.to_string(),
            ]);
        }
        return t;
    }
    let mut t = Table::new(&["NODE", "CLUSTER", "GRPC", "HEALTHY", "VERSION", "LEADS", "FOLLOWS", "LAG", "DRAINING"]).align_right(&[0, 5, 6, 7]);
    for n in &s.nodes {
        t.push(vec![
            n.node_id.to_string(),
            output::or_dash(&n.cluster_addr),
            output::or_dash(&n.grpc_addr),
            yes_no(n.healthy, "NO"),
            output::or_dash(&n.version),
            n.shards_led.to_string(),
            n.shards_followed.to_string(),
            n.lag_max.to_string(),
            yes_no(n.draining, "no"),
        ]);
    }
    t
}

fn status_json(s: &ClusterStatusResponse) -> Value {
    json!({
        "cluster_id": s.cluster_id,
        "shard_count": s.shard_count,
        "clustered": s.clustered,
        "replication": s.replication,
        "placement_leader": s.placement_leader,
        "nodes": s.nodes.iter().map(node_json).collect::<Vec<_>>(),
        "leaderless_shards": s.leaderless_shards,
        "under_replicated_shards": s.under_replicated_shards,
        "leaderless": s.leaderless,
        "under_replicated": s.under_replicated,
        // The first queued move is the one running.
        "moves": s.moves.iter().enumerate().map(|(i, m)| {
            let mut v = move_json(m);
            v["running"] = json!(i == 0);
            v
        }).collect::<Vec<_>>(),
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
    let mut pairs = vec![
        ("cluster", output::or_dash(&s.cluster_id)),
        ("health", health),
        ("shards", format!("{} ({} leaderless, {} under-replicated)", s.shard_count, s.leaderless_shards, s.under_replicated_shards)),
    ];
    if s.clustered {
        let leader = if s.placement_leader == 0 { "none known (placement changes wait for one)".to_string() } else { format!("node {}", s.placement_leader) };
        let moves = match s.moves.first() {
            None => "none".to_string(),
            Some(m) => {
                format!("{} queued, the first running: shard {} from node {} to node {}", s.moves.len(), m.shard, m.from, m.to)
            }
        };
        pairs.extend([
            ("replication", s.replication.to_string()),
            ("placement leader", leader),
            ("leaderless", shard_ranges(&s.leaderless)),
            ("under-replicated", shard_ranges(&s.under_replicated)),
            ("moves", moves),
        ]);
    }
    pairs.push(("clock", format!("{}, now {} ({} ms)", output::or_dash(&s.clock_mode), format_rfc3339_ms(s.now_ms), s.now_ms)));
    let mut out = key_values(&pairs);
    out.push_str("\n\n");
    out.push_str(&nodes_table(s).render());
    if s.clustered && !s.moves.is_empty() {
        let shown = &s.moves[..s.moves.len().min(MOVES_SHOWN_MAX)];
        out.push_str("\n\n");
        out.push_str(&moves_table(shown, true).render());
        if s.moves.len() > shown.len() {
            out.push_str(&format!("\n… and {} more queued (all of them with -o json)", s.moves.len() - shown.len()));
        }
    }
    out
}

/// Shard ids as sorted ranges, `0-3, 7, 9-12`, or `none`; at most
/// [`SHARD_RANGES_SHOWN_MAX`] ranges, then a count of the shards left out.
fn shard_ranges(shards: &[u32]) -> String {
    if shards.is_empty() {
        return "none".to_string();
    }
    let mut sorted = shards.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for id in sorted {
        match ranges.last_mut() {
            Some((_, end)) if id == *end + 1 => *end = id,
            _ => ranges.push((id, id)),
        }
    }
    let text = |&(a, b): &(u32, u32)| {
        if a == b { a.to_string() } else { format!("{a}-{b}") }
    };
    let mut out = ranges.iter().take(SHARD_RANGES_SHOWN_MAX).map(text).collect::<Vec<_>>().join(", ");
    if ranges.len() > SHARD_RANGES_SHOWN_MAX {
        let left: u32 = ranges[SHARD_RANGES_SHOWN_MAX..].iter().map(|(a, b)| b - a + 1).sum();
        out.push_str(&format!(", … ({left} more; all of them with -o json)"));
    }
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
    let mut t = Table::new(&["SHARD", "LEADER", "TERM", "APPLIED", "ACTORS", "CUSTOMERS", "TIMERS", "INTENTS", "QUARANTINED"])
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
    use chorus_proto::v1::{ShardMovePlan, ShardStatus};

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
            nodes: vec![NodeStatus { node_id: 1, healthy: true, ..Default::default() }, NodeStatus { node_id: 2, ..Default::default() }],
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

    fn clustered() -> ClusterStatusResponse {
        let node = |id: u64, healthy: bool| NodeStatus {
            node_id: id,
            cluster_addr: format!("n{id}:7900"),
            grpc_addr: format!("n{id}:7700"),
            http_addr: format!("n{id}:7780"),
            version: "0.1.0".into(),
            healthy,
            shards_led: 3,
            shards_followed: 5,
            lag_max: if healthy { 0 } else { 1200 },
            draining: id == 3,
        };
        ClusterStatusResponse {
            cluster_id: "chorus-00000000000000aa".into(),
            shard_count: 8,
            nodes: vec![node(1, true), node(2, true), node(3, false)],
            leaderless_shards: 0,
            under_replicated_shards: 4,
            clock_mode: "system".into(),
            now_ms: 1_795_773_600_000,
            clustered: true,
            replication: 3,
            leaderless: vec![],
            under_replicated: vec![7, 0, 1, 2],
            moves: vec![ShardMovePlan { shard: 2, from: 3, to: 1 }, ShardMovePlan { shard: 7, from: 3, to: 2 }],
            placement_leader: 1,
        }
    }

    #[test]
    fn a_cluster_shows_replication_placement_shard_lists_nodes_and_moves() {
        let text = status_table(&clustered());
        for line in [
            "health            degraded: 4 shards under-replicated, 1 of 3 nodes unhealthy",
            "shards            8 (0 leaderless, 4 under-replicated)",
            "replication       3",
            "placement leader  node 1",
            "leaderless        none",
            "under-replicated  0-2, 7",
            "moves             2 queued, the first running: shard 2 from node 3 to node 1",
            "NODE  CLUSTER  GRPC     HEALTHY  VERSION  LEADS  FOLLOWS   LAG  DRAINING",
            "   1  n1:7900  n1:7700  yes      0.1.0        3        5     0  no",
            "   3  n3:7900  n3:7700  NO       0.1.0        3        5  1200  yes",
            "SHARD  FROM  TO  STATE",
            "    2     3   1  running",
            "    7     3   2  queued",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        let j = status_json(&clustered());
        assert_eq!(j["clustered"], true);
        assert_eq!(j["placement_leader"], 1);
        assert_eq!(j["under_replicated"], json!([7, 0, 1, 2]));
        assert_eq!(j["leaderless"], json!([]));
        assert_eq!(j["moves"][0], json!({"shard": 2, "from": 3, "to": 1, "running": true}));
        assert_eq!(j["moves"][1]["running"], false);
        assert_eq!(j["nodes"][2]["lag_max"], 1200);
        assert_eq!(j["nodes"][2]["draining"], true);
        assert_eq!(j["nodes"][0]["cluster_addr"], "n1:7900");
    }

    #[test]
    fn a_single_node_keeps_its_short_report() {
        let s = ClusterStatusResponse {
            cluster_id: "single-node-1".into(),
            shard_count: 4,
            nodes: vec![NodeStatus { node_id: 1, grpc_addr: "127.0.0.1:7700".into(), healthy: true, shards_led: 4, ..Default::default() }],
            replication: 1,
            clock_mode: "system".into(),
            ..Default::default()
        };
        let text = status_table(&s);
        assert!(!text.contains("placement leader") && !text.contains("DRAINING"), "{text}");
        assert!(text.contains("shards   4 (0 leaderless, 0 under-replicated)"), "{text}");
        assert!(text.contains("NODE  GRPC            HTTP  VERSION  HEALTHY  LEADS  FOLLOWS"), "{text}");
        let j = status_json(&s);
        assert_eq!((j["clustered"].clone(), j["moves"].clone()), (json!(false), json!([])));
    }

    #[test]
    fn long_queues_and_shard_lists_are_cut_with_a_count() {
        let mut s = clustered();
        s.moves = (0..MOVES_SHOWN_MAX as u32 + 5).map(|i| ShardMovePlan { shard: i, from: 3, to: 1 }).collect();
        s.placement_leader = 0;
        let text = status_table(&s);
        assert!(text.contains("\n… and 5 more queued (all of them with -o json)"), "{text}");
        assert!(text.contains("placement leader  none known"), "{text}");
        let every_other: Vec<u32> = (0..100).map(|i| i * 2).collect();
        let ranges = shard_ranges(&every_other);
        assert!(ranges.starts_with("0, 2, 4, "), "{ranges}");
        assert!(ranges.ends_with(", 62, … (68 more; all of them with -o json)"), "{ranges}");
        assert_eq!(shard_ranges(&[5, 3, 4, 4, 9]), "3-5, 9");
        assert_eq!(shard_ranges(&[]), "none");
    }

    #[test]
    fn init_prints_the_cluster_and_its_members() {
        let s = clustered();
        let r = ClusterInitResponse { cluster_id: s.cluster_id.clone(), shard_count: 8, replication: 3, nodes: s.nodes };
        let text = init_table(&r);
        assert!(text.starts_with("cluster      chorus-00000000000000aa\nshards       8\nreplication  3\nnodes        3\n\n"), "{text}");
        assert!(text.contains("NODE  CLUSTER  GRPC     HTTP\n   1  n1:7900  n1:7700  n1:7780"), "{text}");
        let j = init_json(&r);
        assert_eq!(j["nodes"][1], json!({"node_id": 2, "cluster_addr": "n2:7900", "grpc_addr": "n2:7700", "http_addr": "n2:7780", "draining": false}));
    }

    #[test]
    fn refused_cluster_operations_say_what_to_do() {
        let ctx = Ctx { endpoint: "http://x:1".into(), format: crate::output::Format::Table, timeout: std::time::Duration::from_secs(1) };
        let refuse = |m: &str| cluster_failure(&ctx, &tonic::Status::failed_precondition(m), "initialize the cluster");
        let f = refuse("this node runs alone (no [cluster] in its configuration)");
        assert_eq!(f.message, "could not initialize the cluster: this node runs alone (no [cluster] in its configuration)");
        assert!(f.hint.unwrap().contains("[cluster] section"));
        assert!(refuse("the cluster is not initialized: run `chorusctl cluster init` first").hint.unwrap().contains("cluster init --shards"));
        assert!(refuse("replication 3 needs at least 3 nodes, but 1 are known").hint.unwrap().contains("--replication"));
        assert!(refuse("node 9 is not a member").hint.unwrap().contains("node list"));
        assert!(refuse("shard 99 does not exist (the cluster has 8)").hint.unwrap().contains("`chorusctl shard list`"));
        assert!(refuse("node 4 still holds replicas of 4 shard(s); drain it first").hint.unwrap().contains("no moves"));
        let generic = refuse("something else");
        assert!(generic.hint.unwrap().contains("not in a state that allows this"));
        let f = cluster_failure(&ctx, &tonic::Status::unavailable("no leader"), "drain node 3");
        assert!(f.hint.unwrap().contains("retry"));
    }
}
