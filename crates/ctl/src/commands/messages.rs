//! `messages tail`: Admin.TailMessages, the capture connector's messages as a table
//! or NDJSON; with --follow it streams until Ctrl-C or until stdout is closed.

use super::{Ctx, profile};
use crate::args::ProfileTarget;
use crate::failure::{self, EXIT_OK, Failure};
use crate::output::{Table, emit, emit_json_line, json_text, time_cell, time_json};
use chorus_proto::v1::admin_client::AdminClient;
use chorus_proto::v1::{CapturedMessage, TailMessagesRequest};
use serde_json::{Value, json};

/// Column widths while following (rows are printed as they arrive, so widths cannot
/// be measured first): SEQ TIME CUSTOMER CHANNEL JOURNEY TEMPLATE TO [BODY].
const FOLLOW_WIDTHS: [usize; 8] = [6, 24, 19, 8, 16, 16, 24, 0];

pub async fn tail(ctx: &Ctx, last: u32, follow: bool, customer: Option<&ProfileTarget>, body: bool) -> anyhow::Result<u8> {
    let customer_id = match customer {
        Some(target) => profile::resolve(ctx, target).await?,
        None => String::new(),
    };
    let mut admin = AdminClient::new(ctx.connect().await?).max_decoding_message_size(super::RESPONSE_BYTES_MAX);
    let action = "tail captured messages";
    let request = TailMessagesRequest { last, follow, customer_id };
    let mut stream = ctx.call(action, admin.tail_messages(request)).await?;
    let table = message_table(body);
    if !follow {
        // A bounded answer: collect it (within --timeout), then print aligned.
        let mut messages = Vec::new();
        let collect = async {
            while let Some(m) = stream.message().await? {
                messages.push(m);
            }
            Ok::<_, tonic::Status>(())
        };
        match tokio::time::timeout(ctx.timeout, collect).await {
            Ok(Ok(())) => {}
            Ok(Err(status)) => {
                return Err(failure::from_status(&status, &ctx.endpoint, action).into());
            }
            Err(_) => return Err(failure::timed_out(&ctx.endpoint, action, ctx.timeout).into()),
        }
        if ctx.json() {
            for m in &messages {
                emit_json_line(&message_json(m));
            }
        } else if messages.is_empty() {
            eprintln!("no captured messages");
        } else {
            let mut table = table;
            for m in &messages {
                table.push(message_row(m, body));
            }
            emit(&table.render());
        }
        return Ok(EXIT_OK);
    }
    let widths = &FOLLOW_WIDTHS[..if body { 8 } else { 7 }];
    if !ctx.json() {
        emit(&table.render_header_with(widths));
    }
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let next = tokio::select! {
            next = stream.message() => next,
            _ = &mut interrupted => return Ok(EXIT_OK),
        };
        match next {
            Ok(Some(m)) => {
                if ctx.json() {
                    emit_json_line(&message_json(&m));
                } else {
                    emit(&table.render_row_with(widths, &message_row(&m, body)));
                }
                if crate::output::stdout_closed() {
                    return Ok(EXIT_OK);
                }
            }
            Ok(None) => {
                return Err(Failure::new(format!("{} closed the message stream", ctx.endpoint))
                    .hint("the node may be restarting; run the command again")
                    .into());
            }
            Err(status) => return Err(failure::from_status(&status, &ctx.endpoint, action).into()),
        }
    }
}

fn message_table(body: bool) -> Table {
    let mut headers = vec!["SEQ", "TIME", "CUSTOMER", "CHANNEL", "JOURNEY", "TEMPLATE", "TO"];
    if body {
        headers.push("BODY");
    }
    Table::new(&headers).align_right(&[0])
}

fn message_row(m: &CapturedMessage, body: bool) -> Vec<String> {
    let dash = crate::output::or_dash;
    let mut row = vec![m.seq.to_string(), time_cell(m.at_ms), dash(&m.customer_id), dash(&m.channel), dash(&m.journey), dash(&m.template), dash(&m.to)];
    if body {
        row.push(json_text(&m.body_json).to_string());
    }
    row
}

fn message_json(m: &CapturedMessage) -> Value {
    json!({
        "seq": m.seq,
        "at_ms": m.at_ms,
        "at": time_json(m.at_ms),
        "customer_id": m.customer_id,
        "channel": m.channel,
        "journey": m.journey,
        "template": m.template,
        "to": m.to,
        "idempotency_key": m.idempotency_key,
        "body": json_text(&m.body_json),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> CapturedMessage {
        CapturedMessage {
            seq: 7,
            at_ms: 1_795_773_600_000,
            customer_id: "cu_0001000000000001".into(),
            channel: "email".into(),
            template: "welcome-1".into(),
            idempotency_key: "k".into(),
            to: "ada@example.com".into(),
            body_json: r#"{"subject":"Hi Ada"}"#.into(),
            journey: "welcome".into(),
        }
    }

    #[test]
    fn messages_render_as_rows_and_ndjson_objects() {
        let mut t = message_table(true);
        t.push(message_row(&message(), true));
        assert_eq!(
            t.render(),
            "SEQ  TIME                  CUSTOMER             CHANNEL  JOURNEY  TEMPLATE   TO               BODY\n\
             \x20 7  2026-11-27T10:00:00Z  cu_0001000000000001  email    welcome  welcome-1  ada@example.com  {\"subject\":\"Hi Ada\"}"
        );
        let j = message_json(&message());
        assert_eq!(j["body"]["subject"], "Hi Ada");
        assert_eq!(j["at"], "2026-11-27T10:00:00Z");
        assert!(!serde_json::to_string(&j).unwrap().contains('\n'));
    }
}

/// Arguments of `messages send`.
pub struct SendArgs {
    pub to: ProfileTarget,
    pub channel: String,
    pub template: String,
    pub category: String,
    pub vars: Option<String>,
    pub topic: String,
    pub request_id: Option<String>,
    pub at: Option<i64>,
    pub in_: Option<i64>,
}

/// `messages send`: Messages.Send with one message.
pub async fn send(ctx: &Ctx, args: SendArgs) -> anyhow::Result<u8> {
    use chorus_proto::v1::messages_client::MessagesClient;
    use chorus_proto::v1::{MessageRequest, MessageStatus, SendMessagesRequest};
    let mut send_at_ms = args.at.unwrap_or(0);
    if let Some(delay) = args.in_ {
        // Relative to the node's clock (which may be a manual clock).
        let mut admin = AdminClient::new(ctx.connect().await?);
        let now =
            ctx.call("read the clock", admin.clock(chorus_proto::v1::ClockRequest { op: Some(chorus_proto::v1::clock_request::Op::Show(true)) })).await?.now_ms;
        send_at_ms = now + delay;
    }
    let request_id = args.request_id.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        format!("ctl-{:x}-{:x}", nanos, std::process::id())
    });
    let message = MessageRequest {
        request_id: request_id.clone(),
        profile: Some(profile::profile_ref(&args.to)),
        channel: args.channel,
        template: args.template,
        category: args.category,
        vars_json: args.vars.unwrap_or_default(),
        send_at: String::new(),
        send_at_ms,
        topic: args.topic,
    };
    let mut client = MessagesClient::new(ctx.connect().await?);
    let resp = ctx.call("send a message", client.send(SendMessagesRequest { messages: vec![message] })).await?;
    let Some(r) = resp.results.into_iter().next() else {
        return Err(Failure::new("the node answered without a result").into());
    };
    let status = MessageStatus::try_from(r.status).unwrap_or(MessageStatus::Unspecified);
    let status_name = match status {
        MessageStatus::Queued => "queued",
        MessageStatus::Scheduled => "scheduled",
        MessageStatus::Duplicate => "duplicate",
        MessageStatus::Rejected => "rejected",
        MessageStatus::NotFound => "not_found",
        MessageStatus::Retry => "retry",
        MessageStatus::Unspecified => "unknown",
    };
    if ctx.json() {
        emit_json_line(&json!({
            "request_id": request_id,
            "status": status_name,
            "customer_id": if r.customer_id.is_empty() { Value::Null } else { json!(r.customer_id) },
            "at_ms": r.at_ms,
            "at": time_json(r.at_ms),
            "field": if r.field.is_empty() { Value::Null } else { json!(r.field) },
            "error": if r.error.is_empty() { Value::Null } else { json!(r.error) },
        }));
    } else {
        match status {
            MessageStatus::Queued => emit(&format!("queued {request_id} for {} (decision: chorusctl profile explain {})", r.customer_id, r.customer_id)),
            MessageStatus::Scheduled => emit(&format!("scheduled {request_id} for {} at {}", r.customer_id, time_cell(r.at_ms))),
            MessageStatus::Duplicate => emit(&format!("duplicate: request {request_id} was already sent")),
            _ => {}
        }
    }
    match status {
        MessageStatus::Queued | MessageStatus::Scheduled | MessageStatus::Duplicate => Ok(EXIT_OK),
        MessageStatus::Rejected => Err(Failure::usage(format!("{}: {}", r.field, r.error)).into()),
        MessageStatus::NotFound => Err(Failure::new(r.error).into()),
        _ => Err(Failure::new(format!("not accepted now: {}", r.error)).hint("retry in a moment").into()),
    }
}
