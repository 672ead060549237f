//! The load client: C concurrent `Ingest.Stream`s (one HTTP/2 connection each) that
//! send generated batches open- or closed-loop, match each response to its batch, and
//! record per-event ack latency (batch send → batch ack) in HDR histograms, plus a
//! progress line every second. Streams share only one small mutex-guarded tally,
//! touched once per batch, never per event.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use chorus_proto::v1;
use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio::time::sleep_until;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use v1::ingest_client::IngestClient;

use crate::procstat::Tracker;
use crate::scenario::{Loop, Scenario};
use crate::workload::Generator;

/// Largest latency the histograms hold (longer ones are clamped to it).
pub const LATENCY_US_MAX: u64 = 120_000_000;
/// How many error messages a report keeps verbatim.
pub const ERROR_SAMPLES_MAX: usize = 8;
/// Largest gRPC message accepted from the node.
const GRPC_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Pause before reopening a stream that failed.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(200);

/// When each phase begins and ends.
#[derive(Clone, Copy, Debug)]
pub struct Timeline {
    pub start: Instant,
    pub measure_start: Instant,
    pub measure_end: Instant,
    /// After `measure_end`, how long to wait for outstanding acks before calling the
    /// remaining events lost.
    pub drain: Duration,
}

impl Timeline {
    pub fn in_window(&self, t: Instant) -> bool {
        t >= self.measure_start && t < self.measure_end
    }
}

/// Everything counted during a run.
#[derive(Debug)]
pub struct Tally {
    /// Per-event ack latency (µs) of batches sent inside the measured window.
    pub latency: Histogram<u64>,
    /// Same, for batches sent during warm-up (progress lines only).
    pub warmup_latency: Histogram<u64>,
    pub batches_sent: u64,
    pub events_sent: u64,
    pub batches_answered: u64,
    /// Results by status, whole run.
    pub accepted: u64,
    pub duplicate: u64,
    pub rejected: u64,
    pub retry: u64,
    /// Events of answered batches that had no result.
    pub missing: u64,
    /// Events in flight on a stream that failed (never answered).
    pub failed: u64,
    /// Events still unanswered when the drain ended.
    pub lost: u64,
    pub stream_errors: u64,
    /// Responses naming a batch this stream did not have in flight.
    pub unknown_batches: u64,
    /// Accepted + duplicate results whose ack arrived inside the measured window.
    pub acked_in_window: u64,
    pub batches_sent_in_window: u64,
    pub error_samples: Vec<String>,
}

impl Tally {
    pub fn new() -> Tally {
        let h = || Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds");
        Tally {
            latency: h(),
            warmup_latency: h(),
            batches_sent: 0,
            events_sent: 0,
            batches_answered: 0,
            accepted: 0,
            duplicate: 0,
            rejected: 0,
            retry: 0,
            missing: 0,
            failed: 0,
            lost: 0,
            stream_errors: 0,
            unknown_batches: 0,
            acked_in_window: 0,
            batches_sent_in_window: 0,
            error_samples: Vec::new(),
        }
    }

    fn note_error(&mut self, msg: String) {
        if self.error_samples.len() < ERROR_SAMPLES_MAX {
            self.error_samples.push(msg);
        }
    }

    /// Events that did not end accepted or duplicate.
    pub fn errors(&self) -> u64 {
        self.rejected + self.retry + self.missing + self.failed + self.lost + self.stream_errors + self.unknown_batches
    }
}

/// State shared by the stream tasks and the progress printer.
pub struct Shared {
    pub tally: std::sync::Mutex<Tally>,
    pub acked_total: AtomicU64,
    pub in_flight_batches: AtomicUsize,
}

/// Open one HTTP/2 connection (retrying while the node comes up, within `deadline`).
pub async fn connect(endpoint: &str, deadline: Duration) -> anyhow::Result<Channel> {
    let ep = Endpoint::from_shared(endpoint.to_string())
        .with_context(|| format!("parse endpoint {endpoint}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5));
    let until = Instant::now() + deadline;
    loop {
        match ep.connect().await {
            Ok(ch) => return Ok(ch),
            Err(e) if Instant::now() < until => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("connect to {endpoint}")),
        }
    }
}

struct InFlight {
    /// Send time (closed loop) or scheduled send time (open loop).
    sent: Instant,
    events: u64,
}

/// Drive one stream until the measured window ends and its batches are answered (or the
/// drain bound passes).
pub async fn drive_stream(index: usize, channel: Channel, sc: Arc<Scenario>, run_id: u64, tl: Timeline, shared: Arc<Shared>) {
    let mut generator = Generator::new(&sc.workload, run_id, index as u64);
    // Batch ids are unique per stream; the high bits name the stream for debugging.
    let mut next_batch_id = (index as u64) << 40;
    let interval = match sc.pacing {
        Loop::Open { events_per_s } => Some(Duration::from_secs_f64(sc.batch as f64 * sc.streams as f64 / events_per_s)),
        Loop::Closed => None,
    };
    // Stagger open-loop streams across one interval so their batches interleave.
    let mut next_due = tl.start + interval.map(|i| i.mul_f64(index as f64 / sc.streams as f64)).unwrap_or_default();
    let drain_deadline = tl.measure_end + tl.drain;
    let far = tl.measure_end + tl.drain + Duration::from_secs(3600);

    'connect: loop {
        if Instant::now() >= tl.measure_end {
            break;
        }
        let mut client = IngestClient::new(channel.clone()).max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX);
        // Capacity = window: a batch enters the channel only while fewer than `in_flight`
        // are outstanding, so `try_send` never finds it full.
        let (tx, rx) = mpsc::channel::<v1::IngestRequest>(sc.in_flight);
        let mut responses = match client.stream(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                {
                    let mut t = shared.tally.lock().expect("tally lock");
                    t.stream_errors += 1;
                    t.note_error(format!("stream {index}: open: {status}"));
                }
                tokio::time::sleep(RECONNECT_BACKOFF).await;
                continue 'connect;
            }
        };
        let mut in_flight: HashMap<u64, InFlight> = HashMap::with_capacity(sc.in_flight * 2);
        let mut tx = Some(tx);
        loop {
            let now = Instant::now();
            let sending = now < tl.measure_end;
            if !sending {
                // Closing the request side tells the node no more batches come.
                tx = None;
                if in_flight.is_empty() {
                    break 'connect;
                }
            }
            let send_at = (sending && in_flight.len() < sc.in_flight).then(|| if interval.is_some() { next_due } else { now });
            tokio::select! {
                biased;
                msg = responses.message() => match msg {
                    Ok(Some(resp)) => {
                        let acked_at = Instant::now();
                        match in_flight.remove(&resp.batch_id) {
                            Some(b) => {
                                shared.in_flight_batches.fetch_sub(1, Ordering::Relaxed);
                                record_response(&shared, &tl, &resp, &b, acked_at);
                            }
                            None => {
                                let mut t = shared.tally.lock().expect("tally lock");
                                t.unknown_batches += 1;
                                t.note_error(format!("stream {index}: response for unknown batch {}", resp.batch_id));
                            }
                        }
                    }
                    Ok(None) | Err(_) => {
                        let clean_end = matches!(msg, Ok(None)) && in_flight.is_empty();
                        let reason = match msg {
                            Err(status) => format!("stream {index}: {status}"),
                            _ => format!("stream {index}: the node ended the stream with {} batches unanswered", in_flight.len()),
                        };
                        if !clean_end {
                            fail_in_flight(&shared, &mut in_flight, reason);
                        }
                        if sending {
                            tokio::time::sleep(RECONNECT_BACKOFF).await;
                            continue 'connect;
                        }
                        break 'connect;
                    }
                },
                _ = sleep_until(send_at.unwrap_or(far).into()), if send_at.is_some() => {
                    let events = generator.batch(sc.batch);
                    let n = events.len() as u64;
                    let batch_id = next_batch_id;
                    next_batch_id += 1;
                    let sent = match interval {
                        Some(i) => {
                            let due = next_due;
                            next_due += i;
                            due
                        }
                        None => Instant::now(),
                    };
                    let Some(sender) = tx.as_ref() else { continue };
                    if sender.try_send(v1::IngestRequest { batch_id, events }).is_err() {
                        // The request stream is gone; the response side reports why.
                        continue;
                    }
                    in_flight.insert(batch_id, InFlight { sent, events: n });
                    note_sent(&shared, &tl, sent, n);
                }
                _ = sleep_until(tl.measure_end.into()), if sending => {}
                _ = sleep_until(drain_deadline.into()), if !sending => {
                    let n: u64 = in_flight.values().map(|b| b.events).sum();
                    shared.in_flight_batches.fetch_sub(in_flight.len(), Ordering::Relaxed);
                    let mut t = shared.tally.lock().expect("tally lock");
                    t.lost += n;
                    t.note_error(format!("stream {index}: {} batches ({n} events) unanswered {:?} after the run", in_flight.len(), tl.drain));
                    break 'connect;
                }
            }
        }
    }
}

/// A batch or request of `events` events sent at `sent`.
pub fn note_sent(shared: &Shared, tl: &Timeline, sent: Instant, events: u64) {
    shared.in_flight_batches.fetch_add(1, Ordering::Relaxed);
    let mut t = shared.tally.lock().expect("tally lock");
    t.batches_sent += 1;
    t.events_sent += events;
    if tl.in_window(sent) {
        t.batches_sent_in_window += 1;
    }
}

/// Its answer, at `acked_at`.
pub fn note_answer(shared: &Shared, tl: &Timeline, resp: &v1::IngestResponse, sent: Instant, events: u64, acked_at: Instant) {
    shared.in_flight_batches.fetch_sub(1, Ordering::Relaxed);
    record_response(shared, tl, resp, &InFlight { sent, events }, acked_at);
}

/// It failed as a whole (transport or HTTP error): its events count as failed.
pub fn note_failure(shared: &Shared, events: u64, reason: String) {
    shared.in_flight_batches.fetch_sub(1, Ordering::Relaxed);
    let mut t = shared.tally.lock().expect("tally lock");
    t.stream_errors += 1;
    t.failed += events;
    t.note_error(reason);
}

fn fail_in_flight(shared: &Shared, in_flight: &mut HashMap<u64, InFlight>, reason: String) {
    let n: u64 = in_flight.values().map(|b| b.events).sum();
    shared.in_flight_batches.fetch_sub(in_flight.len(), Ordering::Relaxed);
    in_flight.clear();
    let mut t = shared.tally.lock().expect("tally lock");
    t.stream_errors += 1;
    t.failed += n;
    t.note_error(reason);
}

fn record_response(shared: &Shared, tl: &Timeline, resp: &v1::IngestResponse, b: &InFlight, acked_at: Instant) {
    let (mut accepted, mut duplicate, mut rejected, mut retry) = (0u64, 0u64, 0u64, 0u64);
    let mut first_problem: Option<String> = None;
    for r in &resp.results {
        match v1::EventStatus::try_from(r.status) {
            Ok(v1::EventStatus::Accepted) => accepted += 1,
            Ok(v1::EventStatus::Duplicate) => duplicate += 1,
            Ok(v1::EventStatus::Retry) => {
                retry += 1;
                first_problem.get_or_insert_with(|| format!("batch {} event {}: RETRY {}", resp.batch_id, r.index, r.error));
            }
            _ => {
                rejected += 1;
                first_problem.get_or_insert_with(|| format!("batch {} event {}: REJECTED field={} {}", resp.batch_id, r.index, r.field, r.error));
            }
        }
    }
    let answered = resp.results.len() as u64;
    let acked = accepted + duplicate;
    shared.acked_total.fetch_add(acked, Ordering::Relaxed);
    let us = acked_at.saturating_duration_since(b.sent).as_micros().clamp(1, u128::from(LATENCY_US_MAX)) as u64;
    let mut t = shared.tally.lock().expect("tally lock");
    t.batches_answered += 1;
    t.accepted += accepted;
    t.duplicate += duplicate;
    t.rejected += rejected;
    t.retry += retry;
    t.missing += b.events.saturating_sub(answered);
    if tl.in_window(acked_at) {
        t.acked_in_window += acked;
    }
    // Every event of the batch waited from the batch's send to its ack.
    if b.sent >= tl.measure_start && b.sent < tl.measure_end {
        t.latency.saturating_record_n(us, b.events);
    } else if b.sent < tl.measure_start {
        t.warmup_latency.saturating_record_n(us, b.events);
    }
    if let Some(e) = &resp.error {
        t.note_error(format!("batch {}: refused whole: {} {}: {}", resp.batch_id, e.code, e.field, e.message));
    }
    if let Some(p) = first_problem {
        t.note_error(p);
    }
}

/// Print one progress line per second on stderr until the run is over (the window
/// has ended and nothing is in flight) or `until` passes.
pub async fn progress(shared: Arc<Shared>, tl: Timeline, until: Instant, node_pid: Option<String>) {
    let mut tick = tl.start + Duration::from_secs(1);
    let mut last_acked = 0u64;
    let mut last_at = tl.start;
    while tick <= until {
        sleep_until(tick.into()).await;
        tick += Duration::from_secs(1);
        let now = Instant::now();
        if now >= tl.measure_end && shared.in_flight_batches.load(Ordering::Relaxed) == 0 {
            break;
        }
        let acked = shared.acked_total.load(Ordering::Relaxed);
        let rate = (acked - last_acked) as f64 / now.duration_since(last_at).as_secs_f64().max(1e-3);
        last_acked = acked;
        last_at = now;
        let (p99, errors) = {
            let t = shared.tally.lock().expect("tally lock");
            let h = if t.latency.is_empty() { &t.warmup_latency } else { &t.latency };
            (h.value_at_quantile(0.99) as f64 / 1000.0, t.errors())
        };
        let phase = if now < tl.measure_start {
            "warmup"
        } else if now < tl.measure_end {
            "measure"
        } else {
            "drain"
        };
        let node_part =
            node_pid.as_deref().and_then(crate::procstat::sample).map(|s| format!("  node rss {:.0} MiB", s.rss_bytes as f64 / 1048576.0)).unwrap_or_default();
        eprintln!(
            "[{:>5.1}s {phase:<7}] acked {rate:>9.0} ev/s  p99 {p99:>8.2} ms  errors {errors}  in-flight {} batches{node_part}",
            now.duration_since(tl.start).as_secs_f64(),
            shared.in_flight_batches.load(Ordering::Relaxed),
        );
    }
}

/// Sample the node (if known) and this process at the start of the measured window,
/// every second inside it (for peak RSS), and at its end.
pub async fn sample_window(tl: Timeline, node: &mut Option<Tracker>, client: &mut Tracker) {
    sleep_until(tl.measure_start.into()).await;
    if let Some(n) = node.as_mut() {
        n.observe(true);
    }
    client.observe(true);
    let mut tick = tl.measure_start + Duration::from_secs(1);
    while tick < tl.measure_end {
        sleep_until(tick.into()).await;
        if let Some(n) = node.as_mut() {
            n.observe(false);
        }
        tick += Duration::from_secs(1);
    }
    sleep_until(tl.measure_end.into()).await;
    if let Some(n) = node.as_mut() {
        n.observe(false);
    }
    client.observe(false);
}
