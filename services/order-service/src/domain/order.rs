use serde::{Deserialize, Serialize};

/// Most lines in one order: a B2B bulk order. Its `OrderPlaced` is then several megabytes,
/// which is what the claim check (`eda-claim-check`) is for.
pub const MAX_LINES: usize = 100_000;
/// Largest quantity of one line.
pub const MAX_QUANTITY: i32 = 10_000;
/// Largest unit price: 1,000,000.00 in the order's currency.
pub const MAX_UNIT_PRICE_CENTS: i64 = 100_000_000;

/// What a client sends to `POST /orders`. Unknown fields are an error, not ignored: a typo in a
/// field name must not silently drop data.
///
/// The `#[schema(...)]` bounds document the rules [`NewOrder::parse`] enforces (a 422 names
/// each field that breaks one); `parse` stays the authority.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrderRequest {
    /// Who the order is for.
    pub customer: CustomerRequest,
    /// ISO 4217 code, e.g. `EUR`.
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: String,
    /// At least one line.
    #[schema(min_items = 1, max_items = 100_000)]
    pub lines: Vec<LineRequest>,
}

/// Customer part of [`NewOrderRequest`].
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerRequest {
    /// Display name: 1 to 200 characters once trimmed, no control characters.
    #[schema(min_length = 1, max_length = 200, example = "Ada Lovelace")]
    pub name: String,
    /// Contact e-mail: 3 to 254 characters once trimmed, one `@`, no spaces.
    #[schema(min_length = 3, max_length = 254, example = "ada@example.com")]
    pub email: String,
}

/// One line of [`NewOrderRequest`].
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineRequest {
    /// Stock keeping unit: `A-Z`, `0-9`, `-`, 1 to 64 characters.
    #[schema(pattern = "^[A-Z0-9-]{1,64}$", example = "SKU-1")]
    pub sku: String,
    /// Units ordered, 1 to [`MAX_QUANTITY`].
    #[schema(minimum = 1, maximum = 10_000)]
    pub quantity: i32,
    /// Price of one unit in cents, 0 to [`MAX_UNIT_PRICE_CENTS`].
    #[schema(minimum = 0, maximum = 100_000_000)]
    pub unit_price_cents: i64,
}

/// A field that failed validation (the HTTP layer renders these as problem details).
pub use eda_http::FieldError as ValidationError;

/// A validated customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Customer {
    /// Display name, trimmed, 1 to 200 characters.
    pub name: String,
    /// E-mail, trimmed, 3 to 254 characters with one `@`.
    pub email: String,
}

/// A validated ISO 4217-shaped currency code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Currency(String);

impl Currency {
    /// Three ASCII uppercase letters.
    pub fn parse(code: &str) -> Result<Self, String> {
        if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Self(code.to_owned()))
        } else {
            Err("must be a three-letter ISO 4217 code such as EUR".to_owned())
        }
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A validated order line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderLine {
    /// SKU.
    pub sku: String,
    /// Units.
    pub quantity: i32,
    /// Cents per unit.
    pub unit_price_cents: i64,
}

/// A validated order, ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// Customer.
    pub customer: Customer,
    /// Currency of every price.
    pub currency: Currency,
    /// One or more lines.
    pub lines: Vec<OrderLine>,
}

impl NewOrder {
    /// Validates everything and reports every problem at once (a client fixes a form in one go).
    pub fn parse(request: NewOrderRequest) -> Result<Self, Vec<ValidationError>> {
        let mut errors = Vec::new();
        let mut fail = |field: &str, message: &str| {
            errors.push(ValidationError {
                field: field.to_owned(),
                message: message.to_owned(),
            });
        };

        let name = request.customer.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
            fail(
                "customer.name",
                "must be 1 to 200 characters without control characters",
            );
        }
        let email = request.customer.email.trim().to_owned();
        if !(3..=254).contains(&email.len())
            || email.matches('@').count() != 1
            || email.starts_with('@')
            || email.ends_with('@')
            || email.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            fail("customer.email", "must be an e-mail address");
        }
        let currency = Currency::parse(&request.currency);
        if let Err(message) = &currency {
            fail("currency", message);
        }
        if request.lines.is_empty() {
            fail("lines", "must contain at least one line");
        }
        if request.lines.len() > MAX_LINES {
            fail("lines", &format!("must contain at most {MAX_LINES} lines"));
        }
        for (i, line) in request.lines.iter().enumerate().take(MAX_LINES) {
            if line.sku.is_empty()
                || line.sku.len() > 64
                || !line
                    .sku
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
            {
                fail(
                    &format!("lines[{i}].sku"),
                    "must be 1 to 64 characters of A-Z, 0-9 and -",
                );
            }
            if !(1..=MAX_QUANTITY).contains(&line.quantity) {
                fail(
                    &format!("lines[{i}].quantity"),
                    &format!("must be between 1 and {MAX_QUANTITY}"),
                );
            }
            if !(0..=MAX_UNIT_PRICE_CENTS).contains(&line.unit_price_cents) {
                fail(
                    &format!("lines[{i}].unit_price_cents"),
                    &format!("must be between 0 and {MAX_UNIT_PRICE_CENTS}"),
                );
            }
        }
        match currency {
            Ok(currency) if errors.is_empty() => Ok(Self {
                customer: Customer { name, email },
                currency,
                lines: request
                    .lines
                    .into_iter()
                    .map(|l| OrderLine {
                        sku: l.sku,
                        quantity: l.quantity,
                        unit_price_cents: l.unit_price_cents,
                    })
                    .collect(),
            }),
            _ => Err(errors),
        }
    }

    /// Sum of quantity x unit price. Cannot overflow: bounded by the limits above.
    pub fn total_cents(&self) -> i64 {
        self.lines
            .iter()
            .map(|l| i64::from(l.quantity) * l.unit_price_cents)
            .sum()
    }
}

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Written, waiting for inventory.
    Placed,
    /// Stock reserved.
    Confirmed,
    /// Not enough stock.
    Rejected,
    /// Cancelled by its owner.
    Cancelled,
}

impl OrderStatus {
    /// The database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Placed => "PLACED",
            Self::Confirmed => "CONFIRMED",
            Self::Rejected => "REJECTED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// Reads the database spelling.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Placed,
            Self::Confirmed,
            Self::Rejected,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(lines: Vec<LineRequest>) -> NewOrderRequest {
        NewOrderRequest {
            customer: CustomerRequest {
                name: " Ada ".into(),
                email: "ada@example.com".into(),
            },
            currency: "EUR".into(),
            lines,
        }
    }

    fn line(sku: &str, quantity: i32, price: i64) -> LineRequest {
        LineRequest {
            sku: sku.into(),
            quantity,
            unit_price_cents: price,
        }
    }

    #[test]
    fn a_valid_order_parses_and_totals() {
        let order =
            NewOrder::parse(request(vec![line("SKU-1", 2, 1250), line("SKU-2", 1, 100)])).unwrap();
        assert_eq!(order.customer.name, "Ada");
        assert_eq!(order.total_cents(), 2600);
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let mut req = request(vec![line("bad sku", 0, -1)]);
        req.currency = "euro".into();
        req.customer.email = "nope".into();
        let errors = NewOrder::parse(req).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "customer.email",
                "currency",
                "lines[0].sku",
                "lines[0].quantity",
                "lines[0].unit_price_cents"
            ]
        );
    }

    #[test]
    fn empty_and_oversized_orders_are_refused() {
        assert_eq!(
            NewOrder::parse(request(vec![])).unwrap_err()[0].field,
            "lines"
        );
        let many = (0..=MAX_LINES).map(|_| line("A", 1, 1)).collect();
        assert_eq!(
            NewOrder::parse(request(many)).unwrap_err()[0].message,
            "must contain at most 100000 lines"
        );
        let absurd = NewOrder::parse(request(vec![line(
            "A",
            MAX_QUANTITY + 1,
            MAX_UNIT_PRICE_CENTS + 1,
        )]))
        .unwrap_err();
        assert_eq!(absurd.len(), 2);
    }

    #[test]
    fn worst_case_total_fits_in_i64() {
        let lines = (0..MAX_LINES)
            .map(|_| line("A", MAX_QUANTITY, MAX_UNIT_PRICE_CENTS))
            .collect();
        let order = NewOrder::parse(request(lines)).unwrap();
        // 10^17: 92 times below i64::MAX.
        assert_eq!(order.total_cents(), 100_000 * 10_000 * 100_000_000);
    }

    #[test]
    fn status_round_trips() {
        for s in ["PLACED", "CONFIRMED", "REJECTED", "CANCELLED"] {
            assert_eq!(OrderStatus::parse(s).unwrap().as_str(), s);
        }
        assert_eq!(OrderStatus::parse("placed"), None);
    }
}
