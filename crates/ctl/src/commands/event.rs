//! `event send`: reads events (flags or file), sends them in batches through
//! Ingest.Send, resends what the node asks to retry, and prints one result per event
//! plus a summary. Exit 1 if any event was not accepted.

use super::Ctx;
use crate::args::SendArgs;
use crate::events::{self, EVENTS_FILE_BYTES_MAX, SourcedEvent};
use crate::failure::{self, EXIT_FAILED, EXIT_OK, Failure};
use crate::output::{Table, emit, emit_json, emit_json_line, opt_string};
use chorus_proto::v1::ingest_client::IngestClient;
use chorus_proto::v1::{Event, EventResult, EventStatus, IngestRequest};
use serde_json::{Value, json};
use std::io::{IsTerminal, Read};
use std::time::Duration;
use tonic::Code;

/// Most bytes of event payload per request, below gRPC's usual 4 MiB message limit.
const BATCH_BYTES_MAX: usize = 3 * 1024 * 1024;
/// First wait before resending; doubles per attempt up to `RETRY_BACKOFF_MAX`.
const RETRY_BACKOFF_FIRST: Duration = Duration::from_millis(200);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Show progress on a terminal when sending more events than this.
const PROGRESS_EVENTS_MIN: usize = 5_000;

pub async fn send(ctx: &Ctx, args: &SendArgs) -> anyhow::Result<u8> {
    let events = read_events(args)?;
    if args.dry_run {
        for e in &events {
            emit_json_line(&events::event_to_json(&e.event));
        }
        return Ok(EXIT_OK);
    }
    let channel = ctx.connect().await?;
    let mut ingest = IngestClient::new(channel).max_decoding_message_size(super::RESPONSE_BYTES_MAX);
    let mut results: Vec<Option<EventResult>> = vec![None; events.len()];
    let progress = events.len() > PROGRESS_EVENTS_MIN && std::io::stderr().is_terminal();
    let mut batch_id = 0u64;
    for range in batches(&events, args.batch_size as usize, BATCH_BYTES_MAX) {
        let first = range.start;
        let mut pending: Vec<usize> = range.collect();
        let mut attempt: u64 = 0;
        while !pending.is_empty() {
            batch_id += 1;
            let request = IngestRequest { batch_id, events: pending.iter().map(|&i| events[i].event.clone()).collect() };
            let outcome = ctx.call_status("send events", ingest.send(request)).await;
            let response = match outcome {
                Ok(Ok(response)) => response,
                // Whole-batch refusals that may pass later: resend (message ids make it safe).
                Ok(Err(status)) if retryable(status.code()) && attempt < args.retries => {
                    attempt += 1;
                    wait_before_retry(pending.len(), attempt, args.retries, status.message()).await;
                    continue;
                }
                Err(timeout) if attempt < args.retries => {
                    attempt += 1;
                    wait_before_retry(pending.len(), attempt, args.retries, &timeout.message).await;
                    continue;
                }
                failed => {
                    let failure = match failed {
                        Ok(Err(status)) => failure::from_status(&status, &ctx.endpoint, "send events"),
                        Err(timeout) => timeout,
                        Ok(Ok(_)) => unreachable!("handled above"),
                    };
                    return Err(partial_failure(ctx, args, &events, &results, first, failure).into());
                }
            };
            let mut again = Vec::new();
            for r in response.results {
                let Some(&i) = pending.get(r.index as usize) else {
                    return Err(Failure::new(format!(
                        "the node answered for event {} of a batch of {}; this chorusctl and the node disagree",
                        r.index,
                        pending.len()
                    ))
                    .into());
                };
                if r.status() == EventStatus::Retry && attempt < args.retries {
                    again.push(i);
                } else {
                    results[i] = Some(EventResult { index: i as u32, ..r });
                }
            }
            if again.is_empty() {
                break;
            }
            attempt += 1;
            wait_before_retry(again.len(), attempt, args.retries, "the node asked to retry").await;
            pending = again;
        }
        if progress {
            eprint!("\rsent {} of {} events", results.iter().filter(|r| r.is_some()).count(), events.len());
        }
    }
    if progress {
        eprintln!();
    }
    Ok(print_results(ctx, args, &events, &results))
}

/// Load and parse the events from flags or `--file`.
fn read_events(args: &SendArgs) -> Result<Vec<SourcedEvent>, Failure> {
    let mut next_id = events::new_message_id;
    let Some(path) = &args.file else {
        let event = events::event_from_flags(args, &mut next_id).map_err(|e| Failure::usage(e).hint("see `chorusctl event send --help`"))?;
        return Ok(vec![SourcedEvent { event, line: None }]);
    };
    let (name, text) = read_text(path)?;
    let parsed =
        events::parse_file(&text, &mut next_id).map_err(|e| Failure::usage(format!("{name} {e}")).hint("fix the file and run again; nothing was sent"))?;
    for warning in &parsed.warnings {
        eprintln!("warning: {name}: {warning}");
    }
    Ok(parsed.events)
}

/// The file's display name and its text (`-` is stdin), at most
/// `EVENTS_FILE_BYTES_MAX` bytes.
fn read_text(path: &str) -> Result<(String, String), Failure> {
    let (name, reader): (String, Box<dyn Read>) = if path == "-" {
        ("stdin".into(), Box::new(std::io::stdin().lock()))
    } else {
        let file = std::fs::File::open(path).map_err(|e| {
            Failure::usage(format!("cannot open {path}: {}", failure::root_cause(&e).to_lowercase()))
                .hint("check the path; use `--file -` to read standard input")
        })?;
        (path.to_string(), Box::new(file))
    };
    let mut bytes = Vec::new();
    reader.take(EVENTS_FILE_BYTES_MAX as u64 + 1).read_to_end(&mut bytes).map_err(|e| Failure::usage(format!("cannot read {name}: {e}")))?;
    if bytes.len() > EVENTS_FILE_BYTES_MAX {
        return Err(Failure::usage(format!("{name} is larger than {} MiB", EVENTS_FILE_BYTES_MAX >> 20))
            .hint("split it, e.g. `split -l 100000 events.ndjson part-`, and send the parts"));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count() + 1;
        Failure::usage(format!("{name} line {line}: not UTF-8 text")).hint("save the file as UTF-8")
    })?;
    Ok((name, text))
}

/// Consecutive index ranges of at most `size_max` events and about `bytes_max` bytes.
fn batches(events: &[SourcedEvent], size_max: usize, bytes_max: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, e) in events.iter().enumerate() {
        let size = approx_bytes(&e.event);
        if i > start && (i - start == size_max || bytes + size > bytes_max) {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < events.len() {
        out.push(start..events.len());
    }
    out
}

fn approx_bytes(e: &Event) -> usize {
    let ids: usize = e.identities.iter().map(|i| i.kind.len() + i.value.len() + 8).sum();
    e.message_id.len() + e.r#type.len() + e.name.len() + ids + e.properties_json.len() + e.traits_json.len() + e.context_json.len() + e.timestamp.len() + 32
}

fn retryable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded | Code::Aborted)
}

async fn wait_before_retry(count: usize, attempt: u64, attempts_max: u64, why: &str) {
    let wait = RETRY_BACKOFF_FIRST.saturating_mul(1u32 << (attempt - 1).min(16) as u32).min(RETRY_BACKOFF_MAX);
    let noun = if count == 1 { "event" } else { "events" };
    eprintln!("note: {count} {noun} not accepted yet ({why}); retry {attempt} of {attempts_max} in {wait:?}");
    tokio::time::sleep(wait).await;
}

/// A batch failed for good: show what was done, then say which events were not sent.
fn partial_failure(ctx: &Ctx, args: &SendArgs, events: &[SourcedEvent], results: &[Option<EventResult>], first_unsent: usize, failure: Failure) -> Failure {
    if first_unsent == 0 {
        return failure;
    }
    print_results(ctx, args, &events[..first_unsent], &results[..first_unsent]);
    let Failure { message, hint, exit } = failure;
    Failure { message: format!("{message}\n{}; the results above are for the events before", unsent(first_unsent, events.len() - 1)), hint, exit }
}

fn unsent(first: usize, last: usize) -> String {
    if first == last { format!("event {first} was not sent") } else { format!("events {first} to {last} were not sent") }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Summary {
    accepted: usize,
    duplicate: usize,
    rejected: usize,
    retry: usize,
    unanswered: usize,
}

impl Summary {
    fn line(&self) -> String {
        let mut s = format!("{} accepted, {} duplicate, {} rejected", self.accepted, self.duplicate, self.rejected);
        if self.retry > 0 {
            s.push_str(&format!(", {} not accepted after retries", self.retry));
        }
        if self.unanswered > 0 {
            s.push_str(&format!(", {} unanswered", self.unanswered));
        }
        s
    }
}

fn status_name(r: Option<&EventResult>) -> &'static str {
    match r.map(|r| EventStatus::try_from(r.status)) {
        Some(Ok(EventStatus::Accepted)) => "accepted",
        Some(Ok(EventStatus::Duplicate)) => "duplicate",
        Some(Ok(EventStatus::Rejected)) => "rejected",
        Some(Ok(EventStatus::Retry)) => "retry",
        Some(Ok(EventStatus::Unspecified)) | Some(Err(_)) => "unknown",
        None => "unanswered",
    }
}

fn summarize(results: &[Option<EventResult>]) -> Summary {
    let mut s = Summary::default();
    for r in results {
        match status_name(r.as_ref()) {
            "accepted" => s.accepted += 1,
            "duplicate" => s.duplicate += 1,
            "rejected" => s.rejected += 1,
            "unanswered" => s.unanswered += 1,
            _ => s.retry += 1,
        }
    }
    s
}

/// Print per-event results and the summary; the exit code.
fn print_results(ctx: &Ctx, args: &SendArgs, events: &[SourcedEvent], results: &[Option<EventResult>]) -> u8 {
    let summary = summarize(results);
    if ctx.json() {
        emit_json(&results_json(events, results, &summary, args.quiet));
    } else {
        let table = results_table(events, results, args.quiet);
        if !table.is_empty() {
            emit(&table.render());
        }
        emit(&summary.line());
    }
    if summary.rejected + summary.retry + summary.unanswered > 0 { EXIT_FAILED } else { EXIT_OK }
}

fn results_table(events: &[SourcedEvent], results: &[Option<EventResult>], quiet: bool) -> Table {
    let with_lines = events.iter().any(|e| e.line.is_some());
    let mut headers = vec!["INDEX"];
    if with_lines {
        headers.push("LINE");
    }
    headers.extend(["MESSAGE ID", "STATUS", "RESULT"]);
    let mut table = Table::new(&headers).align_right(if with_lines { &[0, 1] } else { &[0] });
    for (i, (e, r)) in events.iter().zip(results).enumerate() {
        let status = status_name(r.as_ref());
        if quiet && matches!(status, "accepted" | "duplicate") {
            continue;
        }
        let detail = match r {
            Some(r) if status == "rejected" || !r.error.is_empty() => match (r.field.as_str(), r.error.as_str()) {
                ("", error) => error.to_string(),
                (field, error) => format!("{field}: {error}"),
            },
            Some(_) if status == "retry" => "the node was still busy after every retry; send it again later".into(),
            Some(r) => r.customer_id.clone(),
            None => "the node did not answer for this event".into(),
        };
        let mut row = vec![i.to_string()];
        if with_lines {
            row.push(e.line.map_or_else(|| "-".into(), |l| l.to_string()));
        }
        row.extend([e.event.message_id.clone(), status.to_string(), detail]);
        table.push(row);
    }
    table
}

fn results_json(events: &[SourcedEvent], results: &[Option<EventResult>], summary: &Summary, quiet: bool) -> Value {
    let rows: Vec<Value> = events
        .iter()
        .zip(results)
        .enumerate()
        .filter(|(_, (_, r))| !quiet || !matches!(status_name(r.as_ref()), "accepted" | "duplicate"))
        .map(|(i, (e, r))| {
            let (customer, field, error) = match r {
                Some(r) => (opt_string(&r.customer_id), opt_string(&r.field), opt_string(&r.error)),
                None => (Value::Null, Value::Null, Value::String("the node did not answer for this event".into())),
            };
            json!({
                "index": i,
                "line": e.line,
                "message_id": e.event.message_id,
                "status": status_name(r.as_ref()),
                "customer_id": customer,
                "field": field,
                "error": error,
            })
        })
        .collect();
    json!({
        "results": rows,
        "summary": {
            "total": results.len(),
            "accepted": summary.accepted,
            "duplicate": summary.duplicate,
            "rejected": summary.rejected,
            "retry": summary.retry,
            "unanswered": summary.unanswered,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, props: usize, line: Option<usize>) -> SourcedEvent {
        SourcedEvent { event: Event { message_id: id.into(), properties_json: "x".repeat(props), ..Default::default() }, line }
    }

    fn result(status: EventStatus, customer: &str, field: &str, error: &str) -> Option<EventResult> {
        Some(EventResult { index: 0, status: status as i32, customer_id: customer.into(), field: field.into(), error: error.into() })
    }

    #[test]
    fn batches_respect_count_and_bytes() {
        let events: Vec<_> = (0..7).map(|i| event(&i.to_string(), 10, None)).collect();
        assert_eq!(batches(&events, 3, usize::MAX), vec![0..3, 3..6, 6..7]);
        let big: Vec<_> = (0..4).map(|i| event(&i.to_string(), 1000, None)).collect();
        assert_eq!(batches(&big, 100, 2100), vec![0..2, 2..4]);
        // One event larger than the byte budget still goes, alone.
        assert_eq!(batches(&big, 100, 10), vec![0..1, 1..2, 2..3, 3..4]);
        assert!(batches(&[], 10, 10).is_empty());
    }

    #[test]
    fn results_print_per_event_with_a_summary() {
        let events = vec![event("m-1", 0, Some(1)), event("m-2", 0, Some(2)), event("m-3", 0, Some(4)), event("m-4", 0, Some(5))];
        let results = vec![
            result(EventStatus::Accepted, "cu_0000000000000001", "", ""),
            result(EventStatus::Duplicate, "cu_0000000000000001", "", ""),
            result(EventStatus::Rejected, "", "identities[0].value", "not an email address"),
            result(EventStatus::Retry, "", "", "overloaded"),
        ];
        let summary = summarize(&results);
        assert_eq!(summary, Summary { accepted: 1, duplicate: 1, rejected: 1, retry: 1, unanswered: 0 });
        assert_eq!(summary.line(), "1 accepted, 1 duplicate, 1 rejected, 1 not accepted after retries");
        let text = results_table(&events, &results, false).render();
        assert_eq!(
            text,
            "INDEX  LINE  MESSAGE ID  STATUS     RESULT\n\
             \x20   0     1  m-1         accepted   cu_0000000000000001\n\
             \x20   1     2  m-2         duplicate  cu_0000000000000001\n\
             \x20   2     4  m-3         rejected   identities[0].value: not an email address\n\
             \x20   3     5  m-4         retry      overloaded"
        );
        let quiet = results_table(&events, &results, true).render();
        assert_eq!(quiet.lines().count(), 3);
        assert_eq!(results_json(&events, &results, &summary, true)["results"].as_array().unwrap().len(), 2);
        let j = results_json(&events, &results, &summary, false);
        assert_eq!(j["results"][2]["field"], "identities[0].value");
        assert_eq!(j["results"][0]["field"], Value::Null);
        assert_eq!(j["results"][0]["customer_id"], "cu_0000000000000001");
        assert_eq!(j["results"][3]["line"], 5);
        assert_eq!(j["summary"]["total"], 4);
        assert_eq!(j["summary"]["rejected"], 1);
    }
}
