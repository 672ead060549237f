//! Bulk loading for the memory and timer scenarios: push a fixed, numbered sequence of
//! batches over C `Ingest.Stream`s (closed loop, a window of batches per stream) until
//! every event is acknowledged. Events the node asks to retry (overload) are sent again
//! after a short pause; message ids make a re-send safe. Unlike the W1 driver this one
//! measures no latency: its job is to get a known population into the node.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chorus_proto::v1;
use chorus_proto::v1::ingest_client::IngestClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Pause before re-sending events the node asked to retry.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Most times one event is re-sent after RETRY before the load gives up.
const RETRIES_MAX: u32 = 1_000;

/// What a bulk load did.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub events: u64,
    /// Events answered `RETRY` (then re-sent).
    pub retried: u64,
    pub seconds: f64,
}

impl Loaded {
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }
}

/// Send batches `0..batches` (made by `make(n)`) over one stream per channel with
/// `in_flight` batches outstanding per stream; return once all are acknowledged. Any
/// rejected event or broken stream fails the load with the node's reason.
pub async fn load<F>(label: &str, channels: &[Channel], batches: u64, in_flight: usize, make: F) -> anyhow::Result<Loaded>
where
    F: Fn(u64) -> Vec<v1::Event> + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let next = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, ch) in channels.iter().enumerate() {
        let (make, next, acked, retried) = (make.clone(), next.clone(), acked.clone(), retried.clone());
        let ch = ch.clone();
        tasks.push(tokio::spawn(async move { stream(i, ch, batches, in_flight.max(1), make, next, acked, retried).await }));
    }
    let progress = {
        let (acked, label) = (acked.clone(), label.to_string());
        tokio::spawn(async move {
            let mut last = 0u64;
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let now = acked.load(Ordering::Relaxed);
                eprintln!("[{:>6.0}s {label}] {now} events acknowledged ({:.0} ev/s)", started.elapsed().as_secs_f64(), (now - last) as f64 / 5.0);
                last = now;
            }
        })
    };
    let mut result = Ok(());
    for t in tasks {
        match t.await.context("a load stream panicked")? {
            Ok(()) => {}
            Err(e) if result.is_ok() => result = Err(e),
            Err(_) => {}
        }
    }
    progress.abort();
    result?;
    Ok(Loaded { events: acked.load(Ordering::Relaxed), retried: retried.load(Ordering::Relaxed), seconds: started.elapsed().as_secs_f64() })
}

#[allow(clippy::too_many_arguments)]
async fn stream<F>(
    index: usize,
    channel: Channel,
    batches: u64,
    in_flight: usize,
    make: Arc<F>,
    next: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
    retried: Arc<AtomicU64>,
) -> anyhow::Result<()>
where
    F: Fn(u64) -> Vec<v1::Event> + Send + Sync + 'static,
{
    let mut client = IngestClient::new(channel).max_decoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel::<v1::IngestRequest>(in_flight);
    let mut responses = client.stream(ReceiverStream::new(rx)).await.with_context(|| format!("stream {index}: open"))?.into_inner();
    let mut outstanding: HashMap<u64, Vec<v1::Event>> = HashMap::new();
    let mut again: Vec<v1::Event> = Vec::new();
    let mut attempts: HashMap<String, u32> = HashMap::new();
    let mut batch_id = (index as u64) << 40;
    loop {
        // Fill the window: re-sends first, then fresh batches.
        while outstanding.len() < in_flight {
            let events = if !again.is_empty() {
                tokio::time::sleep(RETRY_PAUSE).await;
                std::mem::take(&mut again)
            } else {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= batches {
                    break;
                }
                make(n)
            };
            if events.is_empty() {
                continue;
            }
            batch_id += 1;
            tx.send(v1::IngestRequest { batch_id, events: events.clone() }).await.map_err(|_| anyhow::anyhow!("stream {index}: the request side closed"))?;
            outstanding.insert(batch_id, events);
        }
        if outstanding.is_empty() {
            return Ok(()); // dropping the sender ends the stream
        }
        let resp = match responses.message().await {
            Ok(Some(r)) => r,
            Ok(None) => bail!("stream {index}: the node ended the stream with {} batches unanswered", outstanding.len()),
            Err(s) => bail!("stream {index}: {s}"),
        };
        let Some(events) = outstanding.remove(&resp.batch_id) else {
            bail!("stream {index}: a response for unknown batch {}", resp.batch_id);
        };
        if resp.results.len() != events.len() {
            bail!("stream {index}: batch {} of {} events got {} results", resp.batch_id, events.len(), resp.results.len());
        }
        let mut ok = 0;
        for (r, e) in resp.results.iter().zip(events) {
            match v1::EventStatus::try_from(r.status) {
                Ok(v1::EventStatus::Accepted | v1::EventStatus::Duplicate) => ok += 1,
                Ok(v1::EventStatus::Retry) => {
                    let n = attempts.entry(e.message_id.clone()).or_default();
                    *n += 1;
                    if *n > RETRIES_MAX {
                        bail!("stream {index}: event {} still answered RETRY after {RETRIES_MAX} attempts: {}", e.message_id, r.error);
                    }
                    retried.fetch_add(1, Ordering::Relaxed);
                    again.push(e);
                }
                _ => bail!("stream {index}: event {} rejected (field {:?}): {}", e.message_id, r.field, r.error),
            }
        }
        acked.fetch_add(ok, Ordering::Relaxed);
    }
}
