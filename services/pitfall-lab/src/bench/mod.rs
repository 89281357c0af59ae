//! Benchmarks behind `make bench`. Each creates its own database and topics on the running
//! stack, prints one result block, and cleans up. Numbers depend on the machine: quote them
//! with its size (the project's reference machine has 2 cores).
//!
//! # Layout
//! One file per benchmark (`drain`, `latency`, `http`, `memory`, `consumer`, `propagation`, ...);
//! `common` holds what several share (scratch resources, the outbox backlog, reporting,
//! telemetry, the results folder), `counted` the consumer workload that `consumer` and
//! `propagation` both run, `open_loop` the fixed-rate load and HDR histograms of `latency` and
//! `http`, `report` the Markdown and charts `make bench` ends with.

mod codecs;
mod common;
mod consumer;
mod counted;
mod drain;
// Its histories and CRUD tables are reused, small, by `demo` (pitfall 2).
pub(crate) mod event_sourcing;
mod http;
mod large_latency;
mod large_rss;
mod large_throughput;
mod latency;
mod memory;
mod open_loop;
mod payloads;
mod projection;
mod propagation;
mod report;

use clap::Subcommand;
use eda_stack_admin::Stack;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What to measure.
#[derive(Debug, Subcommand)]
pub enum Bench {
    /// Drain a backlog of N outbox rows to Kafka: in-process relay, then Debezium, same data.
    Drain {
        /// Rows in the backlog.
        #[arg(long, default_value_t = 100_000)]
        rows: i64,
        /// Size of each event's JSON payload.
        #[arg(long, default_value_t = 256)]
        payload_bytes: usize,
    },
    /// Commit-to-consumer latency of the in-process relay, open loop at fixed write rates.
    Latency {
        /// Events per second, comma-separated: one run each.
        #[arg(long, value_delimiter = ',', default_value = "500,1000,2000")]
        rates: Vec<u64>,
        /// Duration of each run.
        #[arg(long, default_value_t = 15)]
        seconds: u64,
    },
    /// POST /orders throughput (closed loop: outbox, outbox rows only, direct) and, with
    /// `--rates`, response time at fixed arrival rates (open loop). By default without any
    /// tracing subscriber; `--export true` adds telemetry as the services run it (spans exported
    /// to Jaeger, logs at warn), with `--propagation on|off`, one process per setting.
    Http {
        /// Open-loop arrival rates (orders/s), comma-separated; none by default.
        #[arg(long, value_delimiter = ',')]
        rates: Vec<u64>,
        /// Duration of each mode's run.
        #[arg(long, default_value_t = 15)]
        seconds: u64,
        /// Concurrent clients.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// `on` or `off` (`PROPAGATION` of the service).
        #[arg(long, default_value = "on")]
        propagation: eda_context::Propagation,
        /// Export spans over OTLP (`OTEL_EXPORTER_OTLP_ENDPOINT`, Jaeger in the stack).
        #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
        export: bool,
    },
    /// Peak RSS of a relay process draining a large backlog.
    Memory {
        /// Rows in the backlog.
        #[arg(long, default_value_t = 1_000_000)]
        rows: i64,
    },
    /// Consumer throughput on the same events: dedupe by event id, offsets in the database, none.
    Consumer {
        /// Events in the topic.
        #[arg(long, default_value_t = 100_000)]
        events: usize,
    },
    /// Per-event cost of context propagation in a consumer that emits (extract, spans, inject,
    /// export): `--propagation on` vs `off`, each in its own process since telemetry is set up
    /// once per process. `--export false` runs without any tracing subscriber (the floor).
    Propagation {
        /// Events in the topic.
        #[arg(long, default_value_t = 50_000)]
        events: usize,
        /// `on` or `off` (`PROPAGATION` of the services).
        #[arg(long, default_value = "on")]
        propagation: eda_context::Propagation,
        /// Export spans over OTLP (`OTEL_EXPORTER_OTLP_ENDPOINT`, Jaeger in the stack).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        export: bool,
    },
    /// Pitfall 4: librdkafka's compression codecs (lz4, zstd, snappy, gzip) on order JSON of
    /// 10 KiB, 1 MiB and 5 MiB: ratio and CPU per MiB to compress and to decompress.
    Codecs {
        /// MiB of orders per size and codec.
        #[arg(long, default_value_t = 50)]
        megabytes: usize,
    },
    /// Pitfall 4: large events end to end (outbox, relay, Kafka, consumer runtime), events/s
    /// and MiB/s, inline (topic limit raised) vs claim check vs chunking.
    LargeThroughput {
        /// Events of 5 MiB (0 skips the size).
        #[arg(long, default_value_t = 50)]
        events_5mb: usize,
        /// Events of 1 MiB (0 skips the size).
        #[arg(long, default_value_t = 200)]
        events_1mb: usize,
    },
    /// Pitfall 4: latency of small events while large ones flow on the same topic: none,
    /// inline, claim check, chunking.
    LargeLatency {
        /// Small events per second.
        #[arg(long, default_value_t = 200)]
        rate: u64,
        /// Duration of each mode's run.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Bytes of a small event.
        #[arg(long, default_value_t = 1024)]
        small_bytes: usize,
        /// MiB of a large event.
        #[arg(long, default_value_t = 5)]
        large_megabytes: usize,
        /// Large events per second.
        #[arg(long, default_value_t = 1.0)]
        large_rate: f64,
    },
    /// Pitfall 4: peak RSS of a consumer process (claim-check resolver; then chunks) on a few
    /// very large payloads.
    LargeRss {
        /// Events.
        #[arg(long, default_value_t = 3)]
        events: usize,
        /// MiB per payload.
        #[arg(long, default_value_t = 50)]
        megabytes: usize,
    },
    /// Pitfall 2, the naive side: loading one event-sourced order's state by replay at 10 to
    /// 10,000 events of history (without and with snapshots) against a CRUD row read, and
    /// rebuilding a read model by replaying every order's events.
    EventSourcing {
        /// Orders (3 to 5 events each) in the event store the read model is rebuilt from.
        #[arg(long, default_value_t = 100_000)]
        orders: usize,
        /// Loads per history length and read (fewer when a case runs over 30 s).
        #[arg(long, default_value_t = 200)]
        loads: usize,
    },
    /// Pitfall 2's fix: a Debezium table connector into projection-service's views; catch-up
    /// of a backlog (snapshot, then changes/s) and commit-to-view latency at fixed rates.
    Projection {
        /// Orders in the backlog (two lines each).
        #[arg(long, default_value_t = 100_000)]
        orders: usize,
        /// Orders per second of the latency runs, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "100,500")]
        rates: Vec<u64>,
        /// Duration of each latency run.
        #[arg(long, default_value_t = 15)]
        seconds: u64,
    },
    /// Writes `report.md` and PNG charts into the folder `make bench` collected its results in
    /// (`BENCH_RESULTS_DIR`): summary table against the goals, throughput and latency charts,
    /// every benchmark's printed output.
    Report {
        /// The results folder.
        #[arg(long)]
        dir: std::path::PathBuf,
        /// The machine, as the charts state it (e.g. "2 cores, 23 GiB").
        #[arg(long, default_value = "")]
        machine: String,
        /// The commit measured.
        #[arg(long, default_value = "")]
        commit: String,
    },
    /// (internal) The consumer process of the large-rss benchmark.
    #[command(hide = true)]
    LargeRssConsumer {
        /// Database of the consumer runtime's tables.
        #[arg(long)]
        database_url: String,
        /// Topic to consume.
        #[arg(long)]
        topic: String,
        /// Payloads to handle before reporting.
        #[arg(long)]
        events: usize,
        /// Size of each payload.
        #[arg(long)]
        bytes: usize,
    },
    /// (internal) A relay process for the memory benchmark.
    #[command(hide = true)]
    RelayProcess {
        /// Database to drain.
        #[arg(long)]
        database_url: String,
    },
}

/// Runs one benchmark against the stack the environment names (`infra/stack.sh env`).
pub async fn run(what: Bench) -> Result<(), BoxError> {
    if let Bench::Report {
        dir,
        machine,
        commit,
    } = &what
    {
        let report = report::run(dir, machine, commit)?;
        common::report(&[format!("report: {}", report.display())]);
        return Ok(());
    }
    let stack = Stack::try_from_env()?;
    match what {
        Bench::Drain {
            rows,
            payload_bytes,
        } => drain::run(&stack, rows, payload_bytes).await,
        Bench::Latency { rates, seconds } => latency::run(&stack, &rates, seconds).await,
        Bench::Http {
            rates,
            seconds,
            concurrency,
            propagation,
            export,
        } => {
            let load = http::Load {
                seconds,
                concurrency,
                propagation,
                export,
                rates,
            };
            http::run(&stack, load).await
        }
        Bench::Memory { rows } => memory::run(&stack, rows).await,
        Bench::Consumer { events } => consumer::run(&stack, events).await,
        Bench::Propagation {
            events,
            propagation,
            export,
        } => propagation::run(&stack, events, propagation, export).await,
        Bench::RelayProcess { database_url } => memory::relay_process(&stack, &database_url).await,
        Bench::Codecs { megabytes } => codecs::run(&stack, megabytes).await,
        Bench::LargeThroughput {
            events_5mb,
            events_1mb,
        } => large_throughput::run(&stack, events_5mb, events_1mb).await,
        Bench::LargeLatency {
            rate,
            seconds,
            small_bytes,
            large_megabytes,
            large_rate,
        } => {
            let load = large_latency::Load {
                rate,
                seconds,
                small_bytes,
                large_bytes: large_megabytes * payloads::MIB,
                large_rate,
            };
            large_latency::run(&stack, load).await
        }
        Bench::Projection {
            orders,
            rates,
            seconds,
        } => projection::run(&stack, orders, &rates, seconds).await,
        Bench::EventSourcing { orders, loads } => event_sourcing::run(&stack, orders, loads).await,
        Bench::LargeRss { events, megabytes } => large_rss::run(&stack, events, megabytes).await,
        Bench::Report { .. } => Ok(()),
        Bench::LargeRssConsumer {
            database_url,
            topic,
            events,
            bytes,
        } => large_rss::consumer_process(&stack, &database_url, &topic, events, bytes).await,
    }
}
