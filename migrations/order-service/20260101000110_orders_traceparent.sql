-- The writer's W3C traceparent, on every insert and update of an order (null with
-- PROPAGATION=off). Debezium captures it with the row, so projection-service, which reads the
-- table's change events and no headers of ours, joins the request's trace (pitfall 3 across CDC).
ALTER TABLE orders ADD COLUMN traceparent text;
