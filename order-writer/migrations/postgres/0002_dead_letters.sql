-- Events whose order row the database refused for a reason retrying cannot fix (a
-- constraint, a type, a trigger): kept with the error and their stream position, so the
-- stream goes on and an operator can mend and replay them.
CREATE TABLE IF NOT EXISTS dead_letters (
    reservation_id BIGINT      PRIMARY KEY,
    order_ref      VARCHAR(32),
    buyer_id       BIGINT      NOT NULL,
    sku_id         BIGINT      NOT NULL,
    qty            INTEGER     NOT NULL,
    status         VARCHAR(16) NOT NULL,
    ended_at_ms    BIGINT      NOT NULL,
    stream_shard   SMALLINT    NOT NULL,
    stream_seq     BIGINT      NOT NULL,
    error          TEXT        NOT NULL,
    written_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
