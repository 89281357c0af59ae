//! `bench codecs`: the compression codecs a Kafka producer offers (`compression.type` lz4,
//! zstd, snappy, gzip), measured in **librdkafka itself**, the client every producer and
//! consumer of the project uses, on order JSON of 10 KiB, 1 MiB and 5 MiB.
//!
//! For each size and codec: a fresh one-partition topic, a producer with that
//! `compression.type` and `batch.num.messages=1` (each event is its own record batch, so the
//! ratio is the one of one event, not of a batch of similar events), then a consumer reading
//! the topic back.
//! - Ratio: original bytes / bytes of the record batches the producer sent (librdkafka's
//!   `batchsize` statistic, taken after compression: what the broker stores and every consumer
//!   fetches, the ~70 bytes of batch framing included).
//! - CPU: time on CPU of librdkafka's threads (`/proc/self/task/*/schedstat`, nanoseconds):
//!   compression runs in the producer's broker thread, decompression in the consumer's.
//!   Compress (decompress) cost = that time with the codec minus the same run with `none`,
//!   per MiB of original data; the `none` row shows the transport cost subtracted. That is a
//!   *net* cost: a codec also shrinks what the threads copy and send, so at 10 KiB, where the
//!   transport dominates, a fast codec can come out below `none` (a negative number).
//! - Each codec runs [`RUNS`] times and the cheapest run counts (CPU time only grows with
//!   noise from other processes), so the differences are not the machine's jitter.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eda_stack_admin::{Stack, unique};
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;

use super::BoxError;
use super::common::{delete_topic, report};
use super::payloads::{
    KIB, MIB, create_topic_with_limit, inline_limit, librdkafka_cpu, librdkafka_cpu_ms_since,
    order_json, progress, size_label,
};

/// The codecs of `compression.type`, `none` first (the baseline the others are measured
/// against).
const CODECS: [&str; 5] = ["none", "lz4", "zstd", "snappy", "gzip"];

/// Distinct orders per size, sent in turn.
const DISTINCT: u64 = 8;

/// Runs per size and codec; the cheapest counts.
const RUNS: usize = 3;

/// Bytes and batches of the record batches a producer sent, summed over librdkafka's
/// statistics windows (each emission holds the window since the previous one).
#[derive(Default)]
struct Batches {
    bytes: i64,
    messages: i64,
}

/// A producer context that adds up the `batchsize`/`batchcnt` windows of one topic.
struct BatchStats {
    topic: String,
    batches: Arc<Mutex<Batches>>,
}

impl ClientContext for BatchStats {
    fn stats(&self, statistics: Statistics) {
        if let Some(t) = statistics.topics.get(&self.topic)
            && let Ok(mut b) = self.batches.lock()
        {
            b.bytes += t.batchsize.sum;
            b.messages += t.batchcnt.sum;
        }
    }
}

/// One codec's numbers at one size.
struct Row {
    codec: &'static str,
    original: u64,
    sent: i64,
    produce_cpu_ms: f64,
    consume_cpu_ms: f64,
}

impl Row {
    /// The lower CPU time of two runs of the same codec, each side on its own (the bytes are
    /// the same every run).
    fn cheapest(self, other: &Row) -> Row {
        Row {
            produce_cpu_ms: self.produce_cpu_ms.min(other.produce_cpu_ms),
            consume_cpu_ms: self.consume_cpu_ms.min(other.consume_cpu_ms),
            ..self
        }
    }
}

/// Measures every codec on `megabytes` MiB of orders of each size.
pub(super) async fn run(stack: &Stack, megabytes: usize) -> Result<(), BoxError> {
    let mut out = vec![
        "== compression codecs: librdkafka's own (compression.type, default levels), one event per record batch ==".to_owned(),
        format!(
            "   order JSON like OrderPlaced; {megabytes} MiB per size and codec, cheapest of {RUNS} runs; CPU = librdkafka threads' time, codec minus none (net: negative = the smaller batches saved more than the codec cost)"
        ),
    ];
    for size in [10 * KIB, MIB, 5 * MIB] {
        let count = (megabytes * MIB).div_ceil(size).max(4);
        let payloads: Vec<String> = (0..DISTINCT).map(|s| order_json(size, s)).collect();
        let mut rows = Vec::new();
        for codec in CODECS {
            let mut best: Option<Row> = None;
            for run in 1..=RUNS {
                progress(&format!(
                    "codecs: {} x {count}, {codec}, run {run}/{RUNS}",
                    size_label(size)
                ));
                let topic = create_topic_with_limit(stack, 1, Some(inline_limit(size))).await?;
                let result = measure(stack, &topic, codec, &payloads, count, size).await;
                delete_topic(stack, &topic).await;
                let row = result?;
                best = Some(match best {
                    Some(b) => b.cheapest(&row),
                    None => row,
                });
            }
            rows.extend(best);
        }
        out.extend(table(size, count, &rows));
    }
    report(&out);
    Ok(())
}

/// Produces `count` events with `codec`, consumes them back, returns the numbers.
async fn measure(
    stack: &Stack,
    topic: &str,
    codec: &'static str,
    payloads: &[String],
    count: usize,
    size: usize,
) -> Result<Row, BoxError> {
    // Produce.
    let batches = Arc::new(Mutex::new(Batches::default()));
    let before = librdkafka_cpu();
    let producer: FutureProducer<BatchStats> = stack
        .kafka_config()
        .set("compression.type", codec)
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .set("message.max.bytes", inline_limit(size).to_string())
        .set("statistics.interval.ms", "100")
        .create_with_context(BatchStats {
            topic: topic.to_owned(),
            batches: Arc::clone(&batches),
        })?;
    let mut pending = Vec::with_capacity(count);
    let mut original = 0u64;
    for i in 0..count {
        let payload = &payloads[i % payloads.len()];
        original += payload.len() as u64;
        let record = FutureRecord::<(), _>::to(topic)
            .partition(0)
            .payload(payload);
        pending.push(producer.send_result(record).map_err(|(e, _)| e)?);
    }
    for p in pending {
        p.await?.map_err(|(e, _)| e)?;
    }
    let produce_cpu_ms = librdkafka_cpu_ms_since(&before);
    // The last batches reach the statistics at the next emission.
    let deadline = Instant::now() + Duration::from_secs(10);
    let sent = loop {
        let (bytes, messages) = {
            let b = batches.lock().map_err(|_| "statistics lock poisoned")?;
            (b.bytes, b.messages)
        };
        if messages >= count as i64 {
            break bytes;
        }
        if Instant::now() > deadline {
            return Err(
                format!("librdkafka's statistics counted {messages} of {count} messages").into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(producer);

    // Consume (librdkafka decompresses in the broker thread, before the application polls).
    let config = stack
        .kafka_config()
        .set("group.id", unique("bench"))
        .set("enable.auto.commit", "false")
        .clone();
    let topic = topic.to_owned();
    let consume_cpu_ms = tokio::task::spawn_blocking(move || -> Result<f64, BoxError> {
        let before = librdkafka_cpu();
        let consumer: BaseConsumer = config.create()?;
        let mut partitions = rdkafka::TopicPartitionList::new();
        partitions.add_partition_offset(&topic, 0, rdkafka::Offset::Beginning)?;
        consumer.assign(&partitions)?;
        let mut seen = 0usize;
        let deadline = Instant::now() + Duration::from_secs(300);
        while seen < count {
            if Instant::now() > deadline {
                return Err(format!("read {seen} of {count} messages back").into());
            }
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                let m = m?;
                if m.payload().map_or(0, <[u8]>::len) < size {
                    return Err("a message came back shorter than it was sent".into());
                }
                seen += 1;
            }
        }
        Ok(librdkafka_cpu_ms_since(&before))
    })
    .await??;
    Ok(Row {
        codec,
        original,
        sent,
        produce_cpu_ms,
        consume_cpu_ms,
    })
}

/// The result lines of one size.
fn table(size: usize, count: usize, rows: &[Row]) -> Vec<String> {
    let mut out = vec![
        format!(
            "-- {} orders (x{count}, {:.0} bytes each) --",
            size_label(size),
            rows.first()
                .map_or(0.0, |r| r.original as f64 / count as f64)
        ),
        "codec    bytes/event on broker   ratio   net produce ms/MiB   net consume ms/MiB"
            .to_owned(),
    ];
    let Some(none) = rows.iter().find(|r| r.codec == "none") else {
        return out;
    };
    for r in rows {
        let mib = r.original as f64 / MIB as f64;
        let per_event = r.sent as f64 / count as f64;
        let ratio = r.original as f64 / r.sent as f64;
        if r.codec == "none" {
            out.push(format!(
                "{:<8} {per_event:>21.0}   {ratio:>5.2}   (transport: produce {:.2} ms/MiB, consume {:.2} ms/MiB of librdkafka CPU)",
                r.codec,
                r.produce_cpu_ms / mib,
                r.consume_cpu_ms / mib
            ));
        } else {
            out.push(format!(
                "{:<8} {per_event:>21.0}   {ratio:>5.2}   {:>18.2}   {:>18.2}",
                r.codec,
                (r.produce_cpu_ms - none.produce_cpu_ms) / mib,
                (r.consume_cpu_ms - none.consume_cpu_ms) / mib
            ));
        }
    }
    out
}
