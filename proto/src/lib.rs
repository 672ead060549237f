//! Chorus gRPC protocol types (generated) and the one place errors become gRPC
//! statuses. Domain crates never see prost types or `tonic::Status`.

#[allow(clippy::all)]
pub mod v1 {
    tonic::include_proto!("chorus.v1");
}

/// The node-to-node protocol (raft transport and forwarding); used by chorus-raft only.
#[allow(clippy::all)]
pub mod internal {
    tonic::include_proto!("chorus.internal.v1");
}

/// How an error should be reported to a client, independent of transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    FailedPrecondition,
    Internal,
    Unauthenticated,
}

/// Implemented by every service-facing error.
pub trait ServiceError: std::fmt::Display {
    fn error_code(&self) -> ErrorCode;
}

/// The single error → gRPC status mapping.
pub fn to_status<E: ServiceError>(err: &E) -> tonic::Status {
    let msg = err.to_string();
    match err.error_code() {
        ErrorCode::InvalidArgument => tonic::Status::invalid_argument(msg),
        ErrorCode::NotFound => tonic::Status::not_found(msg),
        ErrorCode::ResourceExhausted => tonic::Status::resource_exhausted(msg),
        ErrorCode::Unavailable => tonic::Status::unavailable(msg),
        ErrorCode::FailedPrecondition => tonic::Status::failed_precondition(msg),
        ErrorCode::Internal => tonic::Status::internal(msg),
        ErrorCode::Unauthenticated => tonic::Status::unauthenticated(msg),
    }
}

/// The matching HTTP status code for the same error classes.
pub fn http_status(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::InvalidArgument => 400,
        ErrorCode::Unauthenticated => 401,
        ErrorCode::NotFound => 404,
        ErrorCode::FailedPrecondition => 409,
        ErrorCode::ResourceExhausted => 429,
        ErrorCode::Unavailable => 503,
        ErrorCode::Internal => 500,
    }
}
