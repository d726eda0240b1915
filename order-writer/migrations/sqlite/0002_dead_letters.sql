-- Events whose order row the database refused for a reason retrying cannot fix (a
-- constraint, a type, a trigger): kept with the error and their stream position, so the
-- stream goes on and an operator can mend and replay them.
CREATE TABLE IF NOT EXISTS dead_letters (
    reservation_id INTEGER PRIMARY KEY,
    order_ref      TEXT,
    buyer_id       INTEGER NOT NULL,
    sku_id         INTEGER NOT NULL,
    qty            INTEGER NOT NULL,
    status         TEXT    NOT NULL,
    ended_at_ms    INTEGER NOT NULL,
    stream_shard   INTEGER NOT NULL,
    stream_seq     INTEGER NOT NULL,
    error          TEXT    NOT NULL,
    written_at     TEXT    NOT NULL DEFAULT CURRENT_TIMESTAMP
);
