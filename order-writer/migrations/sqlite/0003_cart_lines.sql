-- Carts (protocol 6): a confirmed cart is one order with one row per line, so a row is named
-- by its reservation (the cart's id) and its line (0 for a one-line reservation). SQLite
-- cannot change a primary key in place: the tables are rebuilt, rows kept.
CREATE TABLE orders_by_line (
    reservation_id INTEGER NOT NULL,
    line           INTEGER NOT NULL DEFAULT 0,
    order_ref      TEXT,
    buyer_id       INTEGER NOT NULL,
    sku_id         INTEGER NOT NULL,
    qty            INTEGER NOT NULL,
    status         TEXT    NOT NULL,
    ended_at_ms    INTEGER NOT NULL,
    stream_shard   INTEGER NOT NULL,
    stream_seq     INTEGER NOT NULL,
    written_at     TEXT    NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (reservation_id, line)
);
INSERT INTO orders_by_line (reservation_id, order_ref, buyer_id, sku_id, qty, status,
                            ended_at_ms, stream_shard, stream_seq, written_at)
    SELECT reservation_id, order_ref, buyer_id, sku_id, qty, status, ended_at_ms,
           stream_shard, stream_seq, written_at FROM orders;
DROP TABLE orders;
ALTER TABLE orders_by_line RENAME TO orders;
CREATE INDEX IF NOT EXISTS orders_sku_status ON orders (sku_id, status);
CREATE TABLE dead_letters_by_line (
    reservation_id INTEGER NOT NULL,
    line           INTEGER NOT NULL DEFAULT 0,
    order_ref      TEXT,
    buyer_id       INTEGER NOT NULL,
    sku_id         INTEGER NOT NULL,
    qty            INTEGER NOT NULL,
    status         TEXT    NOT NULL,
    ended_at_ms    INTEGER NOT NULL,
    stream_shard   INTEGER NOT NULL,
    stream_seq     INTEGER NOT NULL,
    error          TEXT    NOT NULL,
    written_at     TEXT    NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (reservation_id, line)
);
INSERT INTO dead_letters_by_line (reservation_id, order_ref, buyer_id, sku_id, qty, status,
                                  ended_at_ms, stream_shard, stream_seq, error, written_at)
    SELECT reservation_id, order_ref, buyer_id, sku_id, qty, status, ended_at_ms,
           stream_shard, stream_seq, error, written_at FROM dead_letters;
DROP TABLE dead_letters;
ALTER TABLE dead_letters_by_line RENAME TO dead_letters;
