//! One request per batch, for services that post events one at a time (SPEC §12 "one
//! event per request"): each of C concurrent clients sends `Ingest.Send` (unary gRPC,
//! one HTTP/2 connection each) or Segment `POST /v1/track` / `/v1/batch` (HTTP/1.1
//! keep-alive, one connection each), waits for the answer, and sends the next — closed
//! loop, or paced open loop. Latency is from send (or the scheduled send) to the answer.
//! Shares the tally and timeline of the streaming client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_proto::v1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

use crate::client::{Shared, Timeline};
use crate::scenario::{Loop, Scenario};
use crate::workload::Generator;

/// Longest HTTP answer read (headers and body).
const HTTP_ANSWER_BYTES_MAX: usize = 4 * 1024 * 1024;
/// `Basic base64("loadtest:")`: a node that never had a write key accepts any.
const BASIC_AUTH: &str = "Basic bG9hZHRlc3Q6";

/// When a client's requests go: at fixed intervals (open loop, staggered across the
/// clients), or each as soon as the previous one is answered (closed loop).
struct Pacer(Option<(Instant, Duration)>);

impl Pacer {
    fn new(sc: &Scenario, index: usize, tl: &Timeline) -> Pacer {
        Pacer(match sc.pacing {
            Loop::Open { events_per_s } => {
                let interval = Duration::from_secs_f64(sc.batch as f64 * sc.streams as f64 / events_per_s);
                Some((tl.start + interval.mul_f64(index as f64 / sc.streams as f64), interval))
            }
            Loop::Closed => None,
        })
    }

    /// Wait for the next request's time and return it (latency counts from it).
    async fn next(&mut self) -> Instant {
        match self.0.as_mut() {
            Some((due, interval)) => {
                tokio::time::sleep_until((*due).into()).await;
                let at = *due;
                *due += *interval;
                at
            }
            None => Instant::now(),
        }
    }
}

/// Unary `Ingest.Send` requests of `sc.batch` events until the window ends.
pub async fn drive_grpc(index: usize, channel: Channel, sc: Arc<Scenario>, run_id: u64, tl: Timeline, shared: Arc<Shared>) {
    let mut generator = Generator::new(&sc.workload, run_id, index as u64);
    let mut client = v1::ingest_client::IngestClient::new(channel);
    let mut pace = Pacer::new(&sc, index, &tl);
    let mut batch_id = (index as u64) << 40;
    loop {
        let sent = pace.next().await;
        if sent >= tl.measure_end {
            return;
        }
        let events = generator.batch(sc.batch);
        let n = events.len() as u64;
        batch_id += 1;
        crate::client::note_sent(&shared, &tl, sent, n);
        match client.send(v1::IngestRequest { batch_id, events }).await {
            Ok(r) => crate::client::note_answer(&shared, &tl, &r.into_inner(), sent, n, Instant::now()),
            Err(status) => crate::client::note_failure(&shared, n, format!("client {index}: Ingest.Send: {status}")),
        }
    }
}

/// The Segment call for one generated event: `userId` / `anonymousId` from its
/// identities (an event that names only an email uses it as `userId`, since Segment
/// requires one of the two), the email under `context.traits`.
fn segment_call(e: &v1::Event) -> serde_json::Value {
    let id = |k: &str| e.identities.iter().find(|i| i.kind == k).map(|i| i.value.clone());
    let properties: serde_json::Value = serde_json::from_str(&e.properties_json).unwrap_or_else(|_| serde_json::json!({}));
    let mut call = serde_json::json!({"type": "track", "messageId": e.message_id, "event": e.name, "properties": properties});
    let (user, anon, email) = (id("user_id"), id("anonymous_id"), id("email"));
    match (&user, &anon) {
        (None, None) => call["userId"] = serde_json::json!(email.clone().unwrap_or_default()),
        _ => {
            if let Some(u) = user {
                call["userId"] = serde_json::json!(u);
            }
            if let Some(a) = anon {
                call["anonymousId"] = serde_json::json!(a);
            }
        }
    }
    if let Some(m) = email {
        call["context"] = serde_json::json!({"traits": {"email": m}});
    }
    call
}

/// Segment requests (`/v1/track` for one event, `/v1/batch` for more) on one keep-alive
/// HTTP/1.1 connection to `http_addr` until the window ends.
pub async fn drive_http(index: usize, http_addr: String, sc: Arc<Scenario>, run_id: u64, tl: Timeline, shared: Arc<Shared>) {
    let mut generator = Generator::new(&sc.workload, run_id, index as u64);
    let mut pace = Pacer::new(&sc, index, &tl);
    let mut conn: Option<tokio::net::TcpStream> = None;
    loop {
        let sent = pace.next().await;
        if sent >= tl.measure_end {
            return;
        }
        let events = generator.batch(sc.batch);
        let n = events.len() as u64;
        let (path, body) = if events.len() == 1 {
            ("/v1/track", segment_call(&events[0]).to_string())
        } else {
            ("/v1/batch", serde_json::json!({"batch": events.iter().map(segment_call).collect::<Vec<_>>()}).to_string())
        };
        crate::client::note_sent(&shared, &tl, sent, n);
        let answer = async {
            if conn.is_none() {
                let s = tokio::net::TcpStream::connect(&http_addr).await.map_err(|e| format!("connect {http_addr}: {e}"))?;
                s.set_nodelay(true).ok();
                conn = Some(s);
            }
            let s = conn.as_mut().expect("connected");
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: {http_addr}\r\nContent-Type: application/json\r\nAuthorization: {BASIC_AUTH}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
            s.write_all(body.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
            read_answer(s).await
        };
        match answer.await {
            Ok((200, json)) => {
                let results = json["results"].as_array().cloned().unwrap_or_default();
                let status = |s: &str| match s {
                    "accepted" => v1::EventStatus::Accepted,
                    "duplicate" => v1::EventStatus::Duplicate,
                    "retry" => v1::EventStatus::Retry,
                    _ => v1::EventStatus::Rejected,
                };
                let resp = v1::IngestResponse {
                    batch_id: 0,
                    results: results
                        .iter()
                        .enumerate()
                        .map(|(i, r)| v1::EventResult {
                            index: i as u32,
                            status: status(r["status"].as_str().unwrap_or("")) as i32,
                            customer_id: r["customer_id"].as_str().unwrap_or("").to_string(),
                            field: r["field"].as_str().unwrap_or("").to_string(),
                            error: r["message"].as_str().or(r["error"].as_str()).unwrap_or("").to_string(),
                        })
                        .collect(),
                    error: None,
                };
                crate::client::note_answer(&shared, &tl, &resp, sent, n, Instant::now());
            }
            Ok((status, json)) => {
                conn = None;
                crate::client::note_failure(&shared, n, format!("client {index}: POST {path}: {status} {json}"));
            }
            Err(e) => {
                conn = None;
                crate::client::note_failure(&shared, n, format!("client {index}: POST {path}: {e}"));
            }
        }
    }
}

/// One HTTP/1.1 answer with a `Content-Length` body: (status, body as JSON).
async fn read_answer(s: &mut tokio::net::TcpStream) -> Result<(u16, serde_json::Value), String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).map_err(|_| "headers are not UTF-8".to_string())?;
            let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("bad status line: {head:?}"))?;
            let len: usize = head
                .lines()
                .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case("content-length")).map(|(_, v)| v.trim().to_string()))
                .and_then(|v| v.parse().ok())
                .ok_or("no content-length")?;
            let total = end + 4 + len;
            while buf.len() < total {
                let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Err("the node closed the connection".into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let json = serde_json::from_slice(&buf[end + 4..total]).unwrap_or(serde_json::Value::Null);
            return Ok((status, json));
        }
        if buf.len() > HTTP_ANSWER_BYTES_MAX {
            return Err("answer too large".into());
        }
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the node closed the connection".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
