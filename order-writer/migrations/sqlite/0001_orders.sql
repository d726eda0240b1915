-- One row per reservation that ended in a way the writer records (confirmed, and with
-- --record-ended also cancelled and expired). The primary key is what makes a redelivered
-- event a no-op: inserts skip a reservation already stored.
CREATE TABLE IF NOT EXISTS orders (
    reservation_id INTEGER PRIMARY KEY,
    order_ref      TEXT,
    buyer_id       INTEGER NOT NULL,
    sku_id         INTEGER NOT NULL,
    qty            INTEGER NOT NULL,
    status         TEXT    NOT NULL,
    ended_at_ms    INTEGER NOT NULL,
    stream_shard   INTEGER NOT NULL,
    stream_seq     INTEGER NOT NULL,
    written_at     TEXT    NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX IF NOT EXISTS orders_sku_status ON orders (sku_id, status);
