//! `node list|add|remove|drain`: cluster membership through Admin.ClusterStatus,
//! Admin.NodeAdd, Admin.NodeRemove and Admin.NodeDrain. The node checks and records
//! every change; this only asks and prints.

use super::Ctx;
use super::cluster::{cluster_failure, fetch_status, member_json, node_json, nodes_table};
use super::shard::{moves_json, plan_text};
use crate::failure::EXIT_OK;
use crate::output::{self, emit, emit_json, key_values};
use chorus_proto::v1::admin_client::AdminClient;
use chorus_proto::v1::{NodeAddRequest, NodeDrainRequest, NodeRemoveRequest, NodeStatus, ShardMovePlan};
use serde_json::json;

pub async fn list(ctx: &Ctx) -> anyhow::Result<u8> {
    let status = fetch_status(ctx).await?;
    if ctx.json() {
        emit_json(&json!({
            "clustered": status.clustered,
            "nodes": status.nodes.iter().map(node_json).collect::<Vec<_>>(),
        }));
    } else {
        emit(&nodes_table(&status).render());
    }
    Ok(EXIT_OK)
}

pub async fn add(ctx: &Ctx, id: u64, addr: &str) -> anyhow::Result<u8> {
    let mut admin = AdminClient::new(ctx.connect().await?);
    let action = format!("add node {id} at {addr}");
    let r = ctx
        .call_status(&action, admin.node_add(NodeAddRequest { node_id: id, addr: addr.to_string() }))
        .await?
        .map_err(|s| cluster_failure(ctx, &s, &action))?;
    // An answer without the node still means it was added: show what was asked.
    let node = r.node.unwrap_or(NodeStatus { node_id: id, cluster_addr: addr.to_string(), ..Default::default() });
    if ctx.json() {
        emit_json(&json!({"node": member_json(&node)}));
    } else {
        emit(&added_text(&node));
    }
    Ok(EXIT_OK)
}

pub async fn remove(ctx: &Ctx, id: u64) -> anyhow::Result<u8> {
    let mut admin = AdminClient::new(ctx.connect().await?);
    let action = format!("remove node {id}");
    ctx.call_status(&action, admin.node_remove(NodeRemoveRequest { node_id: id })).await?.map_err(|s| cluster_failure(ctx, &s, &action))?;
    if ctx.json() {
        emit_json(&json!({"node_id": id, "removed": true}));
    } else {
        emit(&format!("node {id} removed; its id is never used again (you can stop its process now)"));
    }
    Ok(EXIT_OK)
}

pub async fn drain(ctx: &Ctx, id: u64) -> anyhow::Result<u8> {
    let mut admin = AdminClient::new(ctx.connect().await?);
    let action = format!("drain node {id}");
    let r = ctx.call_status(&action, admin.node_drain(NodeDrainRequest { node_id: id })).await?.map_err(|s| cluster_failure(ctx, &s, &action))?;
    if ctx.json() {
        emit_json(&json!({"node_id": id, "moves": moves_json(&r.moves), "queued": r.queued}));
    } else {
        emit(&drain_text(id, &r.moves));
    }
    Ok(EXIT_OK)
}

fn added_text(n: &NodeStatus) -> String {
    let mut out = key_values(&[
        ("node", n.node_id.to_string()),
        ("cluster", output::or_dash(&n.cluster_addr)),
        ("grpc", output::or_dash(&n.grpc_addr)),
        ("http", output::or_dash(&n.http_addr)),
    ]);
    out.push_str(&format!("\n\nnode {} is a member; it holds no replicas yet: `chorusctl shard rebalance` moves some onto it", n.node_id));
    out
}

fn drain_text(id: u64, moves: &[ShardMovePlan]) -> String {
    if moves.is_empty() {
        return format!("node {id} is draining and holds no replicas: remove it with `chorusctl node remove {id}`");
    }
    plan_text(
        moves,
        &format!(
            "node {id} is draining: {} move(s) queued to take its replicas off; moves run one at a time: follow \
them with `chorusctl cluster status`, then `chorusctl node remove {id}`",
            moves.len()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_prints_the_moves_and_the_next_step() {
        let text = drain_text(3, &[ShardMovePlan { shard: 5, from: 3, to: 1 }]);
        assert!(text.starts_with("SHARD  FROM  TO\n    5     3   1\n\nnode 3 is draining: 1 move(s) queued"), "{text}");
        assert!(text.ends_with("then `chorusctl node remove 3`"), "{text}");
        assert_eq!(drain_text(3, &[]), "node 3 is draining and holds no replicas: remove it with `chorusctl node remove 3`");
    }

    #[test]
    fn an_added_node_shows_its_addresses_and_what_to_do_next() {
        let n = NodeStatus { node_id: 4, cluster_addr: "n4:7900".into(), grpc_addr: "n4:7700".into(), ..Default::default() };
        let text = added_text(&n);
        assert!(text.starts_with("node     4\ncluster  n4:7900\ngrpc     n4:7700\nhttp     -\n\n"), "{text}");
        assert!(text.contains("`chorusctl shard rebalance`"), "{text}");
        assert_eq!(member_json(&n)["cluster_addr"], "n4:7900");
    }
}
