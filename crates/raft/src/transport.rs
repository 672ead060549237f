//! The node-to-node transport: one tonic (HTTP/2) connection per node pair carries the
//! raft RPCs of every group hosted on both nodes (openraft-multi's `GroupRouter`),
//! streamed snapshots with a SHA-256 check, and node-level calls (forwarded ingest,
//! proposals and reads) whose payloads belong to the caller. Mutual TLS (rustls) when
//! configured: a peer without a certificate signed by the cluster's CA cannot connect.
//! It decides nothing: routing and retries are the callers'.

use crate::TypeConfig;
use chorus_proto::internal::node_client::NodeClient;
use chorus_proto::internal::node_server::{Node as NodeService, NodeServer};
use chorus_proto::internal::{CallReply, CallRequest, RaftKind, RaftReply, RaftRequest, SnapshotChunk};
use chorus_types::NodeId;
use futures::future::BoxFuture;
use openraft::OptionalSend;
use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse};
use openraft_multi::GroupRouter;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

pub(crate) type Raft = openraft::Raft<TypeConfig, crate::state_machine::StateMachine>;

/// Bytes of snapshot data per streamed chunk.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 1 << 20;
/// Largest snapshot a node accepts (a larger one is refused, never buffered).
pub const SNAPSHOT_BYTES_MAX: u64 = 8 << 30;
/// Largest node-to-node message (a batch of forwarded events, an append).
pub const MESSAGE_BYTES_MAX: usize = 256 << 20;

/// PEM material for mutual TLS between nodes.
#[derive(Clone, Debug)]
pub struct TlsMaterial {
    /// The cluster CA that signs every node's certificate.
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// The name peers' certificates must carry (default: the host part of the address
    /// dialled).
    pub server_name: Option<String>,
}

/// Decides whether this node may reach the node at an address (node id 0 when the
/// caller does not know it): a fault injector for simulations, consulted before every
/// raft RPC, snapshot stream and node-level call. `false` fails the attempt as if the
/// peer were unreachable.
pub type FaultGate = Arc<dyn Fn(NodeId, &str) -> bool + Send + Sync>;

/// Serves node-level calls (the payload format is the handler's).
pub trait CallHandler: Send + Sync + 'static {
    fn call(&self, from: NodeId, payload: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, String>>;
}

/// Why a node-to-node call failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("node {node} has no known address")]
    UnknownNode { node: NodeId },
    #[error("node {node} ({addr}) is unreachable: {detail}")]
    Unreachable { node: NodeId, addr: String, detail: String },
    #[error("node {node} refused the call: {detail}")]
    Remote { node: NodeId, detail: String },
    #[error("bad address {addr:?}: {detail}")]
    BadAddress { addr: String, detail: String },
    #[error("tls: {0}")]
    Tls(String),
}

struct Inner {
    node: NodeId,
    tls: Option<TlsMaterial>,
    addrs: RwLock<HashMap<NodeId, String>>,
    channels: RwLock<HashMap<String, Channel>>,
    groups: RwLock<HashMap<u32, Raft>>,
    handler: OnceLock<Arc<dyn CallHandler>>,
    gate: OnceLock<FaultGate>,
    call_timeout: Duration,
    snapshots_sent: std::sync::atomic::AtomicU64,
    snapshots_received: std::sync::atomic::AtomicU64,
}

/// The node's transport. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl Transport {
    pub fn new(node: NodeId, tls: Option<TlsMaterial>) -> Transport {
        Transport {
            inner: Arc::new(Inner {
                node,
                tls,
                addrs: RwLock::default(),
                channels: RwLock::default(),
                groups: RwLock::default(),
                handler: OnceLock::new(),
                gate: OnceLock::new(),
                call_timeout: Duration::from_secs(10),
                snapshots_sent: Default::default(),
                snapshots_received: Default::default(),
            }),
        }
    }

    pub fn node(&self) -> NodeId {
        self.inner.node
    }

    /// Snapshots this node streamed to others and installed from others, since start.
    pub fn snapshot_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.inner.snapshots_sent.load(Relaxed), self.inner.snapshots_received.load(Relaxed))
    }

    /// Where node `node` is reached (from the placement state or raft membership).
    pub fn set_address(&self, node: NodeId, addr: &str) {
        let mut addrs = self.inner.addrs.write().expect("addrs lock");
        if addrs.get(&node).map(String::as_str) != Some(addr) {
            addrs.insert(node, addr.to_string());
        }
    }

    pub fn address(&self, node: NodeId) -> Option<String> {
        self.inner.addrs.read().expect("addrs lock").get(&node).cloned()
    }

    /// Install the handler of node-level calls (once).
    pub fn set_handler(&self, handler: Arc<dyn CallHandler>) {
        let _ = self.inner.handler.set(handler);
    }

    /// Install a fault gate (once; simulations only: a real node never has one).
    pub fn set_fault_gate(&self, gate: FaultGate) {
        let _ = self.inner.gate.set(gate);
    }

    /// Refuse the attempt when the fault gate cuts this node off from `node` at `addr`.
    fn gate(&self, node: NodeId, addr: &str) -> Result<(), TransportError> {
        match self.inner.gate.get() {
            Some(allowed) if !allowed(node, addr) => {
                Err(TransportError::Unreachable { node, addr: addr.to_string(), detail: "cut off by the fault gate".into() })
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn register(&self, group: u32, raft: Raft) {
        self.inner.groups.write().expect("groups lock").insert(group, raft);
    }

    pub(crate) fn unregister(&self, group: u32) {
        self.inner.groups.write().expect("groups lock").remove(&group);
    }

    fn raft(&self, group: u32) -> Result<Raft, tonic::Status> {
        self.inner
            .groups
            .read()
            .expect("groups lock")
            .get(&group)
            .cloned()
            .ok_or_else(|| tonic::Status::unavailable(format!("node {} does not host group {group}", self.inner.node)))
    }

    fn channel(&self, addr: &str) -> Result<Channel, TransportError> {
        if let Some(c) = self.inner.channels.read().expect("channels lock").get(addr) {
            return Ok(c.clone());
        }
        let scheme = if self.inner.tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| TransportError::BadAddress { addr: addr.to_string(), detail: e.to_string() })?
            // A peer that stopped (SIGSTOP) or lost its link is noticed within ~5 s. Not
            // sooner: on a starved machine a ping answered late would drop a healthy
            // connection and every group's heartbeats with it. Forwarded ingest does not
            // wait for this: it re-routes as soon as the shard elects (`ingest_shard`).
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.inner.tls {
            let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr).trim_matches(['[', ']']);
            let name = tls.server_name.clone().unwrap_or_else(|| host.to_string());
            let cfg = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
                .domain_name(name);
            ep = ep.tls_config(cfg).map_err(|e| TransportError::Tls(e.to_string()))?;
        }
        let channel = ep.connect_lazy();
        self.inner.channels.write().expect("channels lock").insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    fn client_for(&self, node: NodeId) -> Result<(NodeClient<Channel>, String), TransportError> {
        let addr = self.address(node).ok_or(TransportError::UnknownNode { node })?;
        self.gate(node, &addr)?;
        Ok((self.client_at(&addr)?, addr))
    }

    fn client_at(&self, addr: &str) -> Result<NodeClient<Channel>, TransportError> {
        let ch = self.channel(addr)?;
        Ok(NodeClient::new(ch).max_decoding_message_size(MESSAGE_BYTES_MAX).max_encoding_message_size(MESSAGE_BYTES_MAX))
    }

    /// A node-level call to node `to`.
    pub async fn call(&self, to: NodeId, payload: Vec<u8>) -> Result<Vec<u8>, TransportError> {
        let (client, addr) = self.client_for(to)?;
        self.call_with(client, to, &addr, payload).await
    }

    /// A node-level call to whatever node listens at `addr` (joining, discovery).
    pub async fn call_addr(&self, addr: &str, payload: Vec<u8>) -> Result<Vec<u8>, TransportError> {
        self.gate(0, addr)?;
        let client = self.client_at(addr)?;
        self.call_with(client, 0, addr, payload).await
    }

    async fn call_with(&self, mut client: NodeClient<Channel>, node: NodeId, addr: &str, payload: Vec<u8>) -> Result<Vec<u8>, TransportError> {
        let mut req = tonic::Request::new(CallRequest { from: self.inner.node, payload });
        req.set_timeout(self.inner.call_timeout);
        // The header tells the server; the client enforces it too (a stopped peer
        // keeps its connections open and never answers).
        match tokio::time::timeout(self.inner.call_timeout, client.call(req)).await {
            Ok(Ok(r)) => Ok(r.into_inner().payload),
            Ok(Err(s)) => Err(status_error(node, addr, s)),
            Err(_) => Err(TransportError::Unreachable { node, addr: addr.to_string(), detail: format!("no answer within {:?}", self.inner.call_timeout) }),
        }
    }

    /// Serve the node-to-node protocol on `listener` until `shutdown` resolves.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), TransportError> {
        let mut server = tonic::transport::Server::builder().tcp_nodelay(true);
        if let Some(tls) = &self.inner.tls {
            let cfg = ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem)).client_ca_root(Certificate::from_pem(&tls.ca_pem));
            server = server.tls_config(cfg).map_err(|e| TransportError::Tls(e.to_string()))?;
        }
        let svc =
            NodeServer::new(Service { transport: self.clone() }).max_decoding_message_size(MESSAGE_BYTES_MAX).max_encoding_message_size(MESSAGE_BYTES_MAX);
        server
            .add_service(svc)
            .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
            .await
            .map_err(|e| TransportError::Remote { node: self.inner.node, detail: e.to_string() })
    }

    async fn raft_rpc<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        group: u32,
        kind: RaftKind,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let (mut client, addr) = self.client_for(target).map_err(|e| RPCError::Unreachable(Unreachable::from_string(e)))?;
        let payload = chorus_types::encoding::encode(req);
        let mut request = tonic::Request::new(RaftRequest { group, kind: kind as i32, from: self.inner.node, payload });
        request.set_timeout(timeout);
        let reply = match tokio::time::timeout(timeout, client.raft(request)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) => return Err(rpc_error(target, &addr, s)),
            Err(_) => {
                return Err(RPCError::Unreachable(Unreachable::from_string(format!("node {target} ({addr}) did not answer within {timeout:?}"))));
            }
        };
        if !reply.error.is_empty() {
            return Err(RPCError::Unreachable(Unreachable::from_string(format!("node {target}: {}", reply.error))));
        }
        chorus_types::encoding::decode(&reply.payload)
            .map_err(|e| RPCError::Network(NetworkError::from_string(format!("node {target} sent an undecodable reply: {e}"))))
    }
}

fn status_error(node: NodeId, addr: &str, s: tonic::Status) -> TransportError {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled | tonic::Code::Unknown => {
            TransportError::Unreachable { node, addr: addr.to_string(), detail: s.message().to_string() }
        }
        _ => TransportError::Remote { node, detail: s.message().to_string() },
    }
}

fn rpc_error(node: NodeId, addr: &str, s: tonic::Status) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(status_error(node, addr, s)))
}

impl GroupRouter<TypeConfig, u32> for Transport {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &self,
        target: NodeId,
        group: u32,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_rpc(target, group, RaftKind::Append, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &self,
        target: NodeId,
        group: u32,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_rpc(target, group, RaftKind::Vote, &rpc, option.hard_ttl()).await
    }

    async fn pre_vote(
        &self,
        target: NodeId,
        group: u32,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_rpc(target, group, RaftKind::PreVote, &rpc, option.hard_ttl()).await
    }

    async fn transfer_leader(
        &self,
        target: NodeId,
        group: u32,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_rpc(target, group, RaftKind::TransferLeader, &req, option.hard_ttl()).await
    }

    async fn full_snapshot(
        &self,
        target: NodeId,
        group: u32,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, Vec<u8>>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let (mut client, addr) = self.client_for(target).map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e)))?;
        let header = chorus_types::encoding::encode(&(vote, snapshot.meta.clone()));
        let data = Arc::new(snapshot.snapshot);
        let sha = Sha256::digest(data.as_slice()).to_vec();
        let total = data.len() as u64;
        let from = self.inner.node;
        let chunks: Vec<SnapshotChunk> = {
            let mut out = Vec::new();
            let mut offset = 0usize;
            loop {
                let end = (offset + SNAPSHOT_CHUNK_BYTES_MAX).min(data.len());
                let last = end == data.len();
                out.push(SnapshotChunk {
                    group,
                    from,
                    header: if offset == 0 { header.clone() } else { Vec::new() },
                    total_bytes: total,
                    offset: offset as u64,
                    data: data[offset..end].to_vec(),
                    sha256: if last { sha.clone() } else { Vec::new() },
                    last,
                });
                if last {
                    break;
                }
                offset = end;
            }
            out
        };
        tracing::info!(group, target, bytes = total, chunks = chunks.len(), "streaming a snapshot");
        let send = client.install_snapshot(tokio_stream::iter(chunks));
        let reply = tokio::select! {
            r = send => r,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        let reply = reply.map_err(|s| StreamingError::Unreachable(Unreachable::from_string(status_error(target, &addr, s))))?.into_inner();
        if !reply.error.is_empty() {
            return Err(StreamingError::Unreachable(Unreachable::from_string(format!("node {target}: {}", reply.error))));
        }
        self.inner.snapshots_sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        chorus_types::encoding::decode(&reply.payload)
            .map_err(|e| StreamingError::Network(NetworkError::from_string(format!("node {target} sent an undecodable reply: {e}"))))
    }
}

struct Service {
    transport: Transport,
}

fn reply<T: Serialize, E: std::fmt::Display>(r: Result<T, E>) -> RaftReply {
    match r {
        Ok(v) => RaftReply { payload: chorus_types::encoding::encode(&v), error: String::new() },
        Err(e) => RaftReply { payload: Vec::new(), error: e.to_string() },
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, tonic::Status> {
    chorus_types::encoding::decode(bytes).map_err(|e| tonic::Status::invalid_argument(format!("undecodable raft message: {e}")))
}

#[tonic::async_trait]
impl NodeService for Service {
    async fn raft(&self, request: tonic::Request<RaftRequest>) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        let req = request.into_inner();
        let raft = match self.transport.raft(req.group) {
            Ok(r) => r,
            Err(s) => {
                return Ok(tonic::Response::new(RaftReply { payload: Vec::new(), error: s.message().to_string() }));
            }
        };
        let out = match RaftKind::try_from(req.kind).unwrap_or(RaftKind::Unspecified) {
            RaftKind::Append => reply(raft.append_entries(decode(&req.payload)?).await),
            RaftKind::Vote => reply(raft.vote(decode(&req.payload)?).await),
            RaftKind::PreVote => reply(raft.pre_vote(decode(&req.payload)?).await),
            RaftKind::TransferLeader => reply(raft.handle_transfer_leader(decode(&req.payload)?).await),
            RaftKind::Unspecified => {
                return Err(tonic::Status::invalid_argument(format!("unknown raft message kind {}", req.kind)));
            }
        };
        Ok(tonic::Response::new(out))
    }

    async fn install_snapshot(&self, request: tonic::Request<tonic::Streaming<SnapshotChunk>>) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        let mut stream = request.into_inner();
        let mut header: Option<(VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>)> = None;
        let mut group = None;
        let mut data: Vec<u8> = Vec::new();
        let mut hasher = Sha256::new();
        let mut done = false;
        while let Some(chunk) = stream.message().await? {
            if chunk.offset != data.len() as u64 {
                return Err(tonic::Status::invalid_argument(format!("snapshot chunk at offset {} but {} bytes received", chunk.offset, data.len())));
            }
            if header.is_none() {
                if chunk.header.is_empty() {
                    return Err(tonic::Status::invalid_argument("the first snapshot chunk has no header"));
                }
                if chunk.total_bytes > SNAPSHOT_BYTES_MAX {
                    return Err(tonic::Status::resource_exhausted(format!("snapshot of {} bytes exceeds {SNAPSHOT_BYTES_MAX}", chunk.total_bytes)));
                }
                header = Some(decode(&chunk.header)?);
                group = Some(chunk.group);
                data.reserve(chunk.total_bytes as usize);
            }
            if data.len() as u64 + chunk.data.len() as u64 > chunk.total_bytes {
                return Err(tonic::Status::invalid_argument("snapshot chunks exceed the announced size"));
            }
            hasher.update(&chunk.data);
            data.extend_from_slice(&chunk.data);
            if chunk.last {
                if data.len() as u64 != chunk.total_bytes {
                    return Err(tonic::Status::invalid_argument(format!("snapshot ended at {} of {} bytes", data.len(), chunk.total_bytes)));
                }
                let sha = hasher.clone().finalize();
                if sha.as_slice() != chunk.sha256.as_slice() {
                    return Err(tonic::Status::data_loss("snapshot checksum mismatch: the data was corrupted in transit"));
                }
                done = true;
                break;
            }
        }
        let (Some((vote, meta)), Some(group), true) = (header, group, done) else {
            return Err(tonic::Status::invalid_argument("the snapshot stream ended before its last chunk"));
        };
        let raft = match self.transport.raft(group) {
            Ok(r) => r,
            Err(s) => {
                return Ok(tonic::Response::new(RaftReply { payload: Vec::new(), error: s.message().to_string() }));
            }
        };
        tracing::info!(group, bytes = data.len(), "installing a streamed snapshot");
        let r = raft.install_full_snapshot(vote, SnapshotOf::<TypeConfig, Vec<u8>> { meta, snapshot: data }).await;
        if r.is_ok() {
            self.transport.inner.snapshots_received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(tonic::Response::new(reply(r)))
    }

    async fn call(&self, request: tonic::Request<CallRequest>) -> Result<tonic::Response<CallReply>, tonic::Status> {
        let req = request.into_inner();
        let Some(handler) = self.transport.inner.handler.get().cloned() else {
            return Err(tonic::Status::unavailable(format!("node {} is starting", self.transport.inner.node)));
        };
        match handler.call(req.from, req.payload).await {
            Ok(payload) => Ok(tonic::Response::new(CallReply { payload })),
            Err(e) => Err(tonic::Status::failed_precondition(e)),
        }
    }
}
