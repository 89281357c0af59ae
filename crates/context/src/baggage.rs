//! Which W3C `baggage` members are accepted from outside ([`BaggagePolicy`]).
//!
//! Baggage is free-form and set by whoever sends the request or produces the record: passed on
//! blindly, it carries anything (a session token pasted by a client, kilobytes of junk) into
//! every downstream service, log and span. So only named keys cross a boundary; the rest are
//! dropped where the context is read ([`crate::trace::extract_with`],
//! [`crate::Propagation::incoming_with`], [`crate::http::ContextLayer::with_baggage`]).
//!
//! The default, [`DEFAULT_BAGGAGE_KEYS`], is this project's own list; a service that copies the
//! crate names its keys instead, in code or from a setting:
//!
//! ```
//! use eda_context::BaggagePolicy;
//!
//! let policy: BaggagePolicy = "tenant, plan".parse().expect("W3C keys");
//! assert_eq!(policy.filter("plan=pro,secret=x").as_deref(), Some("plan=pro"));
//! assert_eq!(BaggagePolicy::none().filter("tenant=acme"), None);
//! assert!(BaggagePolicy::default().allows("tenant"));
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use crate::sanitize;

/// The keys [`BaggagePolicy::default`] passes on: the ones this project's services use.
pub const DEFAULT_BAGGAGE_KEYS: &[&str] = &["tenant", "region", "demo"];

/// Longest baggage key accepted in a policy.
pub const MAX_BAGGAGE_KEY_LEN: usize = 256;

static DEFAULT: LazyLock<BaggagePolicy> = LazyLock::new(|| {
    BaggagePolicy::allow(DEFAULT_BAGGAGE_KEYS.iter().copied()).expect("valid default keys")
});

/// The baggage keys accepted from outside; every other member is dropped at the boundary.
///
/// Cheap to clone (the keys are shared). Applies to what comes in: baggage a service puts on
/// its own context is written out as it is.
#[derive(Clone, PartialEq, Eq)]
pub struct BaggagePolicy {
    keys: Arc<[Box<str>]>,
}

impl BaggagePolicy {
    /// Accepts exactly `keys` (duplicates ignored). Each must be a W3C baggage key (an HTTP
    /// token: letters, digits and ``!#$%&'*+-.^_`|~``, at most 256 characters).
    pub fn allow<I, K>(keys: I) -> Result<Self, InvalidBaggageKey>
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
    {
        let mut kept: Vec<Box<str>> = Vec::new();
        for key in keys {
            let key = key.as_ref();
            if !is_token(key) {
                return Err(InvalidBaggageKey(key.to_owned()));
            }
            if !kept.iter().any(|k| &**k == key) {
                kept.push(key.into());
            }
        }
        Ok(Self { keys: kept.into() })
    }

    /// Accepts no baggage at all.
    pub fn none() -> Self {
        Self { keys: Arc::new([]) }
    }

    /// The accepted keys, in the order given.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| &**k)
    }

    /// Whether members named `key` are passed on.
    pub fn allows(&self, key: &str) -> bool {
        self.keys.iter().any(|k| &**k == key)
    }

    /// An incoming `baggage` value reduced to the accepted keys, printable, at most
    /// [`sanitize::MAX_BAGGAGE_LEN`] in all (member properties dropped); `None` when nothing is
    /// left.
    pub fn filter(&self, value: &str) -> Option<String> {
        sanitize::baggage_where(value, |key| self.allows(key))
    }
}

/// [`DEFAULT_BAGGAGE_KEYS`].
impl Default for BaggagePolicy {
    fn default() -> Self {
        DEFAULT.clone()
    }
}

impl fmt::Debug for BaggagePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BaggagePolicy")
            .field(&self.keys.as_ref())
            .finish()
    }
}

/// A comma-separated list of keys, as in a setting (`BAGGAGE_KEYS=tenant,region`); spaces
/// around keys are ignored and an empty list accepts no baggage.
impl FromStr for BaggagePolicy {
    type Err = InvalidBaggageKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Ok(Self::none());
        }
        Self::allow(s.split(',').map(str::trim))
    }
}

/// The keys, comma-separated: what [`FromStr`] reads back.
impl fmt::Display for BaggagePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.keys.join(","))
    }
}

/// A baggage key that no W3C `baggage` header could carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidBaggageKey(pub String);

impl fmt::Display for InvalidBaggageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a baggage key: expected 1 to {MAX_BAGGAGE_KEY_LEN} letters, digits or !#$%&'*+-.^_`|~",
            self.0
        )
    }
}

impl std::error::Error for InvalidBaggageKey {}

/// An HTTP token (RFC 9110), which is what W3C Baggage allows as a key.
fn is_token(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_BAGGAGE_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_projects_list() {
        let policy = BaggagePolicy::default();
        assert_eq!(
            policy.keys().collect::<Vec<_>>(),
            DEFAULT_BAGGAGE_KEYS.to_vec()
        );
        assert_eq!(
            policy.filter("tenant=acme,secret=x,demo=1").as_deref(),
            Some("tenant=acme,demo=1")
        );
    }

    #[test]
    fn a_custom_list_replaces_the_default() {
        let policy = BaggagePolicy::allow(["plan", "plan", "shard"]).unwrap();
        assert_eq!(policy.keys().collect::<Vec<_>>(), ["plan", "shard"]);
        assert!(!policy.allows("tenant"));
        assert_eq!(
            policy.filter("tenant=acme, plan=pro;prop=1").as_deref(),
            Some("plan=pro")
        );
        assert_eq!(policy.filter("tenant=acme"), None);
    }

    #[test]
    fn none_drops_everything() {
        assert_eq!(BaggagePolicy::none().filter("tenant=acme,region=eu"), None);
        assert_eq!(BaggagePolicy::none().keys().count(), 0);
    }

    #[test]
    fn keys_must_be_tokens() {
        for bad in [
            "",
            "a b",
            "a,b",
            "a=b",
            "ten;ant",
            "é",
            "\n",
            &"k".repeat(257),
        ] {
            let err = BaggagePolicy::allow([bad]).unwrap_err();
            assert_eq!(err.0, bad);
            assert!(err.to_string().contains("not a baggage key"), "{err}");
        }
        assert!(BaggagePolicy::allow(["x-team.id", "a!#$%&'*+-.^_`|~"]).is_ok());
    }

    #[test]
    fn parses_and_prints_a_setting() {
        let policy: BaggagePolicy = " tenant , plan ".parse().unwrap();
        assert_eq!(policy.to_string(), "tenant,plan");
        assert_eq!(policy.to_string().parse(), Ok(policy));
        assert_eq!("".parse(), Ok(BaggagePolicy::none()));
        assert_eq!(" ".parse(), Ok(BaggagePolicy::none()));
        assert!("tenant,,plan".parse::<BaggagePolicy>().is_err());
        assert_eq!(
            format!("{:?}", BaggagePolicy::allow(["a"]).unwrap()),
            r#"BaggagePolicy(["a"])"#
        );
    }

    #[test]
    fn hostile_values_are_still_bounded_under_a_custom_list() {
        let policy = BaggagePolicy::allow(["plan"]).unwrap();
        assert_eq!(policy.filter(&format!("plan={}", "a".repeat(2000))), None);
        assert_eq!(policy.filter("plan=bad value"), None);
        assert_eq!(policy.filter("plan=\u{1b}[31m"), None);
    }
}
