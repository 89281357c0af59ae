//! Keyset paging shared by the list routes: `limit` (1-100, default 20) and an opaque
//! `cursor` (the last key of the previous page, as this API returned it).

use eda_http::ApiError;
use serde::Deserialize;

/// `?limit=&cursor=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct Page {
    /// Items per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub(crate) limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub(crate) cursor: Option<String>,
}

impl Page {
    /// The limit, checked.
    pub(crate) fn limit(&self) -> Result<i64, ApiError> {
        let limit = self.limit.unwrap_or(20);
        if !(1..=100).contains(&limit) {
            return Err(ApiError::BadRequest(
                "limit must be between 1 and 100".to_owned(),
            ));
        }
        Ok(limit)
    }

    /// The cursor, checked by `parse` (it must be a key this API returned).
    pub(crate) fn cursor<T>(
        &self,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, ApiError> {
        self.cursor
            .as_deref()
            .map(|c| {
                parse(c).ok_or_else(|| {
                    ApiError::BadRequest("cursor is not one this API returned".to_owned())
                })
            })
            .transpose()
    }
}

/// A text key as cursor: any string PostgreSQL can hold (one with a NUL cannot be a key this
/// API returned, and would fail the query).
pub(crate) fn text_key(cursor: &str) -> Option<String> {
    (!cursor.contains('\0')).then(|| cursor.to_owned())
}

/// Cuts `rows` (fetched with `limit + 1`) to `limit` and returns the next page's cursor.
pub(crate) fn next_cursor<T>(
    rows: &mut Vec<T>,
    limit: i64,
    key: impl Fn(&T) -> String,
) -> Option<String> {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    if more { rows.last().map(key) } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_cursors() {
        let page = Page {
            limit: Some(0),
            cursor: Some("x".to_owned()),
        };
        assert!(page.limit().is_err());
        assert!(page.cursor(|c| c.parse::<i64>().ok()).is_err());
        let page = Page {
            limit: None,
            cursor: None,
        };
        assert_eq!(page.limit().unwrap(), 20);
        assert_eq!(page.cursor(|c| c.parse::<i64>().ok()).unwrap(), None);
        let mut rows = vec![1, 2, 3];
        assert_eq!(
            next_cursor(&mut rows, 2, |r| r.to_string()),
            Some("2".to_owned())
        );
        assert_eq!(rows, [1, 2]);
        assert_eq!(next_cursor(&mut rows, 2, |r| r.to_string()), None);
        assert_eq!(text_key("SKU-1").as_deref(), Some("SKU-1"));
        assert_eq!(text_key("a\0b"), None);
    }
}
