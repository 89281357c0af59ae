//! One test binary for the whole stack (one link instead of five). Each module checks one
//! component with the library the services use; each test isolates itself with its own
//! database, topic, consumer group or object key, so they run in parallel.

mod compose;
mod connect;
mod kafka;
mod minio;
mod postgres;
