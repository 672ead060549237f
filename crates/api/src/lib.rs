//! Chorus's public interfaces: gRPC services ([`grpc`]) and the HTTP server ([`http`]).
//! They translate between wire formats and domain types and call `chorus-shard`;
//! they make no decisions. Errors become statuses only through `chorus_proto`.

pub mod convert;
pub mod error;
pub mod grpc;
pub mod http;
pub mod keys;
pub mod tracking;
pub mod twilio;

pub use error::ApiError;

/// Settings of the public interfaces.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Segment write keys accepted on the HTTP API; empty accepts any non-empty key
    /// (development default).
    pub write_keys: Vec<String>,
    /// Most events in one gRPC request or Segment batch.
    pub batch_events_max: usize,
    /// Most batches of one `Ingest.Stream` being processed at once.
    pub stream_batches_in_flight_max: usize,
    pub version: String,
    pub grpc_addr: String,
    pub http_addr: String,
    /// Verifies engagement-tracking tokens (the same key the decision core signs with).
    pub tracking: chorus_engine::render::TrackingConfig,
    /// Serve Twilio's webhooks (inbound SMS, status callbacks) when Twilio is configured.
    pub twilio: Option<std::sync::Arc<twilio::TwilioWebhookConfig>>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            write_keys: Vec::new(),
            batch_events_max: 10_000,
            stream_batches_in_flight_max: 16,
            version: env!("CARGO_PKG_VERSION").to_string(),
            grpc_addr: String::new(),
            http_addr: String::new(),
            tracking: Default::default(),
            twilio: None,
        }
    }
}
