//! Validated inputs.

use eda_http::FieldError;

/// A SKU: `A-Z`, `0-9`, `-`, 1 to 64 characters (the same rule order-service applies).
pub fn parse_sku(sku: &str) -> Result<String, FieldError> {
    if !sku.is_empty()
        && sku.len() <= 64
        && sku
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
    {
        Ok(sku.to_owned())
    } else {
        Err(FieldError::new(
            "sku",
            "must be 1 to 64 characters of A-Z, 0-9 and -",
        ))
    }
}

/// Largest stock level accepted for one SKU.
pub const MAX_AVAILABLE: i64 = 1_000_000_000;

/// A stock level: 0 to [`MAX_AVAILABLE`].
pub fn parse_available(available: i64) -> Result<i64, FieldError> {
    if (0..=MAX_AVAILABLE).contains(&available) {
        Ok(available)
    } else {
        Err(FieldError::new(
            "available",
            format!("must be between 0 and {MAX_AVAILABLE}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skus_and_levels_are_checked() {
        assert!(parse_sku("SKU-1").is_ok());
        assert!(parse_sku("sku 1").is_err());
        assert!(parse_sku("").is_err());
        assert!(parse_available(0).is_ok());
        assert!(parse_available(-1).is_err());
        assert!(parse_available(MAX_AVAILABLE + 1).is_err());
    }
}
