-- One row per reservation that ended in a way the writer records (confirmed, and with
-- --record-ended also cancelled and expired). The primary key is what makes a redelivered
-- event a no-op: inserts skip a reservation already stored.
CREATE TABLE IF NOT EXISTS orders (
    reservation_id BIGINT      PRIMARY KEY,
    order_ref      VARCHAR(32),
    buyer_id       BIGINT      NOT NULL,
    sku_id         BIGINT      NOT NULL,
    qty            INTEGER     NOT NULL,
    status         VARCHAR(16) NOT NULL,
    ended_at_ms    BIGINT      NOT NULL,
    stream_shard   SMALLINT    NOT NULL,
    stream_seq     BIGINT      NOT NULL,
    written_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS orders_sku_status ON orders (sku_id, status);
