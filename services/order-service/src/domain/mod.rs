//! Validated domain types: a value of these types is valid by construction, so handlers and the
//! database layer never re-check.

mod order;

pub use order::{
    Currency, Customer, CustomerRequest, LineRequest, MAX_LINES, MAX_QUANTITY,
    MAX_UNIT_PRICE_CENTS, NewOrder, NewOrderRequest, OrderLine, OrderStatus, ValidationError,
};
