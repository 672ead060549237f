//! Placement rules: initialization, members and never-reused ids, refused changes that
//! leave the state as it was, and the assignment, drain and rebalance plans.

use super::*;

fn member(id: NodeId) -> Member {
    Member { id, addr: format!("10.0.0.{id}:7900"), grpc_addr: format!("10.0.0.{id}:7700"), http_addr: String::new(), draining: false }
}

fn init(nodes: u64, shards: u32, rf: u32) -> PlacementState {
    let mut s = PlacementState::default();
    s.apply(&PlacementOp::Init { cluster_id: "c1".into(), shards, replication: rf, members: (1..=nodes).map(member).collect() }).unwrap();
    s
}

#[test]
fn init_spreads_replicas_and_preferred_leaders_evenly() {
    let s = init(3, 12, 3);
    assert_eq!(s.shard_count(), 12);
    assert!(s.shards.iter().all(|p| p.replicas.len() == 3 && p.generation == 0));
    assert_eq!(s.replica_counts().values().copied().collect::<Vec<_>>(), vec![12, 12, 12]);
    let mut firsts = BTreeMap::new();
    for p in &s.shards {
        *firsts.entry(p.replicas[0]).or_insert(0) += 1;
    }
    assert_eq!(firsts.values().copied().collect::<Vec<_>>(), vec![4, 4, 4]);
    let s5 = init(5, 10, 3);
    assert_eq!(s5.replica_counts().values().copied().collect::<Vec<_>>(), vec![6, 6, 6, 6, 6]);
}

#[test]
fn init_is_refused_twice_and_with_too_few_nodes() {
    let mut s = init(3, 4, 3);
    let before = s.clone();
    let again = s.apply(&PlacementOp::Init { cluster_id: "c2".into(), shards: 4, replication: 3, members: vec![member(9)] });
    assert_eq!(again, Err(PlacementError::AlreadyInitialized { cluster_id: "c1".into() }));
    assert_eq!(s, before, "a refused change leaves the state as it was");
    let mut fresh = PlacementState::default();
    let e = fresh.apply(&PlacementOp::Init { cluster_id: "c".into(), shards: 4, replication: 3, members: vec![member(1), member(2)] }).unwrap_err();
    assert_eq!(e.to_string(), "replication 3 needs at least 3 nodes, but 2 are known");
    let e = fresh.apply(&PlacementOp::Init { cluster_id: "c".into(), shards: 0, replication: 1, members: vec![member(1)] }).unwrap_err();
    assert_eq!(e.to_string(), "shards must be between 1 and 4096, got 0");
    assert!(!fresh.is_initialized());
}

#[test]
fn node_ids_are_never_reused_and_a_node_with_replicas_cannot_be_removed() {
    let mut s = init(3, 4, 3);
    s.apply(&PlacementOp::AddNode { member: member(4) }).unwrap();
    assert_eq!(s.apply(&PlacementOp::AddNode { member: member(4) }), Err(PlacementError::AlreadyMember { id: 4, addr: "10.0.0.4:7900".into() }));
    let mut dup = member(5);
    dup.addr = member(4).addr;
    assert_eq!(s.apply(&PlacementOp::AddNode { member: dup }), Err(PlacementError::AddressTaken { addr: "10.0.0.4:7900".into(), id: 4 }));
    assert_eq!(s.apply(&PlacementOp::RemoveNode { id: 1 }), Err(PlacementError::NodeNotEmpty { id: 1, shards: 4 }));
    s.apply(&PlacementOp::RemoveNode { id: 4 }).unwrap();
    assert_eq!(s.apply(&PlacementOp::AddNode { member: member(4) }), Err(PlacementError::IdReused { id: 4 }));
    assert_eq!(s.apply(&PlacementOp::AddNode { member: member(0) }), Err(PlacementError::ZeroId));
}

#[test]
fn drain_plan_moves_every_replica_to_the_least_loaded_other_node() {
    let mut s = init(3, 6, 2);
    s.apply(&PlacementOp::AddNode { member: member(4) }).unwrap();
    let plan = s.drain_plan(1).unwrap();
    assert_eq!(plan.len(), s.shards.iter().filter(|p| p.replicas.contains(&1)).count());
    for m in &plan {
        assert_eq!(m.from, 1);
        assert!(!s.shards[m.shard as usize].replicas.contains(&m.to));
    }
    // Node 4 (empty) takes the most.
    let to4 = plan.iter().filter(|m| m.to == 4).count();
    assert!(to4 >= plan.len() / 2, "{plan:?}");
    let three = init(3, 4, 3);
    assert!(three.drain_plan(1).unwrap_err().to_string().contains("add a node first"));
}

#[test]
fn rebalance_plan_evens_replicas_within_one_and_queued_moves_are_checked() {
    let mut s = init(3, 8, 3);
    s.apply(&PlacementOp::AddNode { member: member(4) }).unwrap();
    let plan = s.rebalance_plan();
    assert_eq!(plan.len(), 6, "24 replicas over 4 nodes: 6 move to the new node");
    assert!(plan.iter().all(|m| m.to == 4));
    let mut after = s.clone();
    for m in &plan {
        let r = after.shards[m.shard as usize].replicas.iter().map(|n| if *n == m.from { m.to } else { *n }).collect();
        after.apply(&PlacementOp::SetShard { shard: m.shard, replicas: r, learners: vec![] }).unwrap();
    }
    assert_eq!(after.replica_counts().values().copied().collect::<Vec<_>>(), vec![6, 6, 6, 6]);
    assert!(after.rebalance_plan().is_empty(), "a balanced cluster needs no moves");
    s.apply(&PlacementOp::QueueMoves { moves: plan.clone() }).unwrap();
    assert_eq!(s.moves, plan);
    // Node 4 holds no replica of a shard the plan does not move to it.
    let untouched = (0..s.shard_count()).find(|sh| !plan.iter().any(|m| m.shard == *sh)).unwrap();
    let to = (1..=3).find(|n| !s.shards[untouched as usize].replicas.contains(n)).unwrap_or(1);
    let bad = Move { shard: untouched, from: 4, to };
    assert!(s.apply(&PlacementOp::QueueMoves { moves: vec![bad] }).unwrap_err().to_string().contains("holds no replica"));
    s.apply(&PlacementOp::QueueMoves { moves: plan.clone() }).unwrap();
    assert_eq!(s.moves, plan, "queuing the same moves again changes nothing");
    s.apply(&PlacementOp::MoveFinished { shard: plan[0].shard }).unwrap();
    assert_eq!(s.moves.len(), 5);
}

#[test]
fn moves_queued_for_one_shard_are_checked_against_each_other() {
    let mut s = init(3, 4, 2);
    s.apply(&PlacementOp::AddNode { member: member(4) }).unwrap();
    s.apply(&PlacementOp::AddNode { member: member(5) }).unwrap();
    let holders = s.shards[0].replicas.clone();
    let (a, b) = (holders[0], holders[1]);
    // a → 4 first; then b → 4 would put a second replica on node 4 and leave the shard
    // with one: refused, while b → 5 is fine.
    s.apply(&PlacementOp::QueueMoves { moves: vec![Move { shard: 0, from: a, to: 4 }] }).unwrap();
    let err = s.apply(&PlacementOp::QueueMoves { moves: vec![Move { shard: 0, from: b, to: 4 }] }).unwrap_err().to_string();
    assert!(err.contains("node 4 already holds a replica of shard 0 once the moves queued before it have run"), "{err}");
    // Nor may a later move take the replica a queued move already takes away.
    let err = s.apply(&PlacementOp::QueueMoves { moves: vec![Move { shard: 0, from: a, to: 5 }] }).unwrap_err().to_string();
    assert!(err.contains(&format!("node {a} holds no replica of shard 0 once")), "{err}");
    // Within one request too.
    let mut t = s.clone();
    let err = t.apply(&PlacementOp::QueueMoves { moves: vec![Move { shard: 0, from: b, to: 5 }, Move { shard: 0, from: 4, to: 5 }] }).unwrap_err().to_string();
    assert!(err.contains("node 5 already holds"), "{err}");
    assert_eq!(t.moves.len(), 1, "a refused request queues nothing");
    s.apply(&PlacementOp::QueueMoves { moves: vec![Move { shard: 0, from: b, to: 5 }] }).unwrap();
    assert_eq!(s.moves, vec![Move { shard: 0, from: a, to: 4 }, Move { shard: 0, from: b, to: 5 }]);
}

#[test]
fn placement_voters_are_at_most_five_and_skip_draining_members() {
    let mut s = init(7, 4, 3);
    assert_eq!(s.placement_voters(), vec![1, 2, 3, 4, 5]);
    s.apply(&PlacementOp::SetDraining { id: 2, draining: true }).unwrap();
    assert_eq!(s.placement_voters(), vec![1, 3, 4, 5, 6]);
}

/// Leaderships are even after a rebalance onto a new node (it does not lead every shard
/// where it took the first place), the initial assignment keeps its first replicas, and
/// nodes that are down or draining lead nothing.
#[test]
fn leader_plan_evens_leaderships_over_the_nodes_that_are_up() {
    let leads = |plan: &[Option<NodeId>]| {
        let mut n: BTreeMap<NodeId, usize> = BTreeMap::new();
        for l in plan.iter().flatten() {
            *n.entry(*l).or_default() += 1;
        }
        n
    };
    let s = init(3, 12, 3);
    let plan = s.leader_plan(&[1, 2, 3]);
    assert_eq!(plan, s.shards.iter().map(|p| Some(p.replicas[0])).collect::<Vec<_>>(), "the initial assignment's preferred leaders");

    // A fourth node joins and takes its share of replicas, each in the place of the
    // node it replaced (often the first).
    let mut s = init(3, 16, 3);
    s.apply(&PlacementOp::AddNode { member: member(4) }).unwrap();
    for m in s.rebalance_plan() {
        let sp = &s.shards[m.shard as usize];
        let replicas: Vec<NodeId> = sp.replicas.iter().map(|n| if *n == m.from { m.to } else { *n }).collect();
        s.apply(&PlacementOp::SetShard { shard: m.shard, replicas, learners: vec![] }).unwrap();
    }
    assert_eq!(s.replica_counts().values().copied().collect::<Vec<_>>(), vec![12, 12, 12, 12]);
    let plan = s.leader_plan(&[1, 2, 3, 4]);
    let n = leads(&plan);
    assert_eq!(n.len(), 4, "{plan:?}");
    assert!(n.values().max().unwrap() - n.values().min().unwrap() <= 1, "every node leads 4 ± 1: {n:?} {plan:?}");
    for (i, l) in plan.iter().enumerate() {
        assert!(s.shards[i].replicas.contains(&l.unwrap()), "shard {i} is led by one of its replicas");
    }

    // Node 2 is down: its shards are led by the others, evenly.
    let plan = s.leader_plan(&[1, 3, 4]);
    assert!(!plan.contains(&Some(2)));
    let n = leads(&plan);
    assert!(n.values().all(|c| (5..=6).contains(c)), "{n:?}");
    // Draining node 3 leads nothing.
    s.apply(&PlacementOp::SetDraining { id: 3, draining: true }).unwrap();
    assert!(!s.leader_plan(&[1, 2, 3, 4]).contains(&Some(3)));
}
