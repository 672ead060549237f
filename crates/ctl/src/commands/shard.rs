//! `shard move|transfer-leader|rebalance`: Admin.ShardMove, Admin.ShardTransferLeader
//! and Admin.ShardRebalance, and how a list of shard moves is shown (these, `node drain`
//! and `cluster status`). The node plans and runs the moves; this only asks and prints.

use super::Ctx;
use super::cluster::cluster_failure;
use crate::failure::{EXIT_OK, Failure};
use crate::output::{Table, emit, emit_json};
use chorus_proto::v1::admin_client::AdminClient;
use chorus_proto::v1::{ShardCancelMovesRequest, ShardMovePlan, ShardMoveRequest, ShardRebalanceRequest, ShardTransferLeaderRequest};
use serde_json::{Value, json};

const FOLLOW_MOVES: &str = "moves run one at a time: follow them with `chorusctl cluster status`";

pub async fn move_replica(ctx: &Ctx, shard: u32, to: u64, from: Option<u64>) -> anyhow::Result<u8> {
    if from == Some(to) {
        return Err(Failure::usage(format!("--from and --to both name node {to}: a replica moves to another node"))
            .hint("leave out --from to move the replica on the node holding the most replicas")
            .into());
    }
    let mut admin = AdminClient::new(ctx.connect().await?);
    let action = match from {
        Some(from) => format!("move shard {shard} from node {from} to node {to}"),
        None => format!("move a replica of shard {shard} to node {to}"),
    };
    let request = ShardMoveRequest { shard, to, from: from.unwrap_or(0) };
    let r = ctx.call_status(&action, admin.shard_move(request)).await?.map_err(|s| cluster_failure(ctx, &s, &action))?;
    if ctx.json() {
        emit_json(&json!({"moves": moves_json(&r.moves), "queued": r.queued}));
    } else {
        let footer = if r.queued { format!("queued; {FOLLOW_MOVES}") } else { "not queued".to_string() };
        emit(&plan_text(&r.moves, &footer));
    }
    Ok(EXIT_OK)
}

pub async fn transfer_leader(ctx: &Ctx, shard: u32, to: u64) -> anyhow::Result<u8> {
    let mut admin = AdminClient::new(ctx.connect().await?);
    let action = format!("hand the leadership of shard {shard} to node {to}");
    ctx.call_status(&action, admin.shard_transfer_leader(ShardTransferLeaderRequest { shard, to })).await?.map_err(|s| cluster_failure(ctx, &s, &action))?;
    if ctx.json() {
        emit_json(&json!({"shard": shard, "leader": to}));
    } else {
        emit(&format!("shard {shard} is led by node {to}"));
    }
    Ok(EXIT_OK)
}

pub async fn rebalance(ctx: &Ctx, dry_run: bool) -> anyhow::Result<u8> {
    let mut admin = AdminClient::new(ctx.connect().await?);
    let action = if dry_run { "plan a rebalance" } else { "rebalance the shards" };
    let r = ctx.call_status(action, admin.shard_rebalance(ShardRebalanceRequest { dry_run })).await?.map_err(|s| cluster_failure(ctx, &s, action))?;
    if ctx.json() {
        emit_json(&json!({"dry_run": dry_run, "moves": moves_json(&r.moves), "queued": r.queued}));
    } else {
        emit(&rebalance_text(&r.moves, r.queued, dry_run));
    }
    Ok(EXIT_OK)
}

pub async fn cancel_moves(ctx: &Ctx) -> anyhow::Result<u8> {
    let mut admin = AdminClient::new(ctx.connect().await?);
    let action = "cancel the queued shard moves";
    let r = ctx.call_status(action, admin.shard_cancel_moves(ShardCancelMovesRequest {})).await?.map_err(|s| cluster_failure(ctx, &s, action))?;
    if ctx.json() {
        emit_json(&json!({"moves": moves_json(&r.moves), "cancelled": r.moves.len()}));
    } else {
        let footer = if r.moves.is_empty() { "no moves were queued".to_string() } else { format!("{} move(s) cancelled", r.moves.len()) };
        emit(&plan_text(&r.moves, &footer));
    }
    Ok(EXIT_OK)
}

fn rebalance_text(moves: &[ShardMovePlan], queued: bool, dry_run: bool) -> String {
    let n = moves.len();
    let footer = if moves.is_empty() {
        "the replicas are spread evenly: nothing to move".to_string()
    } else if queued {
        format!("{n} move(s) queued; {FOLLOW_MOVES}")
    } else if dry_run {
        format!("dry run: {n} move(s) planned, nothing queued; run `chorusctl shard rebalance` to queue them")
    } else {
        format!("{n} move(s) planned but not queued")
    };
    plan_text(moves, &footer)
}

/// A plan as a table followed by what happened to it (`footer`); just the footer
/// when there is nothing to move.
pub(super) fn plan_text(moves: &[ShardMovePlan], footer: &str) -> String {
    if moves.is_empty() {
        return footer.to_string();
    }
    format!("{}\n\n{footer}", moves_table(moves, false).render())
}

pub(super) fn move_json(m: &ShardMovePlan) -> Value {
    json!({"shard": m.shard, "from": m.from, "to": m.to})
}

pub(super) fn moves_json(moves: &[ShardMovePlan]) -> Vec<Value> {
    moves.iter().map(move_json).collect()
}

/// SHARD FROM TO, and with `queue_state` a STATE column: the first move of the queue
/// is running, the others wait.
pub(super) fn moves_table(moves: &[ShardMovePlan], queue_state: bool) -> Table {
    let mut headers = vec!["SHARD", "FROM", "TO"];
    if queue_state {
        headers.push("STATE");
    }
    let mut t = Table::new(&headers).align_right(&[0, 1, 2]);
    for (i, m) in moves.iter().enumerate() {
        let mut row = vec![m.shard.to_string(), node_cell(m.from), node_cell(m.to)];
        if queue_state {
            row.push(if i == 0 { "running" } else { "queued" }.to_string());
        }
        t.push(row);
    }
    t
}

/// Node ids start at 1: 0 means none.
fn node_cell(id: u64) -> String {
    if id == 0 { "-".to_string() } else { id.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mv(shard: u32, from: u64, to: u64) -> ShardMovePlan {
        ShardMovePlan { shard, from, to }
    }

    #[test]
    fn moves_show_as_a_table_with_the_queue_state() {
        let moves = [mv(3, 1, 4), mv(17, 2, 4)];
        assert_eq!(moves_table(&moves, false).render(), "SHARD  FROM  TO\n    3     1   4\n   17     2   4");
        assert_eq!(moves_table(&moves, true).render(), "SHARD  FROM  TO  STATE\n    3     1   4  running\n   17     2   4  queued");
        assert_eq!(moves_json(&moves)[1], json!({"shard": 17, "from": 2, "to": 4}));
    }

    #[test]
    fn rebalance_says_whether_the_plan_was_queued() {
        let plan = [mv(3, 1, 4)];
        let text = rebalance_text(&plan, false, true);
        assert!(text.starts_with("SHARD  FROM  TO\n    3     1   4\n\n"), "{text}");
        assert!(text.ends_with("dry run: 1 move(s) planned, nothing queued; run `chorusctl shard rebalance` to queue them"));
        assert!(rebalance_text(&plan, true, false).ends_with("1 move(s) queued; moves run one at a time: follow them with `chorusctl cluster status`"));
        assert_eq!(rebalance_text(&[], false, false), "the replicas are spread evenly: nothing to move");
        assert_eq!(rebalance_text(&[], false, true), "the replicas are spread evenly: nothing to move");
    }
}
