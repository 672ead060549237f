//! tonic services: `Ingest` (stream and unary), `Profiles` and `Admin`.

use crate::convert::{self, ItemResult};
use crate::{ApiConfig, ApiError};
use chorus_proto::v1;
use chorus_shard::Shards;
use chorus_types::CustomerId;
use futures::StreamExt;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

#[derive(Clone)]
pub struct Services {
    pub shards: Shards,
    pub config: Arc<ApiConfig>,
}

impl Services {
    /// Ingest one batch; also returns the overload message if overload refused it all.
    async fn ingest_batch(&self, req: v1::IngestRequest) -> Result<(v1::IngestResponse, Option<String>), ApiError> {
        if req.events.len() > self.config.batch_events_max {
            return Err(ApiError::invalid(
                "events",
                format!("{} events in one batch; the limit is {} — split the batch", req.events.len(), self.config.batch_events_max),
            ));
        }
        let inputs: Vec<_> = req.events.into_iter().map(convert::event_input).collect();
        let now = self.shards.clock().now_ms();
        let results: Vec<ItemResult> = convert::ingest_inputs(&self.shards, inputs, now).await;
        let (results, overloaded) = convert::proto_results(results);
        Ok((v1::IngestResponse { batch_id: req.batch_id, results, error: None }, overloaded))
    }

    async fn resolve_ref(&self, r: Option<v1::ProfileRef>) -> Result<CustomerId, ApiError> {
        match r.and_then(|r| r.r#ref) {
            None => Err(ApiError::invalid("profile", "give a customer_id or an identity {kind, value}")),
            Some(v1::profile_ref::Ref::CustomerId(id)) => {
                id.parse().map_err(|e: chorus_types::CustomerIdParseError| ApiError::invalid("profile.customer_id", e.to_string()))
            }
            Some(v1::profile_ref::Ref::Identity(i)) => {
                let id = convert::identity(&i.kind, &i.value)?;
                self.shards.find(&id).await?.ok_or_else(|| ApiError::NotFound(format!("no customer with {} {}", id.kind, id.value)))
            }
        }
    }
}

/// A whole-batch refusal as a stream answer.
fn batch_error(e: ApiError) -> v1::BatchError {
    match e {
        ApiError::InvalidArgument { field, message } => v1::BatchError { code: "invalid_argument".into(), field, message },
        other => v1::BatchError { code: "unavailable".into(), field: String::new(), message: other.to_string() },
    }
}

#[tonic::async_trait]
impl v1::ingest_server::Ingest for Services {
    type StreamStream = Pin<Box<dyn futures::Stream<Item = Result<v1::IngestResponse, Status>> + Send>>;

    async fn stream(&self, request: Request<Streaming<v1::IngestRequest>>) -> Result<Response<Self::StreamStream>, Status> {
        let mut incoming = request.into_inner();
        let in_flight = self.config.stream_batches_in_flight_max;
        let (tx, rx) = mpsc::channel::<Result<v1::IngestResponse, Status>>(in_flight);
        let me = self.clone();
        tokio::spawn(async move {
            // Batches are processed concurrently (bounded); each answer is sent as soon as
            // its batch is committed. Reading stops while the bound is reached, so a fast
            // client is slowed by HTTP/2 flow control instead of growing our memory.
            let sem = Arc::new(tokio::sync::Semaphore::new(in_flight));
            loop {
                let permit = match sem.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => break,
                };
                let next = incoming.next().await;
                let req = match next {
                    Some(Ok(r)) => r,
                    Some(Err(status)) => {
                        tracing::debug!(%status, "ingest stream ended by the client");
                        break;
                    }
                    None => break,
                };
                let me2 = me.clone();
                let tx2 = tx.clone();
                tokio::spawn(async move {
                    let batch_id = req.batch_id;
                    // Overload is answered per batch with RETRY results and a refused
                    // batch with a batch error, so the stream survives for the next
                    // batches; RESOURCE_EXHAUSTED / INVALID_ARGUMENT are unary answers.
                    let answer = match me2.ingest_batch(req).await {
                        Ok((r, _)) => r,
                        Err(e) => v1::IngestResponse { batch_id, results: Vec::new(), error: Some(batch_error(e)) },
                    };
                    let _ = tx2.send(Ok(answer)).await;
                    drop(permit);
                });
            }
            // Wait for every in-flight batch before closing the response stream.
            let _ = sem.acquire_many(in_flight as u32).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn send(&self, request: Request<v1::IngestRequest>) -> Result<Response<v1::IngestResponse>, Status> {
        let (response, overloaded) = self.ingest_batch(request.into_inner()).await?;
        if let Some(msg) = overloaded {
            return Err(ApiError::Overloaded(msg).into());
        }
        Ok(Response::new(response))
    }
}

#[tonic::async_trait]
impl v1::profiles_server::Profiles for Services {
    async fn get(&self, request: Request<v1::GetProfileRequest>) -> Result<Response<v1::Profile>, Status> {
        let req = request.into_inner();
        let id = self.resolve_ref(req.profile).await?;
        let (state, followed) =
            self.shards.customer_following_merges(id).await.map_err(ApiError::from)?.ok_or_else(|| ApiError::NotFound(format!("no customer {id}")))?;
        let merged_into = followed.then(|| state.id.to_string());
        Ok(Response::new(convert::profile(&state, merged_into, req.events as usize)))
    }

    async fn explain(&self, request: Request<v1::ExplainRequest>) -> Result<Response<v1::ExplainResponse>, Status> {
        let req = request.into_inner();
        let id = self.resolve_ref(req.profile).await?;
        let (state, _) =
            self.shards.customer_following_merges(id).await.map_err(ApiError::from)?.ok_or_else(|| ApiError::NotFound(format!("no customer {id}")))?;
        let limit = if req.limit == 0 { usize::MAX } else { req.limit as usize };
        let decisions = state
            .decisions
            .iter()
            .rev()
            .filter(|d| req.journey.is_empty() || d.concerns_journey(&req.journey))
            .take(limit)
            .map(|d| v1::Decision { at_ms: d.at_ms, kind: d.kind.as_str().to_string(), reason: d.reason.clone(), detail: d.detail.clone() })
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Ok(Response::new(v1::ExplainResponse { customer_id: state.id.to_string(), decisions }))
    }

    async fn get_consent(&self, request: Request<v1::GetConsentRequest>) -> Result<Response<v1::ConsentResponse>, Status> {
        let id = self.resolve_ref(request.into_inner().profile).await?;
        let (state, _) =
            self.shards.customer_following_merges(id).await.map_err(ApiError::from)?.ok_or_else(|| ApiError::NotFound(format!("no customer {id}")))?;
        Ok(Response::new(convert::consent(&state)))
    }

    async fn set_consent(&self, request: Request<v1::SetConsentRequest>) -> Result<Response<v1::ConsentResponse>, Status> {
        let req = request.into_inner();
        let (scope_kind, name) = match (req.channel.trim(), req.topic.trim()) {
            (c, "") if !c.is_empty() => {
                if !chorus_types::CHANNELS.contains(&c) {
                    return Err(ApiError::invalid("channel", format!("{c:?} is not a channel: use one of {}", chorus_types::CHANNELS.join(", "))).into());
                }
                ("channel", c.to_string())
            }
            ("", t) if !t.is_empty() => ("topic", t.to_string()),
            _ => {
                return Err(ApiError::invalid("channel", "give exactly one of channel and topic").into());
            }
        };
        let status = match chorus_engine::ConsentStatus::parse(req.status.trim()) {
            Some(s @ (chorus_engine::ConsentStatus::OptedIn | chorus_engine::ConsentStatus::OptedOut | chorus_engine::ConsentStatus::Unknown)) => s,
            _ => {
                return Err(ApiError::invalid("status", format!("{:?}: use opted_in, opted_out or unknown", req.status)).into());
            }
        };
        let id = self.resolve_ref(req.profile).await?;
        let (state, _) =
            self.shards.customer_following_merges(id).await.map_err(ApiError::from)?.ok_or_else(|| ApiError::NotFound(format!("no customer {id}")))?;
        // The change travels as an event of the customer's, so it is ordered with their
        // other inputs and replicated like them.
        let consent = if scope_kind == "channel" {
            serde_json::json!({ name.clone(): status.as_str() })
        } else {
            serde_json::json!({"topics": { name.clone(): status.as_str() }})
        };
        let request_id = if req.request_id.trim().is_empty() {
            format!("{}-{}-{}-{}", state.id, scope_kind, name, self.shards.now_ms())
        } else {
            req.request_id.trim().to_string()
        };
        let input = chorus_types::EventInput {
            message_id: format!("consent/{request_id}"),
            event_type: "identify".into(),
            traits: serde_json::json!({ "consent": consent }).as_object().cloned().unwrap_or_default(),
            ..Default::default()
        };
        let chorus = serde_json::json!({"consent_source": "api", "evidence": req.evidence.trim()});
        convert::ingest_as_customer(&self.shards, &state, input, Some(chorus)).await?;
        let (state, _) =
            self.shards.customer_following_merges(state.id).await.map_err(ApiError::from)?.ok_or_else(|| ApiError::NotFound(format!("no customer {id}")))?;
        Ok(Response::new(convert::consent(&state)))
    }
}

#[tonic::async_trait]
impl v1::admin_server::Admin for Services {
    async fn list_dead_letters(&self, request: Request<v1::ListDeadLettersRequest>) -> Result<Response<v1::ListDeadLettersResponse>, Status> {
        let limit = match request.into_inner().limit {
            0 => 100,
            n => n.min(10_000) as usize,
        };
        let letters = self
            .shards
            .dead_letters(limit)
            .await
            .map_err(ApiError::from)?
            .into_iter()
            .map(|d| v1::DeadLetter {
                idempotency_key: d.intent.key,
                customer_id: d.intent.customer.to_string(),
                channel: d.intent.channel,
                template: d.intent.template,
                journey: d.intent.journey,
                to: d.intent.to,
                status: d.status,
                detail: d.detail,
                at_ms: d.at_ms,
                content_json: d.intent.content,
            })
            .collect();
        Ok(Response::new(v1::ListDeadLettersResponse { letters }))
    }

    async fn redrive(&self, request: Request<v1::RedriveRequest>) -> Result<Response<v1::RedriveResponse>, Status> {
        let req = request.into_inner();
        if req.keys.is_empty() && !req.all {
            return Err(ApiError::invalid("keys", "name the dead letters to redrive, or ask for all").into());
        }
        let letters = self.shards.dead_letters(usize::MAX).await.map_err(ApiError::from)?;
        let mut picked = Vec::new();
        for k in &req.keys {
            match letters.iter().find(|d| d.intent.key == *k) {
                Some(d) => picked.push((d.intent.customer, d.intent.key.clone())),
                None => {
                    return Err(ApiError::NotFound(format!("no dead letter with key {k:?}: see `chorusctl dlq list`")).into());
                }
            }
        }
        if req.all {
            picked = letters.iter().map(|d| (d.intent.customer, d.intent.key.clone())).collect();
        }
        let redriven = self.shards.redrive(picked).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::RedriveResponse { redriven }))
    }

    async fn cluster_status(&self, _: Request<v1::ClusterStatusRequest>) -> Result<Response<v1::ClusterStatusResponse>, Status> {
        let clock_mode = self.shards.clock().mode().as_str().to_string();
        let now_ms = self.shards.clock().now_ms();
        if self.shards.is_clustered() {
            let v = self.shards.cluster_view().await.map_err(ApiError::from)?;
            return Ok(Response::new(v1::ClusterStatusResponse {
                cluster_id: v.cluster_id,
                shard_count: v.shard_count,
                nodes: v.nodes.iter().map(node_status).collect(),
                leaderless_shards: v.leaderless.len() as u32,
                under_replicated_shards: v.under_replicated.len() as u32,
                clock_mode,
                now_ms,
                clustered: true,
                replication: v.replication,
                leaderless: v.leaderless,
                under_replicated: v.under_replicated,
                moves: v.moves.iter().map(move_plan).collect(),
                placement_leader: v.placement_leader.unwrap_or(0),
            }));
        }
        let shards = self.shards.status();
        let me = self.shards.node_id();
        let led = shards.iter().filter(|s| s.leader == Some(me)).count() as u32;
        let followed = shards.iter().filter(|s| s.voters.contains(&me) && s.leader != Some(me)).count() as u32;
        let leaderless: Vec<u32> = shards.iter().filter(|s| s.leader.is_none()).map(|s| s.shard).collect();
        Ok(Response::new(v1::ClusterStatusResponse {
            cluster_id: format!("single-node-{me}"),
            shard_count: self.shards.shard_count(),
            nodes: vec![v1::NodeStatus {
                node_id: me,
                grpc_addr: self.config.grpc_addr.clone(),
                http_addr: self.config.http_addr.clone(),
                version: self.config.version.clone(),
                healthy: leaderless.is_empty(),
                shards_led: led,
                shards_followed: followed,
                ..Default::default()
            }],
            leaderless_shards: leaderless.len() as u32,
            under_replicated_shards: 0,
            clock_mode,
            now_ms,
            replication: 1,
            leaderless,
            ..Default::default()
        }))
    }

    async fn cluster_init(&self, request: Request<v1::ClusterInitRequest>) -> Result<Response<v1::ClusterInitResponse>, Status> {
        let req = request.into_inner();
        if req.shards == 0 {
            return Err(ApiError::invalid("shards", "give the number of shards (e.g. --shards 64)").into());
        }
        let replication = if req.replication == 0 { 3 } else { req.replication };
        let st = self.shards.cluster_init(req.shards, replication).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::ClusterInitResponse {
            cluster_id: st.cluster_id.clone(),
            shard_count: st.shard_count(),
            replication: st.replication,
            nodes: st.members.values().map(|m| member_status(m)).collect(),
        }))
    }

    async fn node_add(&self, request: Request<v1::NodeAddRequest>) -> Result<Response<v1::NodeAddResponse>, Status> {
        let req = request.into_inner();
        if req.node_id == 0 {
            return Err(ApiError::invalid("node_id", "node ids start at 1").into());
        }
        if req.addr.is_empty() {
            return Err(ApiError::invalid("addr", "give the node's cluster (node-to-node) address, host:port").into());
        }
        let m = self.shards.node_add(req.node_id, &req.addr).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::NodeAddResponse { node: Some(member_status(&m)) }))
    }

    async fn node_remove(&self, request: Request<v1::NodeRemoveRequest>) -> Result<Response<v1::NodeRemoveResponse>, Status> {
        self.shards.node_remove(request.into_inner().node_id).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::NodeRemoveResponse {}))
    }

    async fn node_drain(&self, request: Request<v1::NodeDrainRequest>) -> Result<Response<v1::ShardMovesResponse>, Status> {
        let moves = self.shards.node_drain(request.into_inner().node_id).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::ShardMovesResponse { moves: moves.iter().map(move_plan).collect(), queued: true }))
    }

    async fn shard_move(&self, request: Request<v1::ShardMoveRequest>) -> Result<Response<v1::ShardMovesResponse>, Status> {
        let req = request.into_inner();
        if req.to == 0 {
            return Err(ApiError::invalid("to", "name the node to move the replica to").into());
        }
        let m = self.shards.shard_move(req.shard, (req.from != 0).then_some(req.from), req.to).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::ShardMovesResponse { moves: vec![move_plan(&m)], queued: true }))
    }

    async fn shard_transfer_leader(&self, request: Request<v1::ShardTransferLeaderRequest>) -> Result<Response<v1::ShardTransferLeaderResponse>, Status> {
        let req = request.into_inner();
        self.shards.shard_transfer_leader(req.shard, req.to).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::ShardTransferLeaderResponse {}))
    }

    async fn shard_cancel_moves(&self, _: Request<v1::ShardCancelMovesRequest>) -> Result<Response<v1::ShardMovesResponse>, Status> {
        let moves = self.shards.cancel_moves().await.map_err(ApiError::from)?;
        Ok(Response::new(v1::ShardMovesResponse { moves: moves.iter().map(move_plan).collect(), queued: false }))
    }

    async fn create_write_key(&self, request: Request<v1::CreateWriteKeyRequest>) -> Result<Response<v1::CreateWriteKeyResponse>, Status> {
        let name = request.into_inner().name;
        crate::keys::check_name(&name).map_err(|m| ApiError::invalid("name", m))?;
        if self.shards.write_keys().await.map_err(ApiError::from)?.keys.iter().any(|k| k.name == name) {
            return Err(ApiError::invalid("name", format!("a write key named {name:?} exists; revoke it first or choose another name")).into());
        }
        let key = crate::keys::generate().map_err(|e| Status::internal(format!("generate a key: {e}")))?;
        let sha256 = crate::keys::sha256(&key);
        let fingerprint = crate::keys::fingerprint(&sha256);
        self.shards.put_write_key(&name, sha256).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::CreateWriteKeyResponse { name, key, fingerprint }))
    }

    async fn list_write_keys(&self, _: Request<v1::ListWriteKeysRequest>) -> Result<Response<v1::ListWriteKeysResponse>, Status> {
        let keys = self.shards.write_keys().await.map_err(ApiError::from)?;
        Ok(Response::new(v1::ListWriteKeysResponse {
            keys: keys
                .keys
                .into_iter()
                .map(|k| v1::WriteKeyInfo { fingerprint: crate::keys::fingerprint(&k.sha256), name: k.name, created_ms: k.created_ms })
                .collect(),
            keys_required: keys.required,
        }))
    }

    async fn revoke_write_key(&self, request: Request<v1::RevokeWriteKeyRequest>) -> Result<Response<v1::RevokeWriteKeyResponse>, Status> {
        let name = request.into_inner().name;
        if !self.shards.write_keys().await.map_err(ApiError::from)?.keys.iter().any(|k| k.name == name) {
            return Err(ApiError::NotFound(format!("no write key named {name:?}")).into());
        }
        self.shards.revoke_write_key(&name).await.map_err(ApiError::from)?;
        let remaining = self.shards.write_keys().await.map_err(ApiError::from)?.keys.len() as u32;
        Ok(Response::new(v1::RevokeWriteKeyResponse { remaining }))
    }

    async fn shard_rebalance(&self, request: Request<v1::ShardRebalanceRequest>) -> Result<Response<v1::ShardMovesResponse>, Status> {
        let dry_run = request.into_inner().dry_run;
        let moves = self.shards.rebalance(dry_run).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::ShardMovesResponse { moves: moves.iter().map(move_plan).collect(), queued: !dry_run && !moves.is_empty() }))
    }

    async fn list_shards(&self, _: Request<v1::ListShardsRequest>) -> Result<Response<v1::ListShardsResponse>, Status> {
        let shards = self
            .shards
            .every_shard_status()
            .await
            .map_err(ApiError::from)?
            .into_iter()
            .map(|s| v1::ShardStatus {
                shard: s.shard,
                leader: s.leader.unwrap_or(0),
                voters: s.voters,
                learners: s.learners,
                term: s.term,
                last_log_index: s.last_log_index,
                applied_index: s.applied_index,
                live_actors: s.live_actors,
                customers: s.customers,
                pending_timers: s.pending_timers,
                pending_intents: s.pending_intents,
                quarantined: s.quarantined,
            })
            .collect();
        Ok(Response::new(v1::ListShardsResponse { shards }))
    }

    async fn clock(&self, request: Request<v1::ClockRequest>) -> Result<Response<v1::ClockResponse>, Status> {
        let clock = self.shards.clock();
        let result = match request.into_inner().op {
            None | Some(v1::clock_request::Op::Show(_)) => Ok(clock.now_ms()),
            Some(v1::clock_request::Op::AdvanceMs(ms)) if ms < 0 => {
                Err(ApiError::invalid("advance_ms", "must not be negative: the clock never goes backwards"))
            }
            // Time travel passes through every timer due on the way (each fires at its own time).
            Some(v1::clock_request::Op::AdvanceMs(ms)) => self.shards.move_clock_to(clock.now_ms().saturating_add(ms)).await.map_err(ApiError::from),
            Some(v1::clock_request::Op::SetMs(ms)) => self.shards.move_clock_to(ms).await.map_err(ApiError::from),
        };
        let now_ms = result?;
        Ok(Response::new(v1::ClockResponse { mode: clock.mode().as_str().to_string(), now_ms }))
    }

    type TailMessagesStream = Pin<Box<dyn futures::Stream<Item = Result<v1::CapturedMessage, Status>> + Send>>;

    async fn tail_messages(&self, request: Request<v1::TailMessagesRequest>) -> Result<Response<Self::TailMessagesStream>, Status> {
        let req = request.into_inner();
        let filter: Option<String> = if req.customer_id.is_empty() {
            None
        } else {
            let id: CustomerId = req.customer_id.parse().map_err(|e: chorus_types::CustomerIdParseError| ApiError::invalid("customer_id", e.to_string()))?;
            Some(id.to_string())
        };
        let store = self.shards.store().clone();
        let last = if req.last == 0 { 20 } else { req.last as usize };
        let (tx, rx) = mpsc::channel::<Result<v1::CapturedMessage, Status>>(256);
        let follow = req.follow;
        tokio::spawn(async move {
            let keep = |m: &chorus_connectors::capture::Captured| filter.as_ref().is_none_or(|f| *f == m.intent.customer.to_string());
            // With a customer filter, "last N" means that customer's last N.
            let initial = if filter.is_some() {
                match chorus_connectors::capture::read_after(&store, 0, usize::MAX) {
                    Ok(all) => {
                        let mine: Vec<_> = all.into_iter().filter(|m| keep(m)).collect();
                        let skip = mine.len().saturating_sub(last);
                        Ok(mine.into_iter().skip(skip).collect::<Vec<_>>())
                    }
                    Err(e) => Err(e),
                }
            } else {
                chorus_connectors::capture::read_last(&store, last)
            };
            let mut cursor = match &initial {
                Ok(v) => v.last().map(|m| m.seq).unwrap_or(0),
                Err(_) => 0,
            };
            if !filter.is_some() || cursor == 0 {
                // Follow from the newest message overall, not just the filtered ones.
                if let Ok(v) = chorus_connectors::capture::read_last(&store, 1) {
                    cursor = cursor.max(v.last().map(|m| m.seq).unwrap_or(0));
                }
            }
            match initial {
                Ok(msgs) => {
                    for m in msgs {
                        if tx.send(Ok(captured(m))).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(Status::internal(format!("read captured messages: {e}")))).await;
                    return;
                }
            }
            while follow {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                }
                match chorus_connectors::capture::read_after(&store, cursor, 1000) {
                    Ok(msgs) => {
                        for m in msgs {
                            cursor = m.seq;
                            if keep(&m) && tx.send(Ok(captured(m))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(format!("read captured messages: {e}")))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn captured(m: chorus_connectors::capture::Captured) -> v1::CapturedMessage {
    // The rendered message when the node had its template; else what a renderer would get.
    let body = match serde_json::from_str::<serde_json::Value>(&m.intent.content) {
        Ok(serde_json::Value::Object(mut rendered)) => {
            rendered.insert("category".into(), m.intent.category.as_str().into());
            serde_json::Value::Object(rendered)
        }
        _ => {
            serde_json::json!({"template": m.intent.template, "category": m.intent.category.as_str(), "vars": m.intent.vars.0})
        }
    };
    v1::CapturedMessage {
        seq: m.seq,
        at_ms: m.at_ms,
        customer_id: m.intent.customer.to_string(),
        channel: m.intent.channel,
        template: m.intent.template,
        idempotency_key: m.intent.key,
        to: m.intent.to,
        body_json: body.to_string(),
        journey: m.intent.journey,
    }
}

#[tonic::async_trait]
impl v1::messages_server::Messages for Services {
    async fn send(&self, request: Request<v1::SendMessagesRequest>) -> Result<Response<v1::SendMessagesResponse>, Status> {
        let req = request.into_inner();
        if req.messages.len() > self.config.batch_events_max {
            return Err(ApiError::invalid(
                "messages",
                format!("{} messages in one request; the limit is {}", req.messages.len(), self.config.batch_events_max),
            )
            .into());
        }
        let now = self.shards.clock().now_ms();
        let mut results: Vec<v1::MessageResult> = Vec::with_capacity(req.messages.len());
        let mut valid = Vec::new();
        let mut positions = Vec::new();
        for (i, m) in req.messages.into_iter().enumerate() {
            let mut r = v1::MessageResult { index: i as u32, ..Default::default() };
            match self.message_request(m).await {
                Ok(sr) => {
                    valid.push(sr);
                    positions.push(i);
                }
                Err(ApiError::InvalidArgument { field, message }) => {
                    r.status = v1::MessageStatus::Rejected as i32;
                    r.field = field;
                    r.error = message;
                }
                Err(ApiError::NotFound(msg)) => {
                    r.status = v1::MessageStatus::NotFound as i32;
                    r.error = msg;
                }
                Err(e) => {
                    r.status = v1::MessageStatus::Retry as i32;
                    r.error = e.to_string();
                }
            }
            results.push(r);
        }
        let outcomes = self.shards.send(valid).await;
        for (pos, o) in positions.into_iter().zip(outcomes) {
            let r = &mut results[pos];
            match o {
                Ok(chorus_types::SendOutcome::Accepted { customer }) => {
                    r.status = v1::MessageStatus::Queued as i32;
                    r.customer_id = customer.to_string();
                    r.at_ms = now;
                }
                Ok(chorus_types::SendOutcome::Scheduled { customer, at_ms }) => {
                    r.status = v1::MessageStatus::Scheduled as i32;
                    r.customer_id = customer.to_string();
                    r.at_ms = at_ms;
                }
                Ok(chorus_types::SendOutcome::Duplicate) => r.status = v1::MessageStatus::Duplicate as i32,
                Ok(chorus_types::SendOutcome::NotFound) => {
                    r.status = v1::MessageStatus::NotFound as i32;
                    r.error = "the customer no longer exists in its shard".into();
                }
                Err(e) => {
                    r.status = v1::MessageStatus::Retry as i32;
                    r.error = e.to_string();
                }
            }
        }
        Ok(Response::new(v1::SendMessagesResponse { results }))
    }
}

impl Services {
    async fn message_request(&self, m: v1::MessageRequest) -> Result<chorus_types::SendRequest, ApiError> {
        if m.request_id.trim().is_empty() {
            return Err(ApiError::invalid("request_id", "is required (it makes the send idempotent)"));
        }
        if !chorus_types::CHANNELS.contains(&m.channel.as_str()) {
            return Err(ApiError::invalid("channel", format!("{:?} is not a channel: use one of {}", m.channel, chorus_types::CHANNELS.join(", "))));
        }
        if m.template.trim().is_empty() {
            return Err(ApiError::invalid("template", "is required"));
        }
        let category = chorus_types::Category::parse(&m.category)
            .ok_or_else(|| ApiError::invalid("category", format!("{:?} is not a category: use marketing or transactional", m.category)))?;
        let vars = match m.vars_json.trim() {
            "" => serde_json::Map::new(),
            text => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Object(o)) => o,
                Ok(_) => return Err(ApiError::invalid("vars_json", "must be a JSON object")),
                Err(e) => {
                    return Err(ApiError::invalid("vars_json", format!("is not valid JSON: {e}")));
                }
            },
        };
        let send_at_ms = if !m.send_at.trim().is_empty() {
            chorus_types::event::parse_rfc3339_ms(m.send_at.trim())
                .ok_or_else(|| ApiError::invalid("send_at", format!("{:?} is not an RFC 3339 time (e.g. 2026-12-01T10:00:00Z)", m.send_at)))?
        } else {
            m.send_at_ms
        };
        let id = self.resolve_ref(m.profile).await?;
        // Send to the survivor if the customer was merged away.
        let (state, _) = self.shards.customer_following_merges(id).await?.ok_or_else(|| ApiError::NotFound(format!("no customer {id}")))?;
        Ok(chorus_types::SendRequest {
            request_id: m.request_id.trim().to_string(),
            customer: state.id,
            channel: m.channel,
            template: m.template,
            category,
            vars: vars.into(),
            send_at_ms,
            topic: m.topic,
        })
    }
}

#[tonic::async_trait]
impl v1::journeys_server::Journeys for Services {
    async fn apply(&self, request: Request<v1::ApplyJourneyRequest>) -> Result<Response<v1::ApplyJourneyResponse>, Status> {
        let req = request.into_inner();
        let file = if req.file_name.is_empty() { "journey".to_string() } else { req.file_name };
        let catalog = chorus_engine::journey::Catalog {
            journeys: Some(self.shards.journeys().await.map_err(ApiError::from)?.into_iter().map(|j| j.id).collect()),
            audiences: Some(self.shards.audiences().await.iter().map(|a| a.def.id.clone()).collect()),
            templates: Some(self.shards.templates().await.map_err(ApiError::from)?.into_iter().map(|t| t.0).collect()),
            // Every channel has a connector on this node (the capture connector at least).
            connected_channels: Some(chorus_types::CHANNELS.iter().map(|c| c.to_string()).collect()),
            ..Default::default()
        };
        let def = chorus_engine::journey::load_journey(&req.source, &catalog).map_err(|diags| {
            let lines: Vec<String> = diags.iter().map(|d| format!("{file}:{d}")).collect();
            ApiError::invalid("source", format!("the journey is not valid:\n{}", lines.join("\n")))
        })?;
        let version = self.shards.publish_journey(&def).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::ApplyJourneyResponse { id: def.id, version }))
    }

    async fn stats(&self, request: Request<v1::JourneyStatsRequest>) -> Result<Response<v1::JourneyStatsResponse>, Status> {
        let id = request.into_inner().id;
        self.journey(&id).await?;
        let merged = self.shards.journey_stats(&id).await.map_err(ApiError::from)?;
        let total = |what: &str| -> (u64, f64) { merged.iter().filter(|((_, _, w), _)| w == what).fold((0, 0.0), |(c, s), (_, (c2, s2))| (c + c2, s + s2)) };
        let (entered, _) = total("entered");
        let (converted, revenue) = total("converted");
        let (h_entered, _) = total("entered_holdout");
        let (h_converted, _) = total("converted_holdout");
        let l = chorus_engine::journey::stats::lift(entered, converted, h_entered, h_converted);
        // Journey-level counters (step "") summed over versions.
        let mut by: std::collections::BTreeMap<String, (u64, f64)> = Default::default();
        for ((_, step, what), (c, sum)) in &merged {
            if step.is_empty() {
                let e = by.entry(what.clone()).or_default();
                e.0 += c;
                e.1 += sum;
            }
        }
        let mut time_to_conversion = Vec::new();
        for bucket in chorus_engine::journey::run::TTC_BUCKETS.iter().map(|(b, _)| *b).chain([">7d"]) {
            let (count, sum) = by.get(&format!("ttc:{bucket}")).copied().unwrap_or_default();
            time_to_conversion.push(v1::TimeBucket { bucket: bucket.to_string(), count, mean_ms: if count > 0 { sum / count as f64 } else { 0.0 } });
        }
        let mut top_paths: Vec<v1::PathCount> =
            by.iter().filter_map(|(w, (c, _))| w.strip_prefix("path:").map(|p| v1::PathCount { path: p.to_string(), count: *c })).collect();
        top_paths.sort_by(|a, b| b.count.cmp(&a.count).then(a.path.cmp(&b.path)));
        top_paths.truncate(10);
        let mut exits: Vec<v1::ReasonCount> =
            by.iter().filter_map(|(w, (c, _))| w.strip_prefix("exit:").map(|r| v1::ReasonCount { reason: r.to_string(), count: *c })).collect();
        exits.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
        let counters = merged
            .into_iter()
            .filter(|((_, step, _), _)| !step.is_empty())
            .map(|((version, step, what), (count, sum))| v1::StepCounter { version, step, what, count, sum })
            .collect();
        Ok(Response::new(v1::JourneyStatsResponse {
            id,
            counters,
            entered,
            converted,
            revenue,
            holdout_entered: h_entered,
            holdout_converted: h_converted,
            treatment_rate: l.treatment_rate,
            holdout_rate: l.holdout_rate,
            absolute_lift: l.absolute,
            relative_lift: l.relative.unwrap_or(f64::NAN),
            ci95_low: l.ci95.map(|c| c.0).unwrap_or(0.0),
            ci95_high: l.ci95.map(|c| c.1).unwrap_or(0.0),
            time_to_conversion,
            top_paths,
            exits,
        }))
    }

    async fn list(&self, _: Request<v1::ListJourneysRequest>) -> Result<Response<v1::ListJourneysResponse>, Status> {
        let journeys = self.shards.journeys().await.map_err(ApiError::from)?.iter().map(summary).collect();
        Ok(Response::new(v1::ListJourneysResponse { journeys }))
    }

    async fn show(&self, request: Request<v1::ShowJourneyRequest>) -> Result<Response<v1::ShowJourneyResponse>, Status> {
        let j = self.journey(&request.into_inner().id).await?;
        let definition_json = serde_json::to_string_pretty(&j.def).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(Response::new(v1::ShowJourneyResponse { summary: Some(summary(&j)), definition_json }))
    }

    async fn set_lifecycle(&self, request: Request<v1::SetLifecycleRequest>) -> Result<Response<v1::SetLifecycleResponse>, Status> {
        use chorus_engine::journey::run::Lifecycle;
        let req = request.into_inner();
        let lifecycle = match req.lifecycle.as_str() {
            "active" | "resume" | "resumed" => Lifecycle::Active,
            "paused" | "pause" => Lifecycle::Paused,
            "archived" | "archive" => Lifecycle::Archived,
            other => {
                return Err(ApiError::invalid("lifecycle", format!("{other:?}: use active (resume), paused or archived")).into());
            }
        };
        self.journey(&req.id).await?;
        self.shards.set_lifecycle(&req.id, lifecycle).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::SetLifecycleResponse { id: req.id, lifecycle: lifecycle.as_str().to_string() }))
    }

    async fn enroll(&self, request: Request<v1::EnrollRequest>) -> Result<Response<v1::EnrollResponse>, Status> {
        let req = request.into_inner();
        let j = self.journey(&req.journey).await?;
        if !matches!(j.def.entry.trigger, chorus_engine::journey::Trigger::Api) {
            return Err(ApiError::invalid(
                "journey",
                format!("journey {:?} enters on {:?}, not by API: give it `entry: {{ api: true }}`", j.id, j.def.entry.trigger),
            )
            .into());
        }
        if j.lifecycle != chorus_engine::journey::run::Lifecycle::Active {
            return Err(ApiError::invalid("journey", format!("journey {:?} is {}: resume it to enroll customers", j.id, j.lifecycle.as_str())).into());
        }
        let mut properties = match req.properties_json.trim() {
            "" => serde_json::Map::new(),
            text => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Object(m)) => m,
                _ => {
                    return Err(ApiError::invalid("properties_json", "must be a JSON object").into());
                }
            },
        };
        properties.insert("journey".into(), serde_json::Value::String(j.id.clone()));
        let id = self.resolve_ref(req.profile).await?;
        let (state, _) =
            self.shards.customer_following_merges(id).await.map_err(ApiError::from)?.ok_or_else(|| ApiError::NotFound(format!("no customer {id}")))?;
        let request_id =
            if req.request_id.trim().is_empty() { format!("{}-{}-{}", j.id, state.id, self.shards.now_ms()) } else { req.request_id.trim().to_string() };
        let input = chorus_types::EventInput {
            message_id: format!("enroll/{request_id}"),
            name: chorus_engine::journey::run::ENROLL_EVENT.into(),
            properties,
            ..Default::default()
        };
        convert::ingest_as_customer(&self.shards, &state, input, None).await?;
        Ok(Response::new(v1::EnrollResponse { customer_id: state.id.to_string(), journey: j.id }))
    }
}

#[tonic::async_trait]
impl v1::audiences_server::Audiences for Services {
    async fn apply(&self, request: Request<v1::ApplyAudienceRequest>) -> Result<Response<v1::ApplyAudienceResponse>, Status> {
        let req = request.into_inner();
        let file = if req.file_name.is_empty() { "audience".to_string() } else { req.file_name };
        let def = chorus_engine::audience::parse_audience(&req.source).map_err(|diags| {
            let lines: Vec<String> = diags.iter().map(|d| format!("{file}:{d}")).collect();
            ApiError::invalid("source", format!("the audience is not valid:\n{}", lines.join("\n")))
        })?;
        let known = self.shards.audiences().await;
        if !known.iter().any(|a| a.def.id == def.id) && known.len() >= chorus_engine::audience::AUDIENCES_MAX {
            return Err(ApiError::invalid(
                "source",
                format!("this cluster already has {} audiences, the most it evaluates", chorus_engine::audience::AUDIENCES_MAX),
            )
            .into());
        }
        let (version, evaluated) = self.shards.publish_audience(&def).await.map_err(ApiError::from)?;
        let (counts, _) = self.shards.audience_members(&def.id, 0).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::ApplyAudienceResponse { id: def.id, version, evaluated, members: counts.iter().map(|(_, n)| n).sum() }))
    }

    async fn list(&self, _: Request<v1::ListAudiencesRequest>) -> Result<Response<v1::ListAudiencesResponse>, Status> {
        let mut audiences = Vec::new();
        for a in self.shards.audiences().await {
            let (counts, _) = self.shards.audience_members(&a.def.id, 0).await.map_err(ApiError::from)?;
            audiences.push(v1::AudienceSummary {
                id: a.def.id.clone(),
                version: a.version,
                name: a.def.name.clone(),
                description: a.def.description.clone(),
                condition: a.def.condition.clone(),
                members: counts.iter().map(|(_, n)| n).sum(),
            });
        }
        Ok(Response::new(v1::ListAudiencesResponse { audiences }))
    }

    async fn count(&self, request: Request<v1::AudienceCountRequest>) -> Result<Response<v1::AudienceCountResponse>, Status> {
        let id = request.into_inner().id;
        self.audience(&id).await?;
        let (counts, _) = self.shards.audience_members(&id, 0).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::AudienceCountResponse {
            id,
            count: counts.iter().map(|(_, n)| n).sum(),
            per_shard: counts.into_iter().map(|(shard, count)| v1::ShardCount { shard, count }).collect(),
        }))
    }

    async fn preview(&self, request: Request<v1::AudiencePreviewRequest>) -> Result<Response<v1::AudiencePreviewResponse>, Status> {
        let req = request.into_inner();
        self.audience(&req.id).await?;
        let limit = if req.limit == 0 { 10 } else { req.limit.min(1000) } as usize;
        let (counts, ids) = self.shards.audience_members(&req.id, limit).await.map_err(ApiError::from)?;
        let mut members = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(state) = self.shards.customer(id).await.map_err(ApiError::from)? {
                members.push(v1::AudienceMember {
                    customer_id: state.id.to_string(),
                    identities: state.identities.iter().map(|i| v1::Identity { kind: i.kind.as_str().to_string(), value: i.value.clone() }).collect(),
                });
            }
        }
        Ok(Response::new(v1::AudiencePreviewResponse { id: req.id, count: counts.iter().map(|(_, n)| n).sum(), members }))
    }
}

impl Services {
    async fn audience(&self, id: &str) -> Result<(), Status> {
        if self.shards.audiences().await.iter().any(|a| a.def.id == id) {
            Ok(())
        } else {
            Err(ApiError::NotFound(format!("no audience {id:?}: see `chorusctl audience list`")).into())
        }
    }
}

impl Services {
    async fn journey(&self, id: &str) -> Result<chorus_shard::apply::JourneyInfo, Status> {
        self.shards
            .journeys()
            .await
            .map_err(ApiError::from)?
            .into_iter()
            .find(|j| j.id == id)
            .ok_or_else(|| ApiError::NotFound(format!("no journey {id:?}: see `chorusctl journey list`")).into())
    }
}

fn summary(j: &chorus_shard::apply::JourneyInfo) -> v1::JourneySummary {
    v1::JourneySummary {
        id: j.id.clone(),
        version: j.version,
        name: j.def.name.clone(),
        category: j.def.category.as_str().to_string(),
        priority: j.def.priority as u32,
        entry: format!("{:?}", j.def.entry.trigger),
        steps: j.def.steps.len() as u32,
        lifecycle: j.lifecycle.as_str().to_string(),
        versions: j.versions.clone(),
    }
}

#[tonic::async_trait]
impl v1::settings_server::Settings for Services {
    async fn get(&self, _: Request<v1::GetSettingsRequest>) -> Result<Response<v1::SettingsResponse>, Status> {
        let s = self.shards.settings().await.map_err(ApiError::from)?;
        Ok(Response::new(settings_response(&s)))
    }

    async fn put(&self, request: Request<v1::PutSettingsRequest>) -> Result<Response<v1::SettingsResponse>, Status> {
        let req = request.into_inner();
        let file = if req.file_name.is_empty() { "settings".to_string() } else { req.file_name };
        let settings = chorus_engine::settings::parse_settings(&req.source).map_err(|diags| {
            let lines: Vec<String> = diags.iter().map(|d| format!("{file}:{d}")).collect();
            ApiError::invalid("source", format!("the settings are not valid:\n{}", lines.join("\n")))
        })?;
        self.shards.put_settings(&settings).await.map_err(ApiError::from)?;
        Ok(Response::new(settings_response(&settings)))
    }
}

fn settings_response(s: &chorus_engine::guard::Settings) -> v1::SettingsResponse {
    v1::SettingsResponse { text: chorus_engine::settings::format_settings(s), json: chorus_engine::settings::settings_json(s).to_string() }
}

#[tonic::async_trait]
impl v1::templates_server::Templates for Services {
    async fn apply(&self, request: Request<v1::ApplyTemplateRequest>) -> Result<Response<v1::ApplyTemplateResponse>, Status> {
        let req = request.into_inner();
        let file = if req.file_name.is_empty() { "template".to_string() } else { req.file_name };
        let t = chorus_templates::parse(&req.source, &file).map_err(|diags| {
            let lines: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
            ApiError::invalid("source", format!("the template is not valid:\n{}", lines.join("\n")))
        })?;
        let version = self.shards.publish_template(t.id(), &req.source, &file).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::ApplyTemplateResponse { id: t.id().to_string(), version }))
    }

    async fn list(&self, _: Request<v1::ListTemplatesRequest>) -> Result<Response<v1::ListTemplatesResponse>, Status> {
        let mut templates = Vec::new();
        for (id, version, file, _) in self.shards.templates().await.map_err(ApiError::from)? {
            let Some(t) = self.shards.template(&id).await else {
                continue;
            };
            templates.push(v1::TemplateSummary {
                id,
                version,
                name: t.name().to_string(),
                category: t.category().as_str().to_string(),
                channels: t.channels().iter().map(|c| c.to_string()).collect(),
                locales: t.locales().iter().map(|l| l.to_string()).collect(),
                file,
            });
        }
        Ok(Response::new(v1::ListTemplatesResponse { templates }))
    }
}

/// In-app messages of a customer for a placement (shared by gRPC and HTTP).
pub async fn content(shards: &chorus_shard::Shards, id: chorus_types::CustomerId, placement: &str) -> Result<v1::ContentResponse, ApiError> {
    let (state, _) = shards.customer_following_merges(id).await.map_err(ApiError::from)?.ok_or_else(|| ApiError::NotFound(format!("no customer {id}")))?;
    let placement = if placement.is_empty() { "default" } else { placement };
    let messages = chorus_engine::inbox::visible(&state, placement, shards.now_ms())
        .into_iter()
        .map(|m| v1::InAppMessage {
            key: m.key.clone(),
            placement: m.placement.clone(),
            template: m.template.clone(),
            journey: m.journey.clone(),
            created_ms: m.created_ms,
            expires_ms: m.expires_ms,
            viewed: m.viewed,
            content_json: m.content.clone(),
        })
        .collect();
    Ok(v1::ContentResponse { customer_id: state.id.to_string(), messages })
}

#[tonic::async_trait]
impl v1::content_server::Content for Services {
    async fn get(&self, request: Request<v1::ContentRequest>) -> Result<Response<v1::ContentResponse>, Status> {
        let req = request.into_inner();
        let id = self.resolve_ref(req.profile).await?;
        Ok(Response::new(content(&self.shards, id, &req.placement).await?))
    }
}

fn member_status(m: &chorus_placement::Member) -> v1::NodeStatus {
    v1::NodeStatus {
        node_id: m.id,
        grpc_addr: m.grpc_addr.clone(),
        http_addr: m.http_addr.clone(),
        cluster_addr: m.addr.clone(),
        draining: m.draining,
        ..Default::default()
    }
}

fn node_status(n: &chorus_shard::cluster::NodeStatus) -> v1::NodeStatus {
    let mut s = n.member.as_ref().map(member_status).unwrap_or_default();
    s.node_id = n.node;
    s.version = n.version.clone();
    s.healthy = n.healthy;
    s.shards_led = n.shards_led;
    s.shards_followed = n.shards_followed;
    s.lag_max = n.lag_max;
    s
}

fn move_plan(m: &chorus_placement::Move) -> v1::ShardMovePlan {
    v1::ShardMovePlan { shard: m.shard, from: m.from, to: m.to }
}
