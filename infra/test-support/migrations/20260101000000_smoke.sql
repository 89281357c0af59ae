-- A migration shaped like the services' own: proves sqlx's migrator works against this server.
CREATE TABLE smoke_orders (
    id          uuid PRIMARY KEY,
    revision    bigint NOT NULL DEFAULT 1,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
