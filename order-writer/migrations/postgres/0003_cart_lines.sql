-- Carts (protocol 6): a confirmed cart is one order with one row per line, so a row is named
-- by its reservation (the cart's id) and its line (0 for a one-line reservation).
ALTER TABLE orders ADD COLUMN line SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE orders DROP CONSTRAINT orders_pkey;
ALTER TABLE orders ADD PRIMARY KEY (reservation_id, line);
ALTER TABLE dead_letters ADD COLUMN line SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_pkey;
ALTER TABLE dead_letters ADD PRIMARY KEY (reservation_id, line);
