//! The API's error kinds. They travel through the Raft log as the outcome of a command, so
//! every node answers the same request with the same error.

use serde::{Deserialize, Serialize};

/// The App Mesh exception shapes that shoal returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request is malformed or violates the model (400).
    BadRequest,
    /// The named resource does not exist (404).
    NotFound,
    /// The resource already exists, or a client token was reused with a different request (409).
    Conflict,
    /// The resource is still referred to by others (409).
    ResourceInUse,
    /// A limit would be exceeded (400).
    LimitExceeded,
    /// Too many tags on one resource (400).
    TooManyTags,
    /// The caller may not do this (403).
    Forbidden,
    /// The control plane cannot serve the request now, e.g. no Raft leader (503).
    ServiceUnavailable,
    /// A bug or storage failure (500).
    InternalServerError,
}

impl ErrorKind {
    /// The exception's name as botocore expects it in `x-amzn-ErrorType`.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "BadRequestException",
            ErrorKind::NotFound => "NotFoundException",
            ErrorKind::Conflict => "ConflictException",
            ErrorKind::ResourceInUse => "ResourceInUseException",
            ErrorKind::LimitExceeded => "LimitExceededException",
            ErrorKind::TooManyTags => "TooManyTagsException",
            ErrorKind::Forbidden => "ForbiddenException",
            ErrorKind::ServiceUnavailable => "ServiceUnavailableException",
            ErrorKind::InternalServerError => "InternalServerErrorException",
        }
    }

    /// The HTTP status the model gives the exception.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::BadRequest | ErrorKind::LimitExceeded | ErrorKind::TooManyTags => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict | ErrorKind::ResourceInUse => 409,
            ErrorKind::Forbidden => 403,
            ErrorKind::ServiceUnavailable => 503,
            ErrorKind::InternalServerError => 500,
        }
    }
}

/// An error as the API returns it: a kind and one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}: {message}", kind.code())]
pub struct ApiError {
    /// Which exception.
    pub kind: ErrorKind,
    /// What went wrong, for a human.
    pub message: String,
}

impl ApiError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }

    /// A `BadRequestException`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }

    /// A `NotFoundException`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
}
