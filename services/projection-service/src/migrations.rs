//! The service's own schema (the views): `migrations/projection-service`. Its own module, so
//! that `startup` and `rebuild` (which migrates a new generation) both use it.

/// The views' migrations.
pub static MIGRATOR: sqlx::migrate::Migrator =
    sqlx::migrate!("../../migrations/projection-service");
