//! The reference an offloaded event carries, in its headers (and, for readers of the raw topic,
//! as its small JSON value).

use crate::{Codec, Error, Result, shown};

/// The contract's claim-check headers.
pub mod headers {
    /// `s3://<bucket>/<key>` of the stored payload.
    pub const LOCATION: &str = "claim-check-location";
    /// Hex sha256 of the payload (as the handler sees it, before any compression).
    pub const SHA256: &str = "claim-check-sha256";
    /// Size of the payload in bytes (before compression).
    pub const SIZE: &str = "claim-check-size";
    /// Codec of the stored object: `none` or `zstd`.
    pub const CODEC: &str = "claim-check-codec";
}

/// Where a payload is stored and how to check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The bucket.
    pub bucket: String,
    /// The object key.
    pub key: String,
    /// Hex sha256 of the payload.
    pub sha256: String,
    /// Size of the payload in bytes.
    pub size: usize,
    /// Codec of the stored object.
    pub codec: Codec,
}

impl Reference {
    /// `s3://<bucket>/<key>`.
    pub fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    /// The four headers, for an outgoing event.
    pub fn headers(&self) -> [(&'static str, String); 4] {
        [
            (headers::LOCATION, self.location()),
            (headers::SHA256, self.sha256.clone()),
            (headers::SIZE, self.size.to_string()),
            (headers::CODEC, self.codec.as_str().to_owned()),
        ]
    }

    /// The small JSON value that replaces the payload on the topic (the headers are what
    /// consumers use; the value tells a human reading the raw topic what happened).
    pub fn value(&self) -> String {
        serde_json::json!({"claim_check": {
            "location": self.location(),
            "sha256": self.sha256,
            "size": self.size,
            "codec": self.codec.as_str(),
        }})
        .to_string()
    }

    /// Reads and checks the headers of a record that claims a stored payload. `header` looks a
    /// header up; `bucket`, `prefix` and `max_size` are what this consumer accepts. Every
    /// problem is a [`Error::Refused`]: a reference outside the bucket or prefix, an odd key
    /// (`..`, control characters, absolute), a size over `max_size`, a checksum that is not 64
    /// hex digits, an unknown codec.
    pub fn from_headers<'a>(
        header: impl Fn(&str) -> Option<&'a str>,
        bucket: &str,
        prefix: &str,
        max_size: usize,
    ) -> Result<Self> {
        let get = |name: &str| {
            header(name)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| Error::Refused(format!("header {name} is missing")))
        };
        let location = get(headers::LOCATION)?;
        let Some((got_bucket, key)) = location
            .strip_prefix("s3://")
            .and_then(|rest| rest.split_once('/'))
        else {
            return Err(Error::Refused(format!(
                "location {:?} is not s3://<bucket>/<key>",
                shown(location)
            )));
        };
        if got_bucket != bucket {
            return Err(Error::Refused(format!(
                "location {:?} is outside the bucket {bucket}",
                shown(location)
            )));
        }
        if !key.starts_with(prefix) || !is_plain_key(key) {
            return Err(Error::Refused(format!(
                "object key {:?} is not a plain key under {prefix:?}",
                shown(key)
            )));
        }
        let size_text = get(headers::SIZE)?;
        let size: usize = size_text
            .parse()
            .map_err(|_| Error::Refused(format!("size {:?} is not a number", shown(size_text))))?;
        if size > max_size {
            return Err(Error::Refused(format!(
                "payload of {size} bytes is over the {max_size} bytes this consumer accepts"
            )));
        }
        let sha256 = get(headers::SHA256)?;
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Refused(format!(
                "sha256 {:?} is not 64 hex digits",
                shown(sha256)
            )));
        }
        Ok(Self {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            sha256: sha256.to_ascii_lowercase(),
            size,
            codec: get(headers::CODEC)?.parse()?,
        })
    }
}

/// A key of `A-Z a-z 0-9 . _ - /` segments, not absolute, no empty, `.` or `..` segment, at
/// most 512 bytes.
fn is_plain_key(key: &str) -> bool {
    key.len() <= 512
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
        && key
            .split('/')
            .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn parse(location: &str, size: &str, sha: &str, codec: &str) -> Result<Reference> {
        let pairs = [
            (headers::LOCATION, location),
            (headers::SIZE, size),
            (headers::SHA256, sha),
            (headers::CODEC, codec),
        ];
        Reference::from_headers(
            |name| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v),
            "claims",
            "orders/",
            1000,
        )
    }

    #[test]
    fn a_reference_round_trips_through_its_headers() {
        let r = parse("s3://claims/orders/t/1", "10", SHA, "zstd").unwrap();
        assert_eq!(r.location(), "s3://claims/orders/t/1");
        let again = Reference::from_headers(
            |name| {
                r.headers()
                    .into_iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| Box::leak(v.into_boxed_str()) as &str)
            },
            "claims",
            "orders/",
            1000,
        )
        .unwrap();
        assert_eq!(again, r);
        assert!(r.value().contains("\"size\":10"));
    }

    #[test]
    fn references_outside_the_bucket_or_with_odd_keys_are_refused() {
        for (location, why) in [
            ("s3://other/orders/t/1", "outside the bucket"),
            ("https://evil/orders/t/1", "not s3://"),
            ("s3://claims/invoices/1", "not a plain key under"),
            ("s3://claims/orders/../secrets", "not a plain key"),
            ("s3://claims/orders//x", "not a plain key"),
            ("s3://claims/orders/a\nb", "not a plain key"),
        ] {
            let err = parse(location, "10", SHA, "zstd").unwrap_err().to_string();
            assert!(err.contains(why), "{location}: {err}");
        }
    }

    #[test]
    fn sizes_checksums_and_codecs_are_checked_before_anything_is_read() {
        let ok = "s3://claims/orders/t/1";
        assert!(
            parse(ok, "1001", SHA, "zstd")
                .unwrap_err()
                .to_string()
                .contains("over the 1000")
        );
        assert!(
            parse(ok, "-1", SHA, "zstd")
                .unwrap_err()
                .to_string()
                .contains("not a number")
        );
        assert!(
            parse(ok, "10", "abc", "zstd")
                .unwrap_err()
                .to_string()
                .contains("64 hex")
        );
        assert!(
            parse(ok, "10", SHA, "gzip")
                .unwrap_err()
                .to_string()
                .contains("codec")
        );
    }
}
