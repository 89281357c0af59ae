//! The message contract's headers and the outbox columns that carry them.
//!
//! One table drives everything that must agree: [`crate::enqueue`] writes these columns, the
//! in-process relay turns them into Kafka headers in this order, and the Debezium connector
//! config (`infra/debezium/outbox-connector.json`) places the same columns into the same headers
//! (a test compares the two). Adding a header means adding a column, a row here, and a line in
//! the connector config.

/// `(header name, column name, required)` for every header the outbox carries, in the order the
/// in-process relay writes them.
pub const CONTRACT_HEADERS: &[(&str, &str, bool)] = &[
    ("event-id", "event_id", true),
    ("event-type", "event_type", true),
    ("aggregate-type", "aggregate_type", true),
    ("aggregate-id", "aggregate_id", true),
    ("revision", "revision", true),
    ("occurred-at", "occurred_at", true),
    ("content-type", "content_type", true),
    ("schema-version", "schema_version", true),
    ("traceparent", "traceparent", false),
    ("tracestate", "tracestate", false),
    ("baggage", "baggage", false),
    ("request-id", "request_id", false),
    ("user-id", "user_id", false),
    ("correlation-id", "correlation_id", false),
    ("causation-id", "causation_id", false),
    ("claim-check-location", "claim_check_location", false),
    ("claim-check-sha256", "claim_check_sha256", false),
    ("claim-check-size", "claim_check_size", false),
    ("claim-check-codec", "claim_check_codec", false),
    ("chunk-message-id", "chunk_message_id", false),
    ("chunk-index", "chunk_index", false),
    ("chunk-count", "chunk_count", false),
    ("chunk-size", "chunk_size", false),
    ("chunk-sha256", "chunk_sha256", false),
];

/// Optional headers a caller may set on an event (context, claim-check and chunk fields).
pub fn optional_column(header: &str) -> Option<&'static str> {
    CONTRACT_HEADERS
        .iter()
        .find(|(name, _, required)| !required && *name == header)
        .map(|(_, column, _)| *column)
}

/// Maximum length of one header value. Headers travel with every message and land in logs;
/// anything longer is a bug or an attack, not context.
pub const MAX_HEADER_VALUE_LEN: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_column_names_are_unique() {
        let mut headers: Vec<_> = CONTRACT_HEADERS.iter().map(|h| h.0).collect();
        let mut columns: Vec<_> = CONTRACT_HEADERS.iter().map(|h| h.1).collect();
        headers.sort_unstable();
        headers.dedup();
        columns.sort_unstable();
        columns.dedup();
        assert_eq!(headers.len(), CONTRACT_HEADERS.len());
        assert_eq!(columns.len(), CONTRACT_HEADERS.len());
    }

    #[test]
    fn columns_are_the_header_names_in_snake_case() {
        for (header, column, _) in CONTRACT_HEADERS {
            assert_eq!(header.replace('-', "_"), *column);
        }
    }

    #[test]
    fn only_optional_headers_can_be_set_by_callers() {
        assert_eq!(optional_column("traceparent"), Some("traceparent"));
        assert_eq!(
            optional_column("claim-check-sha256"),
            Some("claim_check_sha256")
        );
        assert_eq!(
            optional_column("event-id"),
            None,
            "required headers come from the event itself"
        );
        assert_eq!(optional_column("x-unknown"), None);
    }
}
