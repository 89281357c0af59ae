//! One call to set up a service's telemetry: JSON logs on stdout and OpenTelemetry traces
//! exported over OTLP (to Jaeger in this project), returning a guard that flushes on drop.
//!
//! ```no_run
//! # fn main() -> Result<(), eda_telemetry::Error> {
//! let config = eda_telemetry::TelemetryConfig::from_env("order-service")
//!     .with_service_version(env!("CARGO_PKG_VERSION")); // the service's version, not this crate's
//! let _telemetry = eda_telemetry::init(config)?;
//! tracing::info!(port = 8080, "listening");
//! // dropping the guard at the end of `main` exports the spans still buffered
//! # Ok(()) }
//! ```
//!
//! # Why a guard
//! Spans are exported in batches from a background thread. A process that exits without
//! flushing loses its last batch, which is usually the one that explains why it exited.
//! [`TelemetryGuard`] flushes and shuts the exporter down when dropped, so keeping it alive for
//! the whole of `main` is enough.
//!
//! # Configuration
//! The standard OpenTelemetry variables are honoured by the exporter and SDK themselves:
//!
//! | variable | effect | default |
//! |---|---|---|
//! | `OTEL_SERVICE_NAME` | service name on every span (overrides the name passed in code) | the name passed to [`TelemetryConfig::from_env`] |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | collector base URL | `http://localhost:4318` (HTTP) / `http://localhost:4317` (gRPC) |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` | `http/protobuf` or `grpc` | `http/protobuf` |
//! | `OTEL_TRACES_EXPORTER` | `otlp`, or `none` to keep logs only | `otlp` |
//! | `OTEL_SDK_DISABLED` | `true` turns span export off | `false` |
//! | `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, `OTEL_BSP_SCHEDULE_DELAY` (ms) | span export queue, batch, delay ([`TelemetryConfig::span_queue_size`]) | 16384, 2048, 1000 (the SDK's 2048, 512, 5000 drop spans at a few thousand requests/s) |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_RESOURCE_ATTRIBUTES` | read by the SDK | SDK defaults |
//! | `RUST_LOG` | log filter (`tracing_subscriber::EnvFilter` syntax) | `info` |
//! | `TRACE_FILTER` | which spans are exported (same syntax); independent of `RUST_LOG` so that quieter logs never break a trace | `info` |
//! | `LOG_FORMAT` | `json` or `pretty` | `json` |
//!
//! With `grpc`, [`init`] must run inside a Tokio runtime: the gRPC channel lives on it.

use std::env;
use std::time::Duration;

pub mod json;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{KeyValue, global};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Everything that can go wrong while setting telemetry up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The OTLP exporter could not be built (bad endpoint, unsupported protocol, no runtime for gRPC).
    #[error("cannot build the OTLP span exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// `RUST_LOG` (or the default filter) does not parse.
    #[error("invalid log filter {filter:?}: {source}")]
    LogFilter {
        /// The filter text that was rejected.
        filter: String,
        /// Why it was rejected.
        source: tracing_subscriber::filter::ParseError,
    },
    /// `LOG_FORMAT` holds something other than `json` or `pretty`.
    #[error("invalid LOG_FORMAT {0:?}: expected \"json\" or \"pretty\"")]
    LogFormat(String),
    /// An `OTEL_BSP_*` variable is not a positive whole number.
    #[error("invalid {name}={value:?}: expected a whole number above 0")]
    SpanQueue {
        /// The variable.
        name: &'static str,
        /// What it held.
        value: String,
    },
    /// A global subscriber was already installed (telemetry initialised twice in one process).
    #[error("a global tracing subscriber is already installed: {0}")]
    AlreadyInitialized(#[from] tracing_subscriber::util::TryInitError),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How log lines are written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line: what log shippers and `jq` want.
    Json,
    /// Human-readable, multi-line: for a developer's terminal.
    Pretty,
}

/// What [`init`] sets up. Build it with [`TelemetryConfig::from_env`] and adjust fields if needed.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `service.name` on every exported span; this is what Jaeger's service list shows.
    pub service_name: String,
    /// `service.version` on every exported span: set it with
    /// [`with_service_version`](Self::with_service_version) from the *service's* crate
    /// (`env!("CARGO_PKG_VERSION")` expands where it is written, so this crate cannot know it).
    /// `None` leaves the attribute to `OTEL_RESOURCE_ATTRIBUTES`, or out.
    pub service_version: Option<String>,
    /// Log filter used when `RUST_LOG` is unset.
    pub log_filter: String,
    /// Which spans are exported (`TRACE_FILTER`, same syntax, default `info`). Separate from
    /// the log filter on purpose: quieter logs must not break traces, since a span that is not
    /// created cannot pass its context on to the next service.
    pub trace_filter: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// Whether spans are exported over OTLP. Off, only logs are written.
    pub export_traces: bool,
    /// How many finished spans wait for export before new ones are dropped
    /// (`OTEL_BSP_MAX_QUEUE_SIZE`). Default 16,384 rather than the SDK's 2,048, which dropped
    /// 12,329 spans (holes in traces) in a 30 s run at ~1,700-2,200 `POST /orders`/s. The SDK
    /// allocates the whole queue at start: ~6 MiB of RSS at this size (~23 MiB at 65,536).
    pub span_queue_size: usize,
    /// Spans per OTLP export request (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`). Default 2,048 (SDK:
    /// 512): one export thread keeps up with ~12,000 spans/s.
    pub span_batch_size: usize,
    /// Longest a finished span waits before it is exported (`OTEL_BSP_SCHEDULE_DELAY`, in ms).
    /// Default 1 s (SDK: 5 s), so a request shows in Jaeger right after it finished.
    pub span_export_delay: Duration,
    /// `LOG_FORMAT` value that did not parse; reported by [`init`] rather than silently ignored.
    invalid_log_format: Option<String>,
    /// An `OTEL_BSP_*` variable that did not parse, with its value; reported by [`init`].
    invalid_span_queue: Option<(&'static str, String)>,
}

impl TelemetryConfig {
    /// Reads the standard variables (see the crate docs), falling back to `service_name`.
    pub fn from_env(service_name: &str) -> Self {
        Self::from_lookup(service_name, |key| env::var(key).ok())
    }

    /// Sets `service.version`; pass `env!("CARGO_PKG_VERSION")` from the service's own crate.
    #[must_use]
    pub fn with_service_version(mut self, version: impl Into<String>) -> Self {
        self.service_version = Some(version.into());
        self
    }

    /// Same as [`from_env`](Self::from_env), reading variables through `lookup`; for tests and
    /// for services that keep their configuration elsewhere.
    pub fn from_lookup(service_name: &str, lookup: impl Fn(&str) -> Option<String>) -> Self {
        let non_empty = |key: &str| {
            lookup(key)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let service_name =
            non_empty("OTEL_SERVICE_NAME").unwrap_or_else(|| service_name.to_owned());
        let sdk_disabled =
            non_empty("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let exporter_none =
            non_empty("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
        let (log_format, invalid_log_format) = match non_empty("LOG_FORMAT") {
            None => (LogFormat::Json, None),
            Some(v) if v.eq_ignore_ascii_case("json") => (LogFormat::Json, None),
            Some(v) if v.eq_ignore_ascii_case("pretty") => (LogFormat::Pretty, None),
            Some(v) => (LogFormat::Json, Some(v)),
        };
        let mut invalid_span_queue = None;
        let mut number = |name: &'static str, default: u64| match non_empty(name) {
            None => default,
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n > 0 => n,
                _ => {
                    invalid_span_queue.get_or_insert((name, v));
                    default
                }
            },
        };
        let span_queue_size = number("OTEL_BSP_MAX_QUEUE_SIZE", 16_384);
        let span_batch_size = number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 2_048);
        let span_export_delay = Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY", 1_000));
        Self {
            service_name,
            service_version: None,
            log_filter: non_empty("RUST_LOG").unwrap_or_else(|| "info".to_owned()),
            trace_filter: non_empty("TRACE_FILTER").unwrap_or_else(|| "info".to_owned()),
            log_format,
            export_traces: !(sdk_disabled || exporter_none),
            span_queue_size: usize::try_from(span_queue_size).unwrap_or(usize::MAX),
            span_batch_size: usize::try_from(span_batch_size).unwrap_or(usize::MAX),
            span_export_delay,
            invalid_log_format,
            invalid_span_queue,
        }
    }
}

/// Keeps the span exporter alive; flushes and shuts it down when dropped.
#[must_use = "dropping the guard shuts span export down: keep it alive for the whole of main"]
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports every finished span now. Useful before reading traces back (tests) or before a
    /// planned exit; errors are returned rather than logged so the caller can decide.
    pub fn flush(&self) -> std::result::Result<(), opentelemetry_sdk::error::OTelSdkError> {
        match &self.provider {
            Some(provider) => provider.force_flush(),
            None => Ok(()),
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Nothing to log to any more once the exporter is gone: stderr is the last resort.
            if let Err(err) = provider.shutdown() {
                eprintln!("eda-telemetry: span exporter shutdown failed: {err}");
            }
        }
    }
}

/// Installs the global tracing subscriber (logs + spans), the global OpenTelemetry tracer
/// provider, and the W3C `traceparent` + `baggage` propagators.
///
/// Call once per process, early in `main`, and keep the returned guard until exit.
pub fn init(config: TelemetryConfig) -> Result<TelemetryGuard> {
    init_with_writer(config, std::io::stdout)
}

/// [`init`], writing log lines to `writer` instead of stdout (a file, or a buffer in tests).
pub fn init_with_writer<W>(config: TelemetryConfig, writer: W) -> Result<TelemetryGuard>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    if let Some(bad) = config.invalid_log_format {
        return Err(Error::LogFormat(bad));
    }
    if let Some((name, value)) = config.invalid_span_queue {
        return Err(Error::SpanQueue { name, value });
    }
    let parse = |filter: &str| {
        EnvFilter::try_new(filter).map_err(|source| Error::LogFilter {
            filter: filter.to_owned(),
            source,
        })
    };
    // Filters built from the two settings:
    // - spans are exported as TRACE_FILTER says;
    // - log lines are written as RUST_LOG says, but the log layer also sees every span that is
    //   exported, so a line keeps its request and trace ids however quiet RUST_LOG is;
    // - the context-fields layer stays unfiltered: giving it a per-layer filter made
    //   tracing-opentelemetry's `Span::context()` come back empty (seen in the outbox trace
    //   test with tracing-subscriber 0.3.23 / tracing-opentelemetry 0.34).
    let trace_filter = parse(&config.trace_filter)?;
    let log_filter = parse(&config.log_filter)?.or(parse(&config.trace_filter)?
        .and(tracing_subscriber::filter::filter_fn(|meta| meta.is_span())));

    global::set_text_map_propagator(opentelemetry::propagation::TextMapCompositePropagator::new(
        vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ],
    ));

    let provider = if config.export_traces {
        let exporter = opentelemetry_otlp::SpanExporter::builder().build()?;
        let mut resource = Resource::builder().with_service_name(config.service_name.clone());
        if let Some(version) = &config.service_version {
            resource = resource.with_attribute(KeyValue::new("service.version", version.clone()));
        }
        let resource = resource.build();
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(config.span_queue_size)
            .with_max_export_batch_size(config.span_batch_size)
            .with_scheduled_delay(config.span_export_delay)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        global::set_tracer_provider(provider.clone());
        Some(provider)
    } else {
        None
    };

    let otel_layer = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(config.service_name.clone()))
            // Per-span bookkeeping nobody reads in Jaeger here: busy/idle time (a clock read
            // on every poll of an instrumented future) and thread attributes.
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_filter(trace_filter)
            .boxed()
    });
    let fmt_layer = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .event_format(json::JsonWithContext)
            .with_writer(writer)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .pretty()
            .with_writer(writer)
            .boxed(),
    };

    tracing_subscriber::registry()
        .with(json::ContextFieldsLayer)
        .with(fmt_layer.with_filter(log_filter))
        .with(otel_layer)
        .try_init()?;

    Ok(TelemetryGuard { provider })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> TelemetryConfig {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        TelemetryConfig::from_lookup("fallback-name", |k| vars.get(k).cloned())
    }

    #[test]
    fn defaults_export_json_logs_at_info() {
        let c = config(&[]);
        assert_eq!(c.service_name, "fallback-name");
        assert_eq!(c.log_filter, "info");
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(c.export_traces);
    }

    #[test]
    fn the_span_queue_is_sized_for_load_and_bad_numbers_are_reported() {
        let c = config(&[]);
        assert_eq!(
            (c.span_queue_size, c.span_batch_size, c.span_export_delay),
            (16_384, 2_048, Duration::from_secs(1))
        );
        let c = config(&[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "4096"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", " 256 "),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ]);
        assert_eq!(
            (c.span_queue_size, c.span_batch_size, c.span_export_delay),
            (4_096, 256, Duration::from_millis(200))
        );
        for bad in ["0", "-1", "lots", "1.5"] {
            let c = config(&[("OTEL_BSP_MAX_QUEUE_SIZE", bad)]);
            assert_eq!(c.span_queue_size, 16_384);
            let err = init_with_writer(c, std::io::sink).unwrap_err();
            assert!(
                matches!(&err, Error::SpanQueue { name: "OTEL_BSP_MAX_QUEUE_SIZE", value } if value == bad),
                "{err}"
            );
            assert!(err.to_string().contains("OTEL_BSP_MAX_QUEUE_SIZE"), "{err}");
        }
    }

    #[test]
    fn the_service_version_is_the_callers() {
        assert_eq!(config(&[]).service_version, None);
        let c = config(&[]).with_service_version("7.1.2");
        assert_eq!(c.service_version.as_deref(), Some("7.1.2"));
    }

    #[test]
    fn otel_service_name_overrides_the_code_default() {
        assert_eq!(
            config(&[("OTEL_SERVICE_NAME", "svc-b")]).service_name,
            "svc-b"
        );
        assert_eq!(
            config(&[("OTEL_SERVICE_NAME", "  ")]).service_name,
            "fallback-name"
        );
    }

    #[test]
    fn export_can_be_switched_off_the_standard_ways() {
        assert!(!config(&[("OTEL_SDK_DISABLED", "TRUE")]).export_traces);
        assert!(!config(&[("OTEL_TRACES_EXPORTER", "none")]).export_traces);
        assert!(config(&[("OTEL_SDK_DISABLED", "false")]).export_traces);
    }

    #[test]
    fn bad_log_format_is_an_error_not_a_silent_default() {
        let c = config(&[("LOG_FORMAT", "xml")]);
        let err = init(c).unwrap_err();
        assert!(
            matches!(err, Error::LogFormat(ref v) if v == "xml"),
            "{err}"
        );
    }

    #[test]
    fn bad_log_filter_names_the_filter() {
        let c = config(&[("RUST_LOG", "info,[[[")]);
        let err = init(c).unwrap_err();
        assert!(err.to_string().contains("info,[[["), "{err}");
    }

    #[test]
    fn pretty_is_accepted() {
        assert_eq!(
            config(&[("LOG_FORMAT", "Pretty")]).log_format,
            LogFormat::Pretty
        );
    }
}

/// Compiles and runs the README's example, so the copy-paste snippet cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
