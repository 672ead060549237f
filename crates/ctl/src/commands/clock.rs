//! `clock show|advance|set`: Admin.Clock. Prints the mode and the cluster's time as
//! RFC 3339 (UTC) and Unix milliseconds. Moving the clock needs `--clock manual`.

use super::Ctx;
use crate::failure::{self, EXIT_OK, Failure};
use crate::output::{emit, emit_json, key_values, time_json};
use crate::timefmt::{format_duration_ms, format_rfc3339_ms};
use chorus_proto::v1::admin_client::AdminClient;
use chorus_proto::v1::{ClockRequest, ClockResponse, clock_request};
use serde_json::{Value, json};
use tonic::Code;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Show,
    Advance(i64),
    Set(i64),
}

pub async fn run(ctx: &Ctx, op: Op) -> anyhow::Result<u8> {
    let mut admin = AdminClient::new(ctx.connect().await?);
    let (action, wire) = match op {
        Op::Show => ("show the clock".to_string(), clock_request::Op::Show(true)),
        Op::Advance(ms) => (format!("advance the clock by {}", format_duration_ms(ms)), clock_request::Op::AdvanceMs(ms)),
        Op::Set(ms) => (format!("set the clock to {}", format_rfc3339_ms(ms)), clock_request::Op::SetMs(ms)),
    };
    let response = ctx.call_status(&action, admin.clock(ClockRequest { op: Some(wire) })).await?.map_err(|s| clock_failure(ctx, &s, &action))?;
    if ctx.json() {
        emit_json(&clock_json(&response));
    } else {
        emit(&clock_text(&response));
    }
    Ok(EXIT_OK)
}

fn clock_failure(ctx: &Ctx, status: &tonic::Status, action: &str) -> Failure {
    let failure = failure::from_status(status, &ctx.endpoint, action);
    let says = status.message().to_ascii_lowercase();
    if says.contains("backward") || says.contains("past") {
        return failure.hint("the manual clock never moves backwards: pick a later time (see `chorusctl clock show`)");
    }
    if status.code() == Code::FailedPrecondition {
        return failure.hint("the node's clock is not manual: start the node with --clock manual to move time by hand");
    }
    failure
}

fn clock_json(c: &ClockResponse) -> Value {
    json!({"mode": c.mode, "now_ms": c.now_ms, "now": time_json(c.now_ms)})
}

fn clock_text(c: &ClockResponse) -> String {
    key_values(&[("mode", crate::output::or_dash(&c.mode)), ("now", format!("{} ({} ms)", format_rfc3339_ms(c.now_ms), c.now_ms))])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_prints_mode_and_time_both_ways() {
        let c = ClockResponse { mode: "manual".into(), now_ms: 1_795_773_600_000 };
        assert_eq!(clock_text(&c), "mode  manual\nnow   2026-11-27T10:00:00Z (1795773600000 ms)");
        assert_eq!(clock_json(&c), json!({"mode": "manual", "now_ms": 1_795_773_600_000i64, "now": "2026-11-27T10:00:00Z"}));
    }

    #[test]
    fn clock_failures_say_how_to_get_a_manual_clock() {
        let ctx = Ctx { endpoint: "http://x:1".into(), format: crate::output::Format::Table, timeout: std::time::Duration::from_secs(1) };
        let f = clock_failure(&ctx, &tonic::Status::failed_precondition("clock mode is system"), "advance the clock by 1h");
        assert_eq!(f.message, "could not advance the clock by 1h: clock mode is system");
        assert!(f.hint.unwrap().contains("start the node with --clock manual"));
        let f = clock_failure(&ctx, &tonic::Status::invalid_argument("cannot move the clock backwards"), "set the clock");
        assert!(f.hint.unwrap().contains("never moves backwards"));
    }
}
