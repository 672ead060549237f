//! API errors and their classification (the status mapping itself lives in chorus-proto).

use chorus_proto::{ErrorCode, ServiceError};
use chorus_shard::ShardError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Overloaded(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidArgument { field: field.into(), message: message.into() }
    }
}

impl ServiceError for ApiError {
    fn error_code(&self) -> ErrorCode {
        match self {
            ApiError::InvalidArgument { .. } => ErrorCode::InvalidArgument,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::Overloaded(_) => ErrorCode::ResourceExhausted,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            ApiError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<ShardError> for ApiError {
    fn from(e: ShardError) -> Self {
        match &e {
            ShardError::Overloaded { .. } => ApiError::Overloaded(e.to_string()),
            ShardError::Unavailable { .. } | ShardError::ShuttingDown => ApiError::Unavailable(e.to_string()),
            ShardError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            ShardError::Clock(chorus_shard::ClockError::NotManual) => ApiError::FailedPrecondition(e.to_string()),
            ShardError::Clock(chorus_shard::ClockError::Backwards { .. }) => ApiError::invalid("clock", e.to_string()),
            ShardError::Raft(r) if r.is_retryable() => ApiError::Unavailable(e.to_string()),
            ShardError::NotInitialized | ShardError::NoReplica { .. } | ShardError::Cluster(_) => ApiError::FailedPrecondition(e.to_string()),
            _ => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        chorus_proto::to_status(&e)
    }
}
