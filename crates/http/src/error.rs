//! One error type for every handler, rendered as RFC 9457 problem details
//! (`application/problem+json`). Internal errors are logged once, here, with their cause; the
//! client sees a generic message and the request id to quote.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// A field that failed validation, with a message a client can show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Path of the field, e.g. `lines[2].quantity`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    /// A field error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// What a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed request (bad JSON, bad path or query, bad header).
    #[error("{0}")]
    BadRequest(String),
    /// Missing or invalid bearer token.
    #[error("{0}")]
    Unauthorized(String),
    /// Well-formed request with invalid values.
    #[error("the request has invalid fields")]
    Validation(Vec<FieldError>),
    /// Not there, or not the caller's (the two are indistinguishable on purpose).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The caller is authenticated but lacks a role.
    #[error("{0}")]
    Forbidden(String),
    /// The order's state does not allow the operation.
    #[error("{0}")]
    Conflict(String),
    /// The path exists, but not with this method (the router's fallback).
    #[error("this route does not answer this method")]
    MethodNotAllowed,
    /// An Idempotency-Key reused for a different request.
    #[error("this Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
    /// Body over the size limit.
    #[error("request body too large")]
    PayloadTooLarge,
    /// Body not JSON.
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// A dependency is down (readiness).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else: a bug or an infrastructure failure.
    #[error(transparent)]
    Internal(#[from] anyhow_like::Internal),
}

/// A boxed internal error without pulling in `anyhow`.
pub mod anyhow_like {
    /// Wraps any error as an internal one.
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    pub struct Internal(pub Box<dyn std::error::Error + Send + Sync>);
}

/// `?` on a query in a handler: a database failure is an internal error, except that no free
/// connection in time (an overloaded pool) or a closed pool (the service is stopping) is a
/// 503 with `Retry-After`: nothing was written, the client may try again.
#[cfg(feature = "postgres")]
impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::PoolTimedOut => {
                tracing::warn!("no database connection free in time; answering 503");
                Self::Unavailable("the database is busy; retry shortly".to_owned())
            }
            sqlx::Error::PoolClosed => {
                Self::Unavailable("the service is stopping; retry shortly".to_owned())
            }
            err => Self::Internal(anyhow_like::Internal(Box::new(err))),
        }
    }
}

impl ApiError {
    /// Wraps any error as an internal one (logged, never shown to the client).
    pub fn internal(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Internal(anyhow_like::Internal(Box::new(err)))
    }
}

/// The body of every error response: RFC 9457 problem details, sent as
/// `application/problem+json`. Public so that clients and tests can read it, and so that the
/// generated OpenAPI documents describe it (`#/components/schemas/ProblemDetails`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProblemDetails {
    /// A URI naming the kind of problem; `about:blank` here: the status says it all.
    #[serde(rename = "type")]
    #[schema(example = "about:blank")]
    pub kind: String,
    /// The status's short, fixed summary, e.g. `Invalid request`.
    pub title: String,
    /// The HTTP status code, repeated for clients that only keep the body.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What went wrong with this request, for a person to read. Never internals: a 500 says to
    /// quote the `x-request-id` instead.
    pub detail: String,
    /// One entry per invalid field (422 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub errors: Option<Vec<FieldError>>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, title) = match &self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "Bad request"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            Self::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid request"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "Not found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "Method not allowed"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "Conflict"),
            Self::IdempotencyKeyReused => {
                (StatusCode::UNPROCESSABLE_ENTITY, "Idempotency-Key reused")
            }
            Self::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "Payload too large"),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "Unsupported media type")
            }
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "Internal error"),
        };
        let detail = match &self {
            Self::Internal(err) => {
                tracing::error!(error = %err, "request failed");
                "the server failed to handle the request; quote the x-request-id when reporting it"
                    .to_owned()
            }
            other => {
                tracing::debug!(status = status.as_u16(), detail = %other, "request refused");
                other.to_string()
            }
        };
        let errors = match self {
            Self::Validation(errors) => Some(errors),
            _ => None,
        };
        let body = ProblemDetails {
            kind: "about:blank".to_owned(),
            title: title.to_owned(),
            status: status.as_u16(),
            detail,
            errors,
        };
        let mut response = (status, axum::Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "postgres")]
    #[test]
    fn an_exhausted_pool_is_a_503_with_retry_after_not_a_500() {
        let response = ApiError::from(sqlx::Error::PoolTimedOut).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let response = ApiError::from(sqlx::Error::RowNotFound).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
