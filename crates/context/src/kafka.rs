//! Kafka headers (rdkafka) in and out.
//!
//! ```
//! use eda_context::{EventContext, Propagation, kafka};
//! use rdkafka::message::OwnedHeaders;
//!
//! let ctx = EventContext::new_request().with_user("alice");
//! // Producing: the ids and the current span's trace context.
//! let headers = kafka::insert(OwnedHeaders::new(), &Propagation::On.outgoing(&ctx));
//! // Consuming (here from what we just built): sanitised ids and the trace parent.
//! let (seen, _parent) = Propagation::On.incoming(|name| kafka::header(&headers, name));
//! assert_eq!(seen.request_id, ctx.request_id);
//! assert_eq!(seen.user_id.as_deref(), Some("alice"));
//! ```

use rdkafka::message::{Header, Headers, OwnedHeaders};

/// The value of header `name` (the first one, if repeated, like eda-idempotent-consumer's
/// `Event::header`), when present and UTF-8. Null values and invalid UTF-8 read as absent.
pub fn header<'a, H: Headers + ?Sized>(headers: &'a H, name: &str) -> Option<&'a str> {
    (0..headers.count())
        .filter_map(|i| headers.try_get(i))
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Appends `pairs` (from [`crate::Propagation::outgoing`]) to `headers`.
pub fn insert(headers: OwnedHeaders, pairs: &[(&str, String)]) -> OwnedHeaders {
    pairs.iter().fold(headers, |headers, (key, value)| {
        headers.insert(Header {
            key,
            value: Some(value.as_str()),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_utf8_value_wins_and_nulls_are_absent() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "request-id",
                value: Some("first"),
            })
            .insert(Header {
                key: "request-id",
                value: Some("second"),
            })
            .insert(Header::<&str> {
                key: "user-id",
                value: None,
            })
            .insert(Header {
                key: "baggage",
                value: Some(&[0xff_u8, 0xfe][..]),
            });
        assert_eq!(header(&headers, "request-id"), Some("first"));
        assert_eq!(header(&headers, "user-id"), None);
        assert_eq!(header(&headers, "baggage"), None, "not UTF-8");
        assert_eq!(header(&headers, "absent"), None);
    }
}
