use eda_test_support::{Stack, TempDatabase, unique};
use sqlx::{Connection, PgConnection, Row};

#[tokio::test]
async fn sqlx_runs_migrations_and_round_trips_a_row() {
    let stack = Stack::from_env();
    let db = TempDatabase::create(&stack).await;
    let pool = sqlx::PgPool::connect(&stack.database_url(&db.name))
        .await
        .expect("connect to test database");

    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .expect("migrations apply");
    // Running them again is a no-op, as at every service start.
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .expect("migrations are idempotent");

    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied, 1);

    let id = uuid::Uuid::now_v7();
    sqlx::query("INSERT INTO smoke_orders (id, payload) VALUES ($1, $2)")
        .bind(id)
        .bind(serde_json::json!({"sku": "SKU-1", "quantity": 2}))
        .execute(&pool)
        .await
        .unwrap();
    let row = sqlx::query("SELECT revision, payload FROM smoke_orders WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(row.get::<i64, _>("revision"), 1);
    assert_eq!(row.get::<serde_json::Value, _>("payload")["quantity"], 2);
    pool.close().await;
}

#[tokio::test]
async fn server_is_ready_for_debezium_and_has_the_service_databases() {
    let stack = Stack::from_env();
    let mut conn = PgConnection::connect(&stack.database_admin_url)
        .await
        .expect("connect to PostgreSQL");

    let wal_level: String = sqlx::query_scalar("SHOW wal_level")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(wal_level, "logical", "Debezium needs logical decoding");
    let slots: String = sqlx::query_scalar("SHOW max_replication_slots")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(
        slots.parse::<i32>().unwrap() >= 4,
        "replication slots enabled, got {slots}"
    );

    let databases: Vec<String> = sqlx::query_scalar("SELECT datname FROM pg_database")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    for expected in ["orders", "inventory", "projection"] {
        assert!(
            databases.iter().any(|d| d == expected),
            "database {expected} missing: {databases:?}"
        );
    }

    // A logical replication slot can really be created (and is removed again).
    let slot = unique("smoke_slot");
    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
        .bind(&slot)
        .execute(&mut conn)
        .await
        .expect("logical replication slot");
    sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(&slot)
        .execute(&mut conn)
        .await
        .unwrap();
}
