//! What went wrong, told to a person: one error line, a hint saying what to do, and
//! the exit code. The one place that turns connection errors and gRPC statuses into
//! those; commands add hints only where they know better (not found, clock mode).

use tonic::{Code, Status};

/// Success.
pub const EXIT_OK: u8 = 0;
/// The request failed, was refused, found nothing, or an event was rejected.
pub const EXIT_FAILED: u8 = 1;
/// The command line or an input file is wrong; nothing was sent.
pub const EXIT_USAGE: u8 = 2;

/// An error for the user. Carried inside `anyhow::Error` and printed by [`report`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub message: String,
    pub hint: Option<String>,
    pub exit: u8,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Failure {}

impl Failure {
    /// A failed request (exit 1).
    pub fn new(message: impl Into<String>) -> Failure {
        Failure { message: message.into(), hint: None, exit: EXIT_FAILED }
    }

    /// Wrong usage or input; nothing was sent (exit 2).
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure { message: message.into(), hint: None, exit: EXIT_USAGE }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Failure {
        self.hint = Some(hint.into());
        self
    }
}

/// Print an error to stderr and return the exit code to use.
pub fn report(err: &anyhow::Error) -> u8 {
    match err.downcast_ref::<Failure>() {
        Some(failure) => {
            eprintln!("error: {}", failure.message);
            if let Some(hint) = &failure.hint {
                eprintln!("hint: {hint}");
            }
            failure.exit
        }
        None => {
            eprintln!("error: {err:#}");
            EXIT_FAILED
        }
    }
}

const UNREACHABLE_HINT: &str = "set --endpoint or CHORUS_ENDPOINT to the gRPC address of a running node";

/// The node could not be reached at all.
pub fn unreachable(endpoint: &str, err: &(dyn std::error::Error + 'static)) -> Failure {
    Failure::new(format!("cannot reach Chorus at {endpoint}: {} — is `chorus dev` running?", root_cause(err))).hint(UNREACHABLE_HINT)
}

/// The request took longer than `--timeout`.
pub fn timed_out(endpoint: &str, action: &str, after: std::time::Duration) -> Failure {
    Failure::new(format!("timed out after {:?} trying to {action} at {endpoint}", after))
        .hint("the node may be overloaded or partitioned: check `chorusctl cluster status`, or allow more time with --timeout")
}

/// The lowest error of a chain in plain words (`connection refused`, not
/// `transport error`).
pub fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    loop {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match io.kind() {
                ConnectionRefused => return "connection refused".into(),
                ConnectionReset => return "connection reset".into(),
                TimedOut => return "connection timed out".into(),
                _ => {}
            }
        }
        match current.source() {
            Some(next) => current = next,
            None => return current.to_string(),
        }
    }
}

/// A gRPC status from `endpoint` while trying to `action` (e.g. "get the profile"),
/// with a hint per code.
pub fn from_status(status: &Status, endpoint: &str, action: &str) -> Failure {
    let said = if status.message().is_empty() { status.code().description().to_string() } else { status.message().to_string() };
    if status.code() == Code::Unavailable
        && let Some(source) = std::error::Error::source(status)
    {
        let cause = root_cause(source);
        if cause.starts_with("connection") {
            return Failure::new(format!("cannot reach Chorus at {endpoint}: {cause} — is `chorus dev` running?")).hint(UNREACHABLE_HINT);
        }
    }
    if ["h2 protocol error", "http2 error", "invalid compression flag", "grpc-status header missing"].iter().any(|p| said.contains(p)) {
        return Failure::new(format!("could not {action}: {endpoint} did not answer as a gRPC server ({said})"))
            .hint("point --endpoint at a node's gRPC port, not its HTTP port");
    }
    let (message, hint) = match status.code() {
        Code::InvalidArgument => {
            (format!("could not {action}: the request was invalid: {said}"), "fix the value named above and try again (see --help for the accepted forms)")
        }
        Code::NotFound => (format!("could not {action}: not found: {said}"), "check the id or name"),
        Code::AlreadyExists => (format!("could not {action}: already exists: {said}"), "use another name, or update the existing one"),
        Code::FailedPrecondition => (format!("could not {action}: {said}"), "the cluster is not in a state that allows this yet; see the message above"),
        Code::ResourceExhausted => (
            format!("could not {action}: Chorus is overloaded or a limit was hit: {said}"),
            "slow down and retry (for `event send`, use a smaller --batch-size)",
        ),
        Code::Unavailable => (
            format!("could not {action}: Chorus at {endpoint} is unavailable: {said}"),
            "retry in a few seconds; if it persists, check `chorusctl cluster status` and the node logs",
        ),
        Code::DeadlineExceeded => (
            format!("could not {action}: the node gave up waiting: {said}"),
            "retry; if it persists, check `chorusctl cluster status` (a shard may have lost its leader)",
        ),
        Code::Aborted | Code::Cancelled => (format!("could not {action}: {said}"), "retry"),
        Code::Unauthenticated | Code::PermissionDenied => {
            (format!("could not {action}: not allowed: {said}"), "this node requires credentials; check its auth settings")
        }
        Code::Unimplemented => (
            format!("could not {action}: the node does not support this request: {said}"),
            "the node may be older than this chorusctl; upgrade it or use a matching chorusctl",
        ),
        Code::Internal | Code::Unknown | Code::DataLoss | Code::OutOfRange | Code::Ok => {
            (format!("could not {action}: Chorus failed: {said}"), "this is likely a bug in Chorus: check the node logs and report it with this message")
        }
    };
    Failure::new(message).hint(hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EP: &str = "http://127.0.0.1:7700";

    #[test]
    fn every_status_gets_the_message_and_a_hint() {
        let f = from_status(&Status::invalid_argument("identities[0].value: not an email"), EP, "send events");
        assert_eq!(f.message, "could not send events: the request was invalid: identities[0].value: not an email");
        assert!(f.hint.unwrap().contains("fix the value"));
        let f = from_status(&Status::resource_exhausted("ingest queue full"), EP, "send events");
        assert!(f.hint.unwrap().contains("slow down"));
        let f = from_status(&Status::unavailable("no leader for shard 3"), EP, "list shards");
        assert!(f.message.contains("unavailable: no leader for shard 3"));
        assert!(f.hint.unwrap().contains("retry"));
        let f = from_status(&Status::internal(""), EP, "list shards");
        assert!(f.message.ends_with("Chorus failed: Internal error"), "{}", f.message);
        assert_eq!(f.exit, EXIT_FAILED);
    }

    #[test]
    fn refused_connections_say_how_to_point_at_a_node() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let f = unreachable(EP, &io);
        assert_eq!(f.message, "cannot reach Chorus at http://127.0.0.1:7700: connection refused — is `chorus dev` running?");
        assert!(f.hint.unwrap().contains("CHORUS_ENDPOINT"));
        let mut status = Status::unavailable("error trying to connect: tcp connect error");
        status.set_source(std::sync::Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)));
        assert!(from_status(&status, EP, "get the profile").message.starts_with("cannot reach Chorus"));
    }

    #[test]
    fn a_non_grpc_port_is_recognised() {
        let f = from_status(&Status::internal("h2 protocol error: http2 error"), EP, "show the clock");
        assert!(f.hint.unwrap().contains("gRPC port"));
    }

    #[test]
    fn display_includes_the_hint() {
        assert_eq!(Failure::usage("bad").hint("do this").to_string(), "bad\nhint: do this");
        assert_eq!(Failure::usage("bad").exit, EXIT_USAGE);
    }
}
