//! Runs one parsed command against a node: connecting, timeouts, and dispatch to the
//! command modules. Commands return an exit code or a [`Failure`]; only they print.

mod audience;
mod clock;
mod cluster;
mod dlq;
mod event;
mod journey;
mod key;
mod messages;
mod node;
mod profile;
mod settings;
mod shard;
mod template;

use crate::args::{
    AudienceCommand, Cli, ClockCommand, ClusterCommand, Command, DlqCommand, EventCommand, JourneyCommand, KeyCommand, MessagesCommand, NodeCommand,
    ProfileCommand, SettingsCommand, ShardCommand, TemplateCommand,
};
use crate::failure::{self, Failure};
use crate::output::Format;
use std::future::Future;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Largest response accepted (a profile with many recent events, a big batch result).
const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// What every command needs: where the node is, how to print, how long to wait.
pub struct Ctx {
    pub endpoint: String,
    pub format: Format,
    pub timeout: Duration,
}

impl Ctx {
    /// Connect to the node, or say clearly why not.
    pub async fn connect(&self) -> Result<Channel, Failure> {
        let endpoint = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| {
                Failure::usage(format!("invalid --endpoint {:?}: {}", self.endpoint, failure::root_cause(&e))).hint("give a URL such as http://127.0.0.1:7700")
            })?
            .connect_timeout(self.timeout)
            .tcp_nodelay(true);
        match tokio::time::timeout(self.timeout, endpoint.connect()).await {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(e)) => Err(failure::unreachable(&self.endpoint, &e)),
            Err(_) => Err(failure::timed_out(&self.endpoint, "connect", self.timeout)),
        }
    }

    /// Await one unary call with `--timeout`; statuses become failures for `action`.
    pub async fn call<T>(&self, action: &str, call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>) -> Result<T, Failure> {
        self.call_status(action, call).await?.map_err(|s| failure::from_status(&s, &self.endpoint, action))
    }

    /// Like [`Ctx::call`], but hands the status back for commands that explain
    /// some codes better themselves.
    pub async fn call_status<T>(
        &self,
        action: &str,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<Result<T, tonic::Status>, Failure> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => Ok(result.map(tonic::Response::into_inner)),
            Err(_) => Err(failure::timed_out(&self.endpoint, action, self.timeout)),
        }
    }

    pub fn json(&self) -> bool {
        self.format == Format::Json
    }
}

/// Normalize `--endpoint`: `host:port` means `http://host:port`; TLS is not built in.
pub fn normalize_endpoint(raw: &str) -> Result<String, Failure> {
    let raw = raw.trim().trim_end_matches('/');
    if raw.is_empty() {
        return Err(Failure::usage("--endpoint is empty").hint("give a URL such as http://127.0.0.1:7700"));
    }
    if raw.starts_with("https://") {
        return Err(
            Failure::usage(format!("{raw}: this chorusctl does not speak TLS yet")).hint("use an http:// endpoint (nodes listen on loopback by default)")
        );
    }
    if raw.contains("://") && !raw.starts_with("http://") {
        return Err(Failure::usage(format!("{raw:?} is not an http:// URL")).hint("give a URL such as http://127.0.0.1:7700"));
    }
    Ok(if raw.contains("://") { raw.to_string() } else { format!("http://{raw}") })
}

/// Run the command; the exit code on success, a failure otherwise.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let ctx = Ctx { endpoint: normalize_endpoint(&cli.endpoint)?, format: cli.output, timeout: cli.timeout };
    let code = match cli.command {
        Command::Cluster { command: ClusterCommand::Init { shards, replication } } => cluster::init(&ctx, shards, replication).await?,
        Command::Cluster { command: ClusterCommand::Status } => cluster::status(&ctx).await?,
        Command::Node { command } => match command {
            NodeCommand::List => node::list(&ctx).await?,
            NodeCommand::Add { id, addr } => node::add(&ctx, id, &addr).await?,
            NodeCommand::Remove { id } => node::remove(&ctx, id).await?,
            NodeCommand::Drain { id } => node::drain(&ctx, id).await?,
        },
        Command::Shard { command } => match command {
            ShardCommand::List => cluster::shards(&ctx).await?,
            ShardCommand::Move { shard, to, from } => shard::move_replica(&ctx, shard, to, from).await?,
            ShardCommand::TransferLeader { shard, to } => shard::transfer_leader(&ctx, shard, to).await?,
            ShardCommand::Rebalance { dry_run } => shard::rebalance(&ctx, dry_run).await?,
            ShardCommand::CancelMoves => shard::cancel_moves(&ctx).await?,
        },
        Command::Event { command: EventCommand::Send(args) } => event::send(&ctx, &args).await?,
        Command::Profile { command } => match command {
            ProfileCommand::Get { target, events } => profile::get(&ctx, &target, events).await?,
            ProfileCommand::Find(find) => profile::get(&ctx, &find.target(), find.events).await?,
            ProfileCommand::Explain { target, journey, limit } => profile::explain(&ctx, &target, journey.as_deref(), limit).await?,
            ProfileCommand::Consent(args) => match (args.command, args.target) {
                (Some(crate::args::ConsentCommand::Set { target, channel, topic, status, evidence, request_id }), _) => {
                    let change = profile::ConsentChange { channel, topic, status, evidence, request_id };
                    profile::consent(&ctx, &target, Some(change)).await?
                }
                (None, Some(target)) => profile::consent(&ctx, &target, None).await?,
                (None, None) => {
                    return Err(Failure::usage("give a customer: chorusctl profile consent ID_OR_IDENTITY").into());
                }
            },
        },
        Command::Messages { command: MessagesCommand::Tail { last, follow, customer, body } } => {
            messages::tail(&ctx, last, follow, customer.as_ref(), body).await?
        }
        Command::Messages { command: MessagesCommand::Send { to, channel, template, category, vars, topic, request_id, at, in_ } } => {
            let req = messages::SendArgs { to, channel, template, category, vars, topic, request_id, at, in_ };
            messages::send(&ctx, req).await?
        }
        Command::Journey { command: JourneyCommand::Validate { files } } => journey::validate(&ctx, &files)?,
        Command::Journey { command: JourneyCommand::Apply { files } } => journey::apply(&ctx, &files).await?,
        Command::Journey { command: JourneyCommand::List } => journey::list(&ctx).await?,
        Command::Journey { command: JourneyCommand::Stats { id } } => journey::stats(&ctx, &id).await?,
        Command::Journey { command: JourneyCommand::Simulate { file, events, profile, until, settings } } => {
            journey::simulate(&ctx, &file, &events, profile.as_deref(), until, settings.as_deref())?
        }
        Command::Journey { command: JourneyCommand::Show { id } } => journey::show(&ctx, &id).await?,
        Command::Journey { command: JourneyCommand::Pause { id } } => journey::set_lifecycle(&ctx, &id, "paused").await?,
        Command::Journey { command: JourneyCommand::Resume { id } } => journey::set_lifecycle(&ctx, &id, "active").await?,
        Command::Journey { command: JourneyCommand::Archive { id } } => journey::set_lifecycle(&ctx, &id, "archived").await?,
        Command::Journey { command: JourneyCommand::Enroll { journey, target, properties, request_id } } => {
            journey::enroll(&ctx, &journey, &target, properties.as_deref(), request_id.as_deref()).await?
        }
        Command::Audience { command } => match command {
            AudienceCommand::Validate { files } => audience::validate(&ctx, &files)?,
            AudienceCommand::Apply { files } => audience::apply(&ctx, &files).await?,
            AudienceCommand::List => audience::list(&ctx).await?,
            AudienceCommand::Count { id } => audience::count(&ctx, &id).await?,
            AudienceCommand::Preview { id, limit } => audience::preview(&ctx, &id, limit).await?,
        },
        Command::Dlq { command } => match command {
            DlqCommand::List { limit } => dlq::list(&ctx, limit, None).await?,
            DlqCommand::Show { key } => dlq::list(&ctx, 10_000, Some(&key)).await?,
            DlqCommand::Redrive { keys, all } => dlq::redrive(&ctx, keys, all).await?,
        },
        Command::Settings { command: SettingsCommand::Show } => settings::show(&ctx).await?,
        Command::Settings { command: SettingsCommand::Validate { file } } => settings::validate(&ctx, &file)?,
        Command::Settings { command: SettingsCommand::Apply { file } } => settings::apply(&ctx, &file).await?,
        Command::Template { command: TemplateCommand::Validate { files } } => template::validate(&ctx, &files)?,
        Command::Template { command: TemplateCommand::Apply { files } } => template::apply(&ctx, &files).await?,
        Command::Template { command: TemplateCommand::List } => template::list(&ctx).await?,
        Command::Template { command: TemplateCommand::Render { file, channel, profile, vars, event, locale } } => {
            template::render(&ctx, &file, &channel, template::Inputs { profile, vars, event, locale })?
        }
        Command::Key { command } => match command {
            KeyCommand::Create { name } => key::create(&ctx, &name).await?,
            KeyCommand::List => key::list(&ctx).await?,
            KeyCommand::Revoke { name } => key::revoke(&ctx, &name).await?,
        },
        Command::Clock { command } => match command {
            ClockCommand::Show => clock::run(&ctx, clock::Op::Show).await?,
            ClockCommand::Advance { by_ms } => clock::run(&ctx, clock::Op::Advance(by_ms)).await?,
            ClockCommand::Set { to_ms } => clock::run(&ctx, clock::Op::Set(to_ms)).await?,
        },
    };
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_default_to_http() {
        assert_eq!(normalize_endpoint("127.0.0.1:7700").unwrap(), "http://127.0.0.1:7700");
        assert_eq!(normalize_endpoint("http://n1:7700/").unwrap(), "http://n1:7700");
        assert!(normalize_endpoint("https://n1:7700").unwrap_err().message.contains("TLS"));
        assert!(normalize_endpoint("grpc://n1:7700").is_err());
        assert!(normalize_endpoint(" ").is_err());
    }
}
