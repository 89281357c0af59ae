//! Checks for values read from outside. Each returns `None` for anything it would not pass on:
//! the caller then replaces or drops it.

/// Longest id accepted (request, correlation, causation, user).
pub const MAX_ID_LEN: usize = 128;
/// Longest `tracestate` accepted (W3C allows 512 characters).
pub const MAX_TRACESTATE_LEN: usize = 512;
/// Longest `baggage` passed on.
pub const MAX_BAGGAGE_LEN: usize = 1024;

/// An id: 1 to 128 characters of `A-Z a-z 0-9 . _ : - @`.
pub fn id(value: &str) -> Option<String> {
    let ok = !value.is_empty()
        && value.len() <= MAX_ID_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-' | b'@'));
    ok.then(|| value.to_owned())
}

/// A value shown in a span or a log line as it came (a Kafka key, a URL path): at most `max`
/// bytes of printable ASCII, else `None` (left out rather than cut or escaped).
pub fn printable(value: &str, max: usize) -> Option<&str> {
    (!value.is_empty() && value.len() <= max && value.bytes().all(|b| (0x20..0x7f).contains(&b)))
        .then_some(value)
}

/// A W3C `traceparent` of version `00`: `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`,
/// lowercase, ids not all zeros. Other versions and anything longer are refused.
pub fn traceparent(value: &str) -> Option<String> {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let ok = parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0');
    ok.then(|| value.to_owned())
}

/// A W3C `tracestate`: at most 512 characters, 32 list members, printable ASCII without spaces
/// around members, each `key=value`.
pub fn tracestate(value: &str) -> Option<String> {
    if value.is_empty()
        || value.len() > MAX_TRACESTATE_LEN
        || !value.bytes().all(|b| (0x20..0x7f).contains(&b))
    {
        return None;
    }
    let members: Vec<&str> = value.split(',').map(str::trim).collect();
    let ok = members.len() <= 32
        && members.iter().all(|m| {
            m.split_once('=')
                .is_some_and(|(k, v)| !k.is_empty() && !v.is_empty() && !k.contains(' '))
        });
    ok.then(|| members.join(","))
}

/// `baggage` limited to `allowed` keys (others dropped), printable ASCII, at most 1 KiB in all.
/// [`crate::BaggagePolicy::filter`] is the same check with a configurable list.
pub fn baggage(value: &str, allowed: &[&str]) -> Option<String> {
    baggage_where(value, |key| allowed.contains(&key))
}

/// [`baggage`] with the allow-list as a predicate.
pub(crate) fn baggage_where(value: &str, allowed: impl Fn(&str) -> bool) -> Option<String> {
    let kept: Vec<String> = value
        .split(',')
        .filter_map(|member| {
            let (key, rest) = member.trim().split_once('=')?;
            let key = key.trim();
            let value = rest.split(';').next()?.trim();
            let printable = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| (0x21..0x7f).contains(&b) && b != b',' && b != b';')
            };
            (printable(key) && printable(value) && allowed(key)).then(|| format!("{key}={value}"))
        })
        .collect();
    let joined = kept.join(",");
    (!joined.is_empty() && joined.len() <= MAX_BAGGAGE_LEN).then_some(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_values_are_bounded_and_free_of_control_characters() {
        assert_eq!(printable("01a21c02-order", 64), Some("01a21c02-order"));
        assert_eq!(printable("/orders/{id}", 64), Some("/orders/{id}"));
        assert_eq!(printable("a\nb", 64), None);
        assert_eq!(printable("\u{1b}[31m", 64), None);
        assert_eq!(printable("é", 64), None);
        assert_eq!(printable(&"x".repeat(65), 64), None);
        assert_eq!(printable("", 64), None);
    }

    #[test]
    fn ids() {
        assert_eq!(id("req-1.a_b:c@d"), Some("req-1.a_b:c@d".to_owned()));
        for bad in ["", " ", "a b", "a\tb", "ä", "a\u{7f}", &"a".repeat(129)] {
            assert_eq!(id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn traceparents() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(traceparent(good).as_deref(), Some(good));
        for bad in [
            "",
            "garbage",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(traceparent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn tracestates() {
        assert_eq!(
            tracestate("vendor=abc, other=def").as_deref(),
            Some("vendor=abc,other=def")
        );
        assert_eq!(tracestate("novalue"), None);
        assert_eq!(tracestate(&format!("k={}", "v".repeat(600))), None);
        assert_eq!(tracestate("k=v\n"), None);
    }

    #[test]
    fn baggage_keeps_only_allowed_keys() {
        assert_eq!(
            baggage(
                "tenant=acme, secret=x, region=eu;prop=1",
                &["tenant", "region"]
            )
            .as_deref(),
            Some("tenant=acme,region=eu")
        );
        assert_eq!(baggage("secret=x", &["tenant"]), None);
        assert_eq!(
            baggage(&format!("tenant={}", "a".repeat(2000)), &["tenant"]),
            None
        );
        assert_eq!(baggage("tenant=bad value", &["tenant"]), None);
    }
}
