-- Returns (protocol 6): units of an order row that came back after its confirm. Set to the
-- return event's running total (never lowered), so a redelivered return changes nothing; a
-- row whose every unit came back has status 'returned'.
ALTER TABLE orders ADD COLUMN returned_qty INTEGER NOT NULL DEFAULT 0;
