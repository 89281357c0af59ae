//! A small client for Jaeger's v2 query API (the HTTP JSON API its UI uses, port 16686): find
//! traces by id, by service and attribute, or by attribute across every service, and read them
//! as [`Span`]s that know their parent, walked as a tree with [`Trace::tree`].
//!
//! The reference system uses it twice: the context-propagation tests judge "one request is ONE
//! trace across services" by what Jaeger stored, and `pitfall-lab trace` prints a request's
//! trace as a tree in the terminal.
//!
//! # Layout
//! - `client`: [`Jaeger`], the HTTP queries.
//! - `trace`: [`Trace`] and [`Span`], parsing Jaeger's JSON, and the parent/child walk (pure,
//!   unit-tested without a Jaeger).

mod client;
mod trace;

pub use client::{DEFAULT_URL, Jaeger};
pub use trace::{Span, Trace, random_trace_ids};

/// What a query can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configured URL (`JAEGER_QUERY_URL`) and the query do not make a URL.
    #[error("Jaeger query URL {url:?} is not a URL")]
    Url {
        /// The configured base URL.
        url: String,
        /// Why it does not parse.
        source: UrlError,
    },
    /// No answer: Jaeger is down, the port is wrong, or it took longer than 10 s.
    #[error("Jaeger query API at {url} did not answer (is the stack up?)")]
    Unreachable {
        /// The configured base URL.
        url: String,
        /// The HTTP client's error.
        source: reqwest::Error,
    },
    /// Something answered, but not with JSON: probably not Jaeger's query API.
    #[error("Jaeger answered {url} with something that is not JSON")]
    NotJson {
        /// The URL that was asked.
        url: String,
        /// The decoding error.
        source: reqwest::Error,
    },
}

/// The URL parser's error (the `url` crate's `ParseError`, named through reqwest so that this
/// crate needs no dependency of its own for it).
pub type UrlError = <reqwest::Url as std::str::FromStr>::Err;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `error: cause: cause ...` on one line, for messages (panics) that only show `Display`.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Compiles the README's example, so the copy-paste snippet cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
