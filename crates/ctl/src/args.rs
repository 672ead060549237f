//! The command-line grammar of `chorusctl` (clap derive): every command and flag with
//! its help text, and the value parsers for identities, customer references, JSON
//! objects, durations and times. Parsing only: no I/O, no gRPC.

use crate::output::Format;
use crate::timefmt;
use clap::{ArgGroup, Args, Parser, Subcommand};
use serde_json::{Map, Value};
use std::time::Duration;

pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7700";
/// Most events per Ingest.Send request.
pub const BATCH_SIZE_MAX: u64 = 10_000;
/// Most attempts to resend events the node asked us to retry.
pub const RETRIES_MAX: u64 = 20;
/// Most recent events a profile read may ask for.
pub const PROFILE_EVENTS_MAX: u64 = 1_000;
/// Most decisions an explain may ask for.
pub const EXPLAIN_LIMIT_MAX: u64 = 10_000;
/// Most past messages a tail may ask for.
pub const TAIL_LAST_MAX: u64 = 100_000;
/// Most shards a cluster may be created with (the node's `chorus_placement::SHARDS_MAX`;
/// the node checks again).
pub const CLUSTER_SHARDS_MAX: u32 = 4096;
/// Highest replication factor (the node's `chorus_placement::REPLICATION_MAX`).
pub const REPLICATION_MAX: u32 = 7;
/// Replication factor of `cluster init` when `--replication` is not given.
pub const REPLICATION_DEFAULT: u32 = 3;

pub const EVENT_TYPES: [&str; 6] = ["track", "identify", "alias", "page", "screen", "group"];

const ABOUT: &str = "Operate and inspect a Chorus cluster";
const LONG_ABOUT: &str = "\
chorusctl talks to any Chorus node over gRPC: it sends events, reads customer profiles \
and their decision logs, shows cluster and shard health, forms a cluster and moves shard \
replicas between its nodes, tails the messages captured by the capture connector and \
drives the manual clock.

Every read prints a table by default and JSON with `-o json`. Exit codes: 0 success; \
1 the request failed, was refused or an event was rejected; 2 the command line or an \
input file is wrong (nothing was sent).";

const EXAMPLES: &str = "\
Examples:
  chorusctl cluster init --shards 64 --replication 3
  chorusctl cluster status
  chorusctl node drain 3
  chorusctl event send --name 'Product Viewed' --user-id 42 --properties '{\"sku\":\"A1\"}'
  chorusctl event send --file events.ndjson
  chorusctl profile get email:ada@example.com
  chorusctl profile explain user_id:42 --journey welcome
  chorusctl messages tail --follow
  chorusctl clock advance 24h
  CHORUS_ENDPOINT=http://10.0.0.5:7700 chorusctl shard list -o json";

#[derive(Parser, Debug)]
#[command(
    name = "chorusctl",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXAMPLES,
    propagate_version = true,
    arg_required_else_help = true
)]
pub struct Cli {
    /// gRPC address of any Chorus node
    #[arg(long, global = true, help_heading = "Global options", env = "CHORUS_ENDPOINT", default_value = DEFAULT_ENDPOINT, value_name = "URL")]
    pub endpoint: String,

    /// Output format: `table` for people, `json` for scripts (stable field names)
    #[arg(short = 'o', long, global = true, help_heading = "Global options", value_enum, default_value_t = Format::Table, value_name = "FORMAT")]
    pub output: Format,

    /// How long to wait to connect and for each request (e.g. 30s, 2m)
    #[arg(long, global = true, help_heading = "Global options", default_value = "30s", value_parser = duration_arg, value_name = "DURATION")]
    pub timeout: Duration,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Form the cluster and show its health: nodes, leaderless and under-replicated
    /// shards, queued moves, the clock
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Cluster members: list, admit, drain and remove nodes
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Shards: leaders, raft terms and load; move replicas, hand over leadership, rebalance
    Shard {
        #[command(subcommand)]
        command: ShardCommand,
    },
    /// Send events (track, identify, page, ...) from flags or a JSON/NDJSON file
    Event {
        #[command(subcommand)]
        command: EventCommand,
    },
    /// Read customer profiles and explain the decisions taken for them
    Profile {
        #[command(subcommand)]
        command: ProfileCommand,
    },
    /// Messages captured by the capture connector (what Chorus would have sent)
    Messages {
        #[command(subcommand)]
        command: MessagesCommand,
    },
    /// Show or move the cluster clock (the node must run with `--clock manual` to move it)
    Clock {
        #[command(subcommand)]
        command: ClockCommand,
    },
    /// Journeys as code: validate journey files (offline, no node needed)
    Journey {
        #[command(subcommand)]
        command: JourneyCommand,
    },
    /// Audiences: named conditions over profiles and event history, kept up to date on
    /// every change to a customer
    Audience {
        #[command(subcommand)]
        command: AudienceCommand,
    },
    /// Messages that could not be delivered: look at them and send them again
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Cluster settings for guardrails: frequency caps, quiet hours, default time zone
    Settings {
        #[command(subcommand)]
        command: SettingsCommand,
    },
    /// Message templates: validate and preview-render template files (offline, no node needed)
    Template {
        #[command(subcommand)]
        command: TemplateCommand,
    },
    /// Write keys of the HTTP APIs (Segment, in-app content, bounces), shared by every node
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Create a write key; it is printed once (the cluster keeps only its SHA-256)
    #[command(after_help = "JSON: {name, key, fingerprint}\n\nExample:\n  chorusctl key create segment-prod")]
    Create {
        /// 1–64 of letters, digits, '-', '_' and '.'
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// List the write keys by name and fingerprint (never the keys themselves)
    #[command(after_help = "JSON: {keys: [{name, fingerprint, created_ms, created}]}")]
    List,
    /// Revoke a write key: every node refuses it from then on
    #[command(after_help = "JSON: {name, revoked: true}")]
    Revoke {
        #[arg(value_name = "NAME")]
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum AudienceCommand {
    /// Check audience files without a node
    #[command(
        after_help = "FILE (YAML or JSON):\n  id: high-value-browsers\n  name: High-value browsers\n  condition: 'profile.ltv > 500 && events.count(\"Product Viewed\", duration(\"7d\")) >= 2'"
    )]
    Validate {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<std::path::PathBuf>,
    },
    /// Publish audience files; every existing customer is evaluated before this returns
    #[command(after_help = "JSON: [{file, id, version, evaluated, members}]")]
    Apply {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<std::path::PathBuf>,
    },
    /// List the audiences with their member counts
    #[command(after_help = "Columns: ID VERSION MEMBERS NAME CONDITION.\n\nJSON: {audiences: [{id, version, name, description, condition, members}]}")]
    List,
    /// How many customers are in an audience now (counted on every shard)
    #[command(after_help = "JSON: {id, count, per_shard: [{shard, count}]}")]
    Count {
        /// Audience id
        id: String,
    },
    /// A sample of an audience's members with their identities
    #[command(after_help = "JSON: {id, count, members: [{customer_id, identities: [{kind, value}]}]}")]
    Preview {
        /// Audience id
        id: String,
        /// Most members to show
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// List dead letters, oldest first
    #[command(
        after_help = "Columns: TIME KEY CUSTOMER CHANNEL TEMPLATE STATUS DETAIL.\n\nJSON: {letters: [{idempotency_key, customer_id, channel, template, journey, to, status, detail, at_ms, at, content}]}"
    )]
    List {
        /// Most per shard
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show one dead letter with its rendered message
    Show {
        /// The idempotency key (from `dlq list`)
        key: String,
    },
    /// Put dead letters back in the outbox (same idempotency keys, so a provider that
    /// honours keys still sends once)
    #[command(group(ArgGroup::new("which").required(true).multiple(false)))]
    Redrive {
        /// Idempotency keys
        #[arg(group = "which")]
        keys: Vec<String>,
        /// Every dead letter
        #[arg(long, group = "which")]
        all: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SettingsCommand {
    /// Print the settings in force as a settings file (edit it and `settings apply` it back)
    #[command(
        after_help = "JSON: {timezone, arbitration_window, defer_max, best_hour_default, caps: [{name, category, channels, max, window, calendar}], quiet_hours: {channel: \"21:00-08:00\"}}"
    )]
    Show,
    /// Check a settings file without a node
    #[command(after_help = "Each problem is printed as FILE:LINE: FIELD: MESSAGE. Exit code 1 if the file has problems.")]
    Validate {
        #[arg(value_name = "FILE")]
        file: std::path::PathBuf,
    },
    /// Validate a settings file and make it the cluster's settings (every shard)
    #[command(
        after_help = "FILE (YAML or JSON):\n  timezone: America/New_York\n  arbitration_window: 1s\n  defer_max: 3d\n  caps:\n    - { name: marketing-daily, max: 3, window: 24h }\n    - { name: sms-per-day, channels: [sms], max: 1, window: 1d, calendar: true }\n  quiet_hours:\n    sms: 21:00-08:00\n    push: 21:00-08:00\n\nKeys left out keep their defaults."
    )]
    Apply {
        #[arg(value_name = "FILE")]
        file: std::path::PathBuf,
    },
}

/// Channels a template can have a variant for.
pub const TEMPLATE_CHANNELS: [&str; 6] = ["email", "sms", "mms", "push", "in_app", "webhook"];

#[derive(Subcommand, Debug)]
pub enum TemplateCommand {
    /// Check template files (YAML or JSON) without a node: shape, Liquid syntax, unknown
    /// variables (strict mode), unsubscribe links, SMS segments and push lengths
    #[command(after_help = "Each problem is printed as FILE:LINE: FIELD: MESSAGE. Exit code 1 if any file has problems.\n\n\
JSON: [{file, valid, template, channels, locales, problems: [{line, path, message}]}]\n\nExample:\n  chorusctl template validate examples/templates/*.yaml")]
    Validate {
        /// Template files
        #[arg(required = true, value_name = "FILE")]
        files: Vec<std::path::PathBuf>,
    },
    /// Validate template files and publish each as a new version on the node; sends
    /// naming the template render with it from then on
    #[command(after_help = "JSON: [{file, id, version}]\n\nExample:\n  chorusctl template apply examples/templates/*.yaml")]
    Apply {
        /// Template files
        #[arg(required = true, value_name = "FILE")]
        files: Vec<std::path::PathBuf>,
    },
    /// List the templates on the node
    #[command(
        after_help = "Columns: ID VERSION CATEGORY CHANNELS LOCALES NAME.\n\nJSON: {templates: [{id, version, name, category, channels, locales, file}]}"
    )]
    List,
    /// Render one channel of a template for a sample customer, as it would be sent
    #[command(after_help = "PROFILE: the customer's attributes as a JSON object, or {\"customer_id\": \"cu_…\", \"attributes\": {...}} \
(the shape `journey simulate --profile` reads). Links are preview URLs under https://chorus.invalid/; click tracking is off.\n\n\
Exit codes: 0 rendered; 1 the template does not render for this customer (the error says why); 2 the file is invalid.\n\n\
JSON: {template, locale, channel, ...fields}: email {subject, preheader, html, text, headers}; sms {body, encoding, units, segments}; \
mms {body, media_url}; push {title, body, image, deep_link}; in_app {title, body, buttons: [{label, action}]}; webhook {url, method, headers, body}.\n\n\
Example:\n  chorusctl template render examples/templates/browse-recos.yaml --channel email --profile examples/traces/ada.json \\
    --event examples/traces/product-viewed.json --locale fr")]
    Render {
        /// The template file
        #[arg(value_name = "FILE")]
        file: std::path::PathBuf,
        /// Which variant to render
        #[arg(long, value_parser = TEMPLATE_CHANNELS)]
        channel: String,
        /// The customer's profile (JSON); default: no attributes
        #[arg(long, value_name = "P.json")]
        profile: Option<std::path::PathBuf>,
        /// Per-send variables (`vars.*`), a JSON object
        #[arg(long, value_name = "V.json")]
        vars: Option<std::path::PathBuf>,
        /// The triggering event's properties (`event.*`), a JSON object
        #[arg(long, value_name = "E.json")]
        event: Option<std::path::PathBuf>,
        /// Render in this locale (default: the profile's `locale` attribute), e.g. fr or fr-CA
        #[arg(long, value_name = "LOCALE")]
        locale: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum JourneyCommand {
    /// Check journey files (YAML or JSON) without a node: structure, step references,
    /// unreachable steps, cycles without a wait, channels, CEL expressions
    #[command(after_help = "Each problem is printed as FILE:LINE: FIELD: MESSAGE. Exit code 1 if any file has problems.\n\n\
JSON: [{file, valid, journey, steps, problems: [{line, path, message}]}]\n\nExample:\n  chorusctl journey validate journeys/*.yaml")]
    Validate {
        /// Journey files
        #[arg(required = true, value_name = "FILE")]
        files: Vec<std::path::PathBuf>,
    },
    /// Validate journey files and publish each as a new version on the node
    #[command(
        after_help = "JSON: [{file, id, version}]\n\nExample:\n  chorusctl journey apply examples/journeys/post-purchase.yaml examples/journeys/browse-abandon.yaml"
    )]
    Apply {
        /// Journey files (applied in order: a journey another one triggers goes first)
        #[arg(required = true, value_name = "FILE")]
        files: Vec<std::path::PathBuf>,
    },
    /// A journey's results: counters per version and step, conversions, revenue and
    /// treatment vs holdout lift with a 95% confidence interval
    #[command(after_help = "JSON: the JourneyStatsResponse fields: {id, entered, converted, revenue, holdout_entered, \
holdout_converted, treatment_rate, holdout_rate, absolute_lift, relative_lift, ci95: [low, high], counters: [{version, step, what, count, sum}], \
time_to_conversion: [{bucket, count, mean_ms}], top_paths: [{path, count}], exits: [{reason, count}]}")]
    Stats {
        /// Journey id
        id: String,
    },
    /// List the journeys on the node with their current version and lifecycle
    #[command(
        after_help = "Columns: ID VERSION STATE CATEGORY PRIORITY STEPS ENTRY NAME.\n\nJSON: {journeys: [{id, version, versions, lifecycle, name, category, priority, entry, steps}]}"
    )]
    List,
    /// Show one journey: lifecycle, stored versions and the latest definition
    #[command(after_help = "JSON: {id, version, versions, lifecycle, name, category, priority, entry, steps, definition}")]
    Show {
        /// Journey id
        id: String,
    },
    /// Pause a journey: no new entries; customers in flight hold at their next step
    Pause {
        /// Journey id
        id: String,
    },
    /// Resume a paused journey: held customers move on at once
    Resume {
        /// Journey id
        id: String,
    },
    /// Archive a journey: no new entries; customers in flight exit at their next step
    Archive {
        /// Journey id
        id: String,
    },
    /// Enroll a customer in a journey whose entry is `api: true`
    #[command(
        after_help = "JSON: {customer_id, journey}\n\nExample:\n  chorusctl journey enroll winback email:ada@example.com --properties '{\"offer\": \"10%\"}'"
    )]
    Enroll {
        /// Journey id
        journey: String,
        /// Customer id (cu_…) or identity as kind:value
        #[arg(value_name = "ID_OR_IDENTITY", value_parser = profile_target_arg)]
        target: ProfileTarget,
        /// The entry event's properties (a JSON object)
        #[arg(long, value_name = "JSON")]
        properties: Option<String>,
        /// Idempotency key (the same id enrolls once)
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Run a journey offline for one customer on a virtual clock over a trace of events
    /// and print every decision with its time and reason (the node's own core code)
    #[command(after_help = "TRACE: NDJSON, one event per line: {\"at\": \"2026-12-01T10:00:00Z\", \"event\": \"Product Viewed\", \"properties\": {...}}\n\
PROFILE: {\"attributes\": {\"ltv\": 900}, \"identities\": {\"email\": \"ada@example.com\"}, \"consent\": {\"sms\": \"opted_in\"}}\n\n\
JSON: one object per line: {at_ms, at, kind, text}; kind is event, timer, decision, send, timer-set or trigger.\n\n\
Example:\n  chorusctl journey simulate examples/journeys/browse-abandon.yaml --events trace.ndjson --profile ada.json --until 7d")]
    Simulate {
        /// The journey file
        #[arg(value_name = "FILE")]
        file: std::path::PathBuf,
        /// The event trace (NDJSON)
        #[arg(long, value_name = "TRACE.ndjson")]
        events: std::path::PathBuf,
        /// The customer's profile (JSON); default: an empty profile
        #[arg(long, value_name = "P.json")]
        profile: Option<std::path::PathBuf>,
        /// After the last event, keep the clock running this long so pending waits fire
        #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = duration_ms_arg)]
        until: i64,
        /// Cluster settings to simulate under (caps, quiet hours, time zone); default:
        /// the defaults of `chorusctl settings show` on a fresh node
        #[arg(long, value_name = "SETTINGS.yaml")]
        settings: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Form the cluster from the seed nodes: members, shards and where their replicas live
    #[command(
        long_about = "Form the cluster once, from the nodes listed as seeds in the [cluster] section of \
the node's configuration: every seed must be running and answer. Chorus records the members, creates the \
shards and spreads their replicas evenly. Run it against one of the first five nodes by id; later nodes \
join with `chorusctl node add`.",
        after_help = "Columns: NODE CLUSTER (node-to-node address) GRPC HTTP.\n\n\
JSON: {cluster_id, shard_count, replication, nodes: [{node_id, cluster_addr, grpc_addr, http_addr, draining}]}\n\n\
Example:\n  chorusctl --endpoint http://node1:7700 cluster init --shards 64 --replication 3"
    )]
    Init {
        /// How many shards to create (1-4096); this cannot be changed later
        #[arg(long, value_name = "N", value_parser = shard_count_arg)]
        shards: u32,
        /// Replicas of every shard (1-7); no more than the number of seed nodes
        #[arg(long, value_name = "R", default_value_t = REPLICATION_DEFAULT, value_parser = replication_arg)]
        replication: u32,
    },
    /// Show cluster id, nodes and their health, shard health, queued moves and the clock
    #[command(after_help = "On a cluster the report also has the replication factor, the placement leader, the \
leaderless and under-replicated shards and the queued moves (the first one is running).\n\n\
Columns: NODE CLUSTER GRPC HEALTHY VERSION LEADS FOLLOWS LAG (most log entries one of its replicas is behind) \
DRAINING; on a node running alone NODE GRPC HTTP VERSION HEALTHY LEADS FOLLOWS.\n\n\
JSON: {cluster_id, shard_count, clustered, replication, placement_leader, nodes: [{node_id, cluster_addr, \
grpc_addr, http_addr, version, healthy, shards_led, shards_followed, lag_max, draining}], leaderless_shards, \
under_replicated_shards, leaderless: [shard], under_replicated: [shard], moves: [{shard, from, to, running}], \
clock_mode, now_ms, now}. clustered is false for a node running alone; placement_leader is 0 when no leader \
is known.")]
    Status,
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// List the nodes with their addresses, health, shards led and followed, lag and draining
    #[command(after_help = "The node table of `cluster status`. Columns: NODE CLUSTER GRPC HEALTHY VERSION LEADS \
FOLLOWS LAG DRAINING.\n\nJSON: {clustered, nodes: [{node_id, cluster_addr, grpc_addr, http_addr, version, healthy, \
shards_led, shards_followed, lag_max, draining}]}")]
    List,
    /// Admit a started node to the cluster; it holds no replicas until moves give it some
    #[command(
        long_about = "Admit a node that is running with a [cluster] section but belongs to no cluster yet. \
Chorus asks the node at --addr who it is: its configured node id must be --id. The node holds no replicas \
until moves give it some: run `chorusctl shard rebalance` afterwards.",
        after_help = "JSON: {node: {node_id, cluster_addr, grpc_addr, http_addr, draining}}\n\n\
Example:\n  chorusctl node add --id 4 --addr node4:7900\n  chorusctl shard rebalance"
    )]
    Add {
        /// The node's id, as in its configuration (node_id); ids of removed nodes are never reused
        #[arg(long, value_name = "ID", value_parser = node_id_arg)]
        id: u64,
        /// The node's node-to-node address (its [cluster] advertise address), not its gRPC port
        #[arg(long, value_name = "HOST:PORT", value_parser = cluster_addr_arg)]
        addr: String,
    },
    /// Forget a node that holds no replica (drain it first); its id is never used again
    #[command(after_help = "JSON: {node_id, removed: true}\n\nExample:\n  chorusctl node drain 3   \
# wait until `chorusctl cluster status` shows no moves\n  chorusctl node remove 3")]
    Remove {
        /// Node id
        #[arg(value_name = "ID", value_parser = node_id_arg)]
        id: u64,
    },
    /// Mark a node draining and queue the moves that take every replica off it
    #[command(after_help = "A draining node gets no new replicas. The moves run one at a time: follow them with \
`chorusctl cluster status`, then remove the node with `chorusctl node remove ID`.\n\n\
Columns: SHARD FROM TO.\n\nJSON: {node_id, moves: [{shard, from, to}], queued}")]
    Drain {
        /// Node id
        #[arg(value_name = "ID", value_parser = node_id_arg)]
        id: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum ShardCommand {
    /// List every shard with its leader, raft term and applied index, and its load
    #[command(after_help = "Columns: SHARD LEADER TERM APPLIED ACTORS (live customer actors) CUSTOMERS TIMERS (pending) \
INTENTS (pending sends) QUARANTINED.\n\nJSON: {shards: [{shard, leader, voters, learners, term, last_log_index, \
applied_index, live_actors, customers, pending_timers, pending_intents, quarantined}]}")]
    List,
    /// Queue a move of one shard replica to another node
    #[command(after_help = "The replica catches up on the new node before the old one is removed; moves run one at \
a time (see `chorusctl cluster status`).\n\nColumns: SHARD FROM TO.\n\nJSON: {moves: [{shard, from, to}], queued}\n\n\
Example:\n  chorusctl shard move 12 --to 4 --from 2")]
    Move {
        /// Shard id (see `chorusctl shard list`)
        #[arg(value_name = "SHARD")]
        shard: u32,
        /// The node to move the replica to
        #[arg(long, value_name = "NODE", value_parser = node_id_arg)]
        to: u64,
        /// The node to move the replica from [default: the shard's replica on the node holding the most replicas]
        #[arg(long, value_name = "NODE", value_parser = node_id_arg)]
        from: Option<u64>,
    },
    /// Hand a shard's leadership to another of its voters; returns once it has
    #[command(after_help = "JSON: {shard, leader}\n\nExample:\n  chorusctl shard transfer-leader 12 --to 3")]
    TransferLeader {
        /// Shard id (see `chorusctl shard list`)
        #[arg(value_name = "SHARD")]
        shard: u32,
        /// The voter of the shard that should lead it
        #[arg(long, value_name = "NODE", value_parser = node_id_arg)]
        to: u64,
    },
    /// Plan the moves that spread replicas evenly over the nodes, and queue them
    #[command(after_help = "Columns: SHARD FROM TO.\n\nJSON: {dry_run, moves: [{shard, from, to}], queued}. queued is \
false for a dry run or when nothing needs to move.\n\nExamples:\n  chorusctl shard rebalance --dry-run\n  \
chorusctl shard rebalance")]
    Rebalance {
        /// Only print the plan; queue nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Drop every queued shard move (a move that cannot finish, or a plan changed)
    #[command(after_help = "The running move stops after its current step; a replica it added as a learner \
is removed again.\n\nColumns: SHARD FROM TO (the moves dropped).\n\nJSON: {moves: [{shard, from, to}], cancelled}.\n\n\
Example:\n  chorusctl shard cancel-moves")]
    CancelMoves,
}

#[derive(Subcommand, Debug)]
pub enum EventCommand {
    /// Send one event described by flags, or many from a file, and print each result
    #[command(
        long_about = "Send events through Ingest.Send in batches and print one result per event: accepted \
(with the customer id), duplicate (same message id seen before), or rejected (with the field and the reason). \
Ends with a summary line such as \"3 accepted, 1 duplicate, 1 rejected\". Exit code 1 if any event was rejected \
or could not be delivered.\n\n\
Events the node asks to retry (overload) are resent with backoff; message ids make resending safe.\n\n\
File format (--file): one JSON object, a JSON array of objects, or NDJSON (one object per line), each shaped like \
a Segment call:\n  \
{\"messageId\": \"m-1\", \"type\": \"track\", \"event\": \"Product Viewed\", \"userId\": \"42\", \"anonymousId\": \"a-1\",\n   \
\"email\": \"ada@example.com\", \"phone\": \"+14155550100\", \"identities\": [{\"kind\": \"device_id\", \"value\": \"d-9\"}],\n   \
\"properties\": {...}, \"traits\": {...}, \"context\": {...}, \"timestamp\": \"2026-11-27T10:00:00Z\"}\n\
snake_case names (message_id, user_id, anonymous_id, device_id) and \"name\" for \"event\" are accepted too; a numeric \
timestamp is Unix milliseconds. Segment envelope fields (sentAt, receivedAt, integrations, ...) are ignored; other \
unknown fields are reported as warnings. Events without a message id get a generated one, so sending such a file \
twice applies its events twice.",
        after_help = "Examples:\n  \
chorusctl event send --name 'Product Viewed' --user-id 42 --properties '{\"sku\":\"A1\",\"price\":19.5}'\n  \
chorusctl event send --type identify --anonymous-id a-1 --email ada@example.com --traits '{\"first_name\":\"Ada\"}'\n  \
chorusctl event send --file events.ndjson --batch-size 1000 -q\n  \
cat events.json | chorusctl event send --file - -o json\n\n\
JSON: {results: [{index, line, message_id, status, customer_id, field, error}], summary: {total, accepted, duplicate, \
rejected, retry, unanswered}}. status is accepted, duplicate, rejected, retry (still refused after --retries \
attempts) or unanswered."
    )]
    Send(Box<SendArgs>),
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("single").multiple(true)))]
pub struct SendArgs {
    /// Read events from this file (`-` for stdin): a JSON object, a JSON array or NDJSON
    #[arg(long, short = 'f', value_name = "PATH", conflicts_with = "single")]
    pub file: Option<String>,

    /// Event type [default: track]
    #[arg(long = "type", value_name = "TYPE", value_parser = EVENT_TYPES, group = "single")]
    pub event_type: Option<String>,

    /// Event name (required for track; the page or screen name for page/screen)
    #[arg(long, visible_alias = "event", value_name = "NAME", group = "single")]
    pub name: Option<String>,

    /// The customer's user id (strongest identity)
    #[arg(long, value_name = "ID", group = "single")]
    pub user_id: Option<String>,

    /// An anonymous (device or browser) id
    #[arg(long, value_name = "ID", group = "single")]
    pub anonymous_id: Option<String>,

    /// An email address
    #[arg(long, value_name = "EMAIL", group = "single")]
    pub email: Option<String>,

    /// A phone number (E.164 preferred, e.g. +14155550100)
    #[arg(long, value_name = "PHONE", group = "single")]
    pub phone: Option<String>,

    /// Any identity as kind=value (repeatable), e.g. device_id=d-9 or push_token=abc
    #[arg(long, value_name = "KIND=VALUE", value_parser = identity_arg, group = "single")]
    pub identity: Vec<IdentityArg>,

    /// Event properties as a JSON object
    #[arg(long, value_name = "JSON", value_parser = json_object_arg, group = "single")]
    pub properties: Option<Map<String, Value>>,

    /// Customer traits (profile attributes) as a JSON object
    #[arg(long, value_name = "JSON", value_parser = json_object_arg, group = "single")]
    pub traits: Option<Map<String, Value>>,

    /// Event context (locale, ip, device, ...) as a JSON object
    #[arg(long, value_name = "JSON", value_parser = json_object_arg, group = "single")]
    pub context: Option<Map<String, Value>>,

    /// Idempotency key [default: a generated unique id]
    #[arg(long, value_name = "ID", group = "single")]
    pub message_id: Option<String>,

    /// When the event happened: RFC 3339 (2026-11-27T10:00:00Z) or Unix milliseconds
    #[arg(long, value_name = "TIME", value_parser = time_arg, group = "single")]
    pub timestamp: Option<i64>,

    /// Events per request
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=BATCH_SIZE_MAX), value_name = "N")]
    pub batch_size: u64,

    /// How many times to resend events the node asked to retry (overload, restart)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=RETRIES_MAX), value_name = "N")]
    pub retries: u64,

    /// Print only events that were not accepted (in tables and JSON), and the summary
    #[arg(long, short = 'q')]
    pub quiet: bool,

    /// Parse and print the events as NDJSON (with their message ids) without sending
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Subcommand, Debug)]
pub enum ProfileCommand {
    /// Show one customer: identities, attributes, consent, merges and recent events
    #[command(after_help = "ID_OR_IDENTITY is a customer id (cu_ followed by 16 hex digits) or kind:value, e.g. \
email:ada@example.com, user_id:42, phone:+14155550100, anonymous_id:a-1.\n\n\
JSON: {customer_id, shard, identities: [{kind, value}], attributes: {...}, consent: {...}, created_ms, created, \
updated_ms, updated, event_count, merged_from: [...], merged_into (null unless merged away), \
recent_events: [{message_id, type, name, timestamp_ms, timestamp, received_ms, received, properties: {...}}]}")]
    Get {
        /// Customer id (cu_…) or identity as kind:value
        #[arg(value_name = "ID_OR_IDENTITY", value_parser = profile_target_arg)]
        target: ProfileTarget,
        /// How many recent events to show (0 = none)
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=PROFILE_EVENTS_MAX as i64), value_name = "N")]
        events: u32,
    },
    /// Find a customer by one identity (same output as `profile get`)
    #[command(after_help = "Examples:\n  chorusctl profile find --email ada@example.com\n  \
chorusctl profile find --identity device_id=d-9 -o json")]
    Find(FindArgs),
    /// Show the decision log: why messages were sent, skipped, deferred or journeys entered and exited
    #[command(after_help = "Columns: TIME KIND REASON DETAIL (a JSON detail is shown as key=value pairs).\n\n\
JSON: {customer_id, decisions: [{at_ms, at, kind, reason, detail}]} (detail is the text the node recorded).")]
    Explain {
        /// Customer id (cu_…) or identity as kind:value
        #[arg(value_name = "ID_OR_IDENTITY", value_parser = profile_target_arg)]
        target: ProfileTarget,
        /// Only decisions about this journey
        #[arg(long, value_name = "JOURNEY")]
        journey: Option<String>,
        /// Most decisions to show
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=EXPLAIN_LIMIT_MAX as i64), value_name = "N")]
        limit: u32,
    },
    /// Show a customer's consent per channel and topic with the full ledger of changes
    /// (`profile consent ID`), or change it (`profile consent set ID ...`)
    #[command(
        args_conflicts_with_subcommands = true,
        after_help = "Columns: SCOPE STATUS SINCE SOURCE, then the ledger: TIME SCOPE STATUS SOURCE EVIDENCE.\n\n\
JSON: {customer_id, current: [{scope, status, at_ms, at, source}], ledger: [{at_ms, at, scope, status, source, evidence}]}"
    )]
    Consent(ConsentArgs),
}

#[derive(Args, Debug)]
pub struct ConsentArgs {
    #[command(subcommand)]
    pub command: Option<ConsentCommand>,
    /// Customer id (cu_…) or identity as kind:value
    #[arg(value_name = "ID_OR_IDENTITY", value_parser = profile_target_arg)]
    pub target: Option<ProfileTarget>,
}

#[derive(Subcommand, Debug)]
pub enum ConsentCommand {
    /// Set one channel's or topic's consent (recorded with source `api`); an opt-out
    /// cancels pending sends on that channel at once
    #[command(group(ArgGroup::new("scope").required(true).multiple(false)), after_help = "Examples:\n  chorusctl profile consent set email:ada@example.com --channel sms --status opted_out --evidence \"support ticket 42\"\n  chorusctl profile consent set user_id:42 --topic promotions --status opted_in")]
    Set {
        /// Customer id (cu_…) or identity as kind:value
        #[arg(value_name = "ID_OR_IDENTITY", value_parser = profile_target_arg)]
        target: ProfileTarget,
        /// The channel (email, sms, mms, push, in_app, web, media, webhook)
        #[arg(long, group = "scope")]
        channel: Option<String>,
        /// The topic (subscription group), e.g. promotions
        #[arg(long, group = "scope")]
        topic: Option<String>,
        /// opted_in, opted_out or unknown
        #[arg(long, value_parser = ["opted_in", "opted_out", "unknown"])]
        status: String,
        /// Why: a form, a ticket, an IP address (kept in the ledger)
        #[arg(long, default_value = "")]
        evidence: String,
        /// Idempotency key (the same id is applied once)
        #[arg(long)]
        request_id: Option<String>,
    },
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("by").required(true).multiple(false)))]
pub struct FindArgs {
    /// Find by email address
    #[arg(long, value_name = "EMAIL", group = "by")]
    pub email: Option<String>,
    /// Find by user id
    #[arg(long, value_name = "ID", group = "by")]
    pub user_id: Option<String>,
    /// Find by phone number
    #[arg(long, value_name = "PHONE", group = "by")]
    pub phone: Option<String>,
    /// Find by anonymous id
    #[arg(long, value_name = "ID", group = "by")]
    pub anonymous_id: Option<String>,
    /// Find by any identity, as kind=value
    #[arg(long, value_name = "KIND=VALUE", value_parser = identity_arg, group = "by")]
    pub identity: Option<IdentityArg>,
    /// How many recent events to show (0 = none)
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=PROFILE_EVENTS_MAX as i64), value_name = "N")]
    pub events: u32,
}

impl FindArgs {
    /// The one identity given (clap guarantees exactly one).
    pub fn target(&self) -> ProfileTarget {
        let pick =
            |kind: &str, v: &Option<String>| v.as_ref().map(|value| ProfileTarget::Identity(IdentityArg { kind: kind.to_string(), value: value.clone() }));
        pick("email", &self.email)
            .or_else(|| pick("user_id", &self.user_id))
            .or_else(|| pick("phone", &self.phone))
            .or_else(|| pick("anonymous_id", &self.anonymous_id))
            .or_else(|| self.identity.clone().map(ProfileTarget::Identity))
            .expect("clap requires exactly one identity flag")
    }
}

#[derive(Subcommand, Debug)]
pub enum MessagesCommand {
    /// Send (or schedule) a message to a customer through the engine (consent and
    /// contact point are checked; the decision is in `profile explain`)
    #[command(after_help = "JSON: {index, status, customer_id, at_ms, at, field, error}. status: queued | scheduled | \
duplicate | rejected | not_found | retry.\n\nExamples:\n  chorusctl messages send --to email:ada@example.com --channel email \
--template welcome --category transactional\n  chorusctl messages send --to user_id:42 --channel sms --template reminder --in 24h \
--request-id reminder-42")]
    Send {
        /// The customer: a customer id or kind:value
        #[arg(long, value_name = "ID_OR_IDENTITY", value_parser = profile_target_arg)]
        to: ProfileTarget,
        /// email, sms, mms, push, in_app, web, media or webhook
        #[arg(long)]
        channel: String,
        /// Template id
        #[arg(long)]
        template: String,
        /// marketing (default) or transactional
        #[arg(long, default_value = "marketing")]
        category: String,
        /// Template variables as a JSON object
        #[arg(long, value_name = "JSON")]
        vars: Option<String>,
        /// Subscription topic (a marketing send honours its opt-out)
        #[arg(long, default_value = "")]
        topic: String,
        /// Idempotency id: the same id is sent once (default: generated)
        #[arg(long)]
        request_id: Option<String>,
        /// Send at this time (RFC 3339 or Unix ms) instead of now
        #[arg(long, value_name = "TIME", value_parser = time_arg, conflicts_with = "in_")]
        at: Option<i64>,
        /// Send after this delay (by the node's clock), e.g. 24h
        #[arg(long = "in", id = "in_", value_name = "DURATION", value_parser = duration_ms_arg)]
        in_: Option<i64>,
    },
    /// Print the most recent captured messages, and with --follow new ones as they are captured
    #[command(after_help = "Columns: SEQ TIME CUSTOMER CHANNEL JOURNEY TEMPLATE TO [BODY].\n\n\
JSON: one object per line (NDJSON): {seq, at_ms, at, customer_id, channel, journey, template, to, \
idempotency_key, body: {...}}.\n\nExamples:\n  chorusctl messages tail --last 50\n  \
chorusctl messages tail -f --customer email:ada@example.com -o json")]
    Tail {
        /// How many of the most recent messages to print first
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=TAIL_LAST_MAX as i64), value_name = "N")]
        last: u32,
        /// Keep running and print new messages as they are captured (Ctrl-C to stop)
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only messages to this customer: a customer id or kind:value
        #[arg(long, value_name = "ID_OR_IDENTITY", value_parser = profile_target_arg)]
        customer: Option<ProfileTarget>,
        /// Also show each message's rendered body (compact JSON) in the table
        #[arg(long)]
        body: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClockCommand {
    /// Show the clock mode (system or manual) and the cluster's current time
    #[command(after_help = "JSON: {mode, now_ms, now}")]
    Show,
    /// Move the manual clock forward, firing every timer that falls due
    #[command(after_help = "DURATION: a number and a unit, parts add up: 500ms, 30s, 90m, 24h, 7d, 2w, 1h30m.\n\nJSON: {mode, now_ms, now}")]
    Advance {
        /// How far to move, e.g. 24h, 90m, 7d, 1h30m, 500ms
        #[arg(value_name = "DURATION", value_parser = duration_ms_arg)]
        by_ms: i64,
    },
    /// Set the manual clock to a time (it never moves backwards)
    #[command(after_help = "TIME: RFC 3339 (2026-11-27T10:00:00Z or with an offset), a date (midnight UTC) or Unix \
milliseconds.\n\nJSON: {mode, now_ms, now}")]
    Set {
        /// The new time: RFC 3339 or Unix milliseconds
        #[arg(value_name = "TIME", value_parser = time_arg)]
        to_ms: i64,
    },
}

/// An identity given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityArg {
    pub kind: String,
    pub value: String,
}

/// Which customer a command is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProfileTarget {
    CustomerId(String),
    Identity(IdentityArg),
}

const CUSTOMER_ID_PREFIX: &str = "cu_";
const CUSTOMER_ID_HEX_LEN: usize = 16;
const TARGET_FORMS: &str = "give a customer id (cu_ followed by 16 hex digits) or an identity as kind:value, \
e.g. email:ada@example.com or user_id:42";

/// `kind=value` (or `kind:value`): the kind is everything before the first `=` or `:`.
pub fn identity_arg(text: &str) -> Result<IdentityArg, String> {
    split_identity(text).ok_or_else(|| format!("{text:?} is not an identity: use kind=value, e.g. email=ada@example.com, user_id=42 or device_id=d-9"))
}

/// A customer id (`cu_` + 16 hex digits) or an identity as `kind:value` (or `kind=value`).
pub fn profile_target_arg(text: &str) -> Result<ProfileTarget, String> {
    let t = text.trim();
    if let Some(hex) = t.strip_prefix(CUSTOMER_ID_PREFIX)
        && !t.contains([':', '='])
    {
        if hex.len() == CUSTOMER_ID_HEX_LEN && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(ProfileTarget::CustomerId(t.to_ascii_lowercase()));
        }
        return Err(format!("{text:?} is not a customer id: expected cu_ followed by 16 hex digits, e.g. cu_0001000000000001"));
    }
    if let Some(identity) = split_identity(t) {
        return Ok(ProfileTarget::Identity(identity));
    }
    let guess = if t.contains('@') {
        format!("; did you mean email:{t}?")
    } else if t.starts_with('+') && t[1..].bytes().all(|b| b.is_ascii_digit() || b == b' ' || b == b'-') {
        format!("; did you mean phone:{t}?")
    } else {
        String::new()
    };
    Err(format!("{text:?} names no customer: {TARGET_FORMS}{guess}"))
}

fn split_identity(text: &str) -> Option<IdentityArg> {
    let t = text.trim();
    let at = t.find([':', '='])?;
    let (kind, value) = (&t[..at], t[at + 1..].trim());
    let kind_ok = !kind.is_empty() && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !kind_ok || value.is_empty() {
        return None;
    }
    Some(IdentityArg { kind: kind.to_string(), value: value.to_string() })
}

/// A JSON object given inline.
pub fn json_object_arg(text: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!("expected a JSON object like '{{\"sku\":\"A1\"}}', got {}", json_kind(&other))),
        Err(e) => Err(format!("invalid JSON ({e}); quote it for the shell, e.g. '{{\"sku\":\"A1\",\"price\":19.5}}'")),
    }
}

pub use chorus_types::json::json_kind;

/// A node id: a whole number from 1 (0 is reserved).
pub fn node_id_arg(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("node ids start at 1 (0 is reserved)".to_string()),
        Ok(id) => Ok(id),
        Err(_) => Err(format!("{text:?} is not a node id: give a whole number such as 3 (see `chorusctl node list`)")),
    }
}

/// `cluster init --shards`: 1 to [`CLUSTER_SHARDS_MAX`].
fn shard_count_arg(text: &str) -> Result<u32, String> {
    whole_in_range(text, 1, CLUSTER_SHARDS_MAX, "shards")
}

/// `cluster init --replication`: 1 to [`REPLICATION_MAX`].
fn replication_arg(text: &str) -> Result<u32, String> {
    whole_in_range(text, 1, REPLICATION_MAX, "replicas")
}

fn whole_in_range(text: &str, min: u32, max: u32, what: &str) -> Result<u32, String> {
    match text.trim().parse::<u64>() {
        Ok(n) if n >= u64::from(min) && n <= u64::from(max) => Ok(n as u32),
        Ok(n) => Err(format!("give {min} to {max} {what}, not {n}")),
        Err(_) => Err(format!("{text:?} is not a whole number: give {min} to {max} {what}")),
    }
}

/// A node-to-node address, `host:port` (no scheme), as nodes check `cluster.advertise`.
pub fn cluster_addr_arg(text: &str) -> Result<String, String> {
    let t = text.trim();
    if let Some((scheme, rest)) = t.split_once("://") {
        return Err(format!("give host:port without a scheme, e.g. {rest} instead of {scheme}://{rest}"));
    }
    match t.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.contains(char::is_whitespace) && port.parse::<u16>().is_ok_and(|p| p != 0) => Ok(t.to_string()),
        _ => Err(format!("{text:?} is not host:port: give the node's [cluster] advertise address, e.g. node4:7900")),
    }
}

fn duration_arg(text: &str) -> Result<Duration, String> {
    let ms = timefmt::parse_duration_ms(text)?;
    if ms == 0 {
        return Err("must be more than 0".to_string());
    }
    Ok(Duration::from_millis(ms as u64))
}

fn duration_ms_arg(text: &str) -> Result<i64, String> {
    timefmt::parse_duration_ms(text)
}

fn time_arg(text: &str) -> Result<i64, String> {
    timefmt::parse_time_ms(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn ident(kind: &str, value: &str) -> IdentityArg {
        IdentityArg { kind: kind.into(), value: value.into() }
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("chorusctl").chain(args.iter().copied()))
    }

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn identity_arguments_split_at_the_first_separator() {
        assert_eq!(identity_arg("email=ada@example.com"), Ok(ident("email", "ada@example.com")));
        assert_eq!(identity_arg("user_id:42"), Ok(ident("user_id", "42")));
        assert_eq!(identity_arg("device_id=ab:cd=ef"), Ok(ident("device_id", "ab:cd=ef")));
        assert_eq!(identity_arg("phone=+1 415 555 0100"), Ok(ident("phone", "+1 415 555 0100")));
        for bad in ["ada@example.com", "=x", "email=", "e mail=x", ""] {
            assert!(identity_arg(bad).unwrap_err().contains("kind=value"), "{bad}");
        }
    }

    #[test]
    fn profile_targets_are_customer_ids_or_identities() {
        assert_eq!(profile_target_arg("cu_0001000000000001"), Ok(ProfileTarget::CustomerId("cu_0001000000000001".into())));
        assert_eq!(profile_target_arg("cu_00010000000000AB"), Ok(ProfileTarget::CustomerId("cu_00010000000000ab".into())));
        assert_eq!(profile_target_arg("email:ada@example.com"), Ok(ProfileTarget::Identity(ident("email", "ada@example.com"))));
        assert_eq!(profile_target_arg("user_id:42"), Ok(ProfileTarget::Identity(ident("user_id", "42"))));
        assert_eq!(profile_target_arg("user_id=42"), Ok(ProfileTarget::Identity(ident("user_id", "42"))));
        assert!(profile_target_arg("cu_12").unwrap_err().contains("16 hex digits"));
        assert!(profile_target_arg("cu_000100000000000g").unwrap_err().contains("16 hex digits"));
        assert!(profile_target_arg("ada@example.com").unwrap_err().contains("did you mean email:ada@example.com?"));
        assert!(profile_target_arg("+14155550100").unwrap_err().contains("did you mean phone:+14155550100?"));
        assert!(profile_target_arg("42").unwrap_err().contains("kind:value"));
    }

    #[test]
    fn json_object_flags_must_be_objects() {
        assert_eq!(json_object_arg("{\"a\":1}").unwrap()["a"], 1);
        assert!(json_object_arg("[1]").unwrap_err().contains("got an array"));
        assert!(json_object_arg("{a:1}").unwrap_err().contains("invalid JSON"));
    }

    #[test]
    fn globals_work_before_and_after_the_command() {
        let cli = parse(&["-o", "json", "shard", "list"]).unwrap();
        assert_eq!(cli.output, Format::Json);
        let cli = parse(&["shard", "list", "--output", "json", "--endpoint", "http://n1:7700", "--timeout", "5s"]).unwrap();
        assert_eq!(cli.output, Format::Json);
        assert_eq!(cli.endpoint, "http://n1:7700");
        assert_eq!(cli.timeout, Duration::from_secs(5));
        assert!(parse(&["shard", "list", "-o", "yaml"]).is_err());
        assert!(parse(&["shard", "list", "--timeout", "0s"]).is_err());
    }

    #[test]
    fn event_send_takes_flags_or_a_file_but_not_both() {
        let cli = parse(&[
            "event",
            "send",
            "--name",
            "Product Viewed",
            "--user-id",
            "42",
            "--identity",
            "device_id=d-1",
            "--identity",
            "email=a@b.c",
            "--properties",
            "{\"sku\":\"A1\"}",
            "--timestamp",
            "2026-11-27T10:00:00Z",
        ])
        .unwrap();
        let Command::Event { command: EventCommand::Send(args) } = cli.command else { panic!("not event send") };
        assert_eq!(args.identity, vec![ident("device_id", "d-1"), ident("email", "a@b.c")]);
        assert_eq!(args.timestamp, Some(1_795_773_600_000));
        assert_eq!(args.batch_size, 500);
        assert!(parse(&["event", "send", "--file", "x.ndjson", "--user-id", "42"]).is_err());
        assert!(parse(&["event", "send", "--file", "x.ndjson", "--batch-size", "100", "-q"]).is_ok());
        assert!(parse(&["event", "send", "--type", "purchase"]).is_err());
        assert!(parse(&["event", "send", "--properties", "[]"]).is_err());
        assert!(parse(&["event", "send", "--batch-size", "0"]).is_err());
    }

    #[test]
    fn profile_find_needs_exactly_one_identity() {
        let cli = parse(&["profile", "find", "--email", "ada@example.com"]).unwrap();
        let Command::Profile { command: ProfileCommand::Find(find) } = cli.command else { panic!("not find") };
        assert_eq!(find.target(), ProfileTarget::Identity(ident("email", "ada@example.com")));
        let cli = parse(&["profile", "find", "--identity", "device_id=d-9"]).unwrap();
        let Command::Profile { command: ProfileCommand::Find(find) } = cli.command else { panic!("not find") };
        assert_eq!(find.target(), ProfileTarget::Identity(ident("device_id", "d-9")));
        assert!(parse(&["profile", "find"]).is_err());
        assert!(parse(&["profile", "find", "--email", "a@b.c", "--user-id", "1"]).is_err());
    }

    #[test]
    fn cluster_init_takes_shards_and_a_replication_that_defaults_to_3() {
        let cli = parse(&["cluster", "init", "--shards", "64"]).unwrap();
        assert!(matches!(cli.command, Command::Cluster { command: ClusterCommand::Init { shards: 64, replication: REPLICATION_DEFAULT } }));
        let cli = parse(&["cluster", "init", "--shards", "4096", "--replication", "1"]).unwrap();
        assert!(matches!(cli.command, Command::Cluster { command: ClusterCommand::Init { shards: 4096, replication: 1 } }));
        for bad in [&["cluster", "init"][..], &["cluster", "init", "--shards", "0"], &["cluster", "init", "--shards", "4097"]] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&["cluster", "init", "--shards", "8", "--replication", "0"]).is_err());
        assert!(parse(&["cluster", "init", "--shards", "8", "--replication", "8"]).is_err());
        assert_eq!(shard_count_arg("0"), Err("give 1 to 4096 shards, not 0".into()));
        assert_eq!(shard_count_arg("many"), Err("\"many\" is not a whole number: give 1 to 4096 shards".into()));
    }

    #[test]
    fn node_ids_start_at_1_and_addresses_are_host_port() {
        assert_eq!(node_id_arg("7"), Ok(7));
        assert!(node_id_arg("0").unwrap_err().contains("start at 1"));
        assert!(node_id_arg("n1").unwrap_err().contains("not a node id"));
        assert_eq!(cluster_addr_arg("node4:7900"), Ok("node4:7900".into()));
        assert_eq!(cluster_addr_arg("[::1]:7900"), Ok("[::1]:7900".into()));
        assert!(cluster_addr_arg("http://node4:7900").unwrap_err().contains("node4:7900 instead of http://node4:7900"));
        for bad in ["node4", ":7900", "node4:", "node4:0", "node4:99999", "no de:7900", ""] {
            assert!(cluster_addr_arg(bad).unwrap_err().contains("is not host:port"), "{bad}");
        }
        let cli = parse(&["node", "add", "--id", "4", "--addr", "node4:7900"]).unwrap();
        let Command::Node { command: NodeCommand::Add { id, addr } } = cli.command else { panic!("not node add") };
        assert_eq!((id, addr.as_str()), (4, "node4:7900"));
        assert!(parse(&["node", "add", "--id", "4"]).is_err());
        assert!(parse(&["node", "add", "--addr", "node4:7900"]).is_err());
        assert!(matches!(parse(&["node", "drain", "3"]).unwrap().command, Command::Node { command: NodeCommand::Drain { id: 3 } }));
        assert!(matches!(parse(&["node", "remove", "3"]).unwrap().command, Command::Node { command: NodeCommand::Remove { id: 3 } }));
        assert!(matches!(parse(&["node", "list"]).unwrap().command, Command::Node { command: NodeCommand::List }));
        assert!(parse(&["node", "remove"]).is_err());
        assert!(parse(&["node", "drain", "0"]).is_err());
    }

    #[test]
    fn shard_commands_name_a_shard_and_nodes() {
        let cli = parse(&["shard", "move", "12", "--to", "4"]).unwrap();
        assert!(matches!(cli.command, Command::Shard { command: ShardCommand::Move { shard: 12, to: 4, from: None } }));
        let cli = parse(&["shard", "move", "12", "--to", "4", "--from", "2"]).unwrap();
        assert!(matches!(cli.command, Command::Shard { command: ShardCommand::Move { shard: 12, to: 4, from: Some(2) } }));
        assert!(parse(&["shard", "move", "12"]).is_err());
        assert!(parse(&["shard", "move", "--to", "4"]).is_err());
        assert!(parse(&["shard", "move", "12", "--to", "0"]).is_err());
        assert!(parse(&["shard", "move", "-1", "--to", "4"]).is_err());
        let cli = parse(&["shard", "transfer-leader", "0", "--to", "3"]).unwrap();
        assert!(matches!(cli.command, Command::Shard { command: ShardCommand::TransferLeader { shard: 0, to: 3 } }));
        assert!(parse(&["shard", "transfer-leader", "0"]).is_err());
        let cli = parse(&["shard", "rebalance", "--dry-run"]).unwrap();
        assert!(matches!(cli.command, Command::Shard { command: ShardCommand::Rebalance { dry_run: true } }));
        let cli = parse(&["shard", "rebalance"]).unwrap();
        assert!(matches!(cli.command, Command::Shard { command: ShardCommand::Rebalance { dry_run: false } }));
        let cli = Cli::try_parse_from(["chorusctl", "shard", "cancel-moves"]).unwrap();
        assert!(matches!(cli.command, Command::Shard { command: ShardCommand::CancelMoves }));
        assert!(matches!(parse(&["shard", "list"]).unwrap().command, Command::Shard { command: ShardCommand::List }));
    }

    #[test]
    fn clock_arguments_parse_durations_and_times() {
        let cli = parse(&["clock", "advance", "1h30m"]).unwrap();
        assert!(matches!(cli.command, Command::Clock { command: ClockCommand::Advance { by_ms: 5_400_000 } }));
        let cli = parse(&["clock", "set", "1795773600000"]).unwrap();
        assert!(matches!(cli.command, Command::Clock { command: ClockCommand::Set { to_ms: 1_795_773_600_000 } }));
        assert!(parse(&["clock", "advance", "24"]).is_err());
        assert!(parse(&["clock", "set", "tomorrow"]).is_err());
    }
}
