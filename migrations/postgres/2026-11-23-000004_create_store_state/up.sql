-- Store-wide counters, one row.
-- change_counter: bumped by every write transaction that changes a job (drives list ETags
-- and job versions): `UPDATE … RETURNING` in the write itself, so the row lock orders the
-- versions of concurrent servers by commit. boot_epoch: bumped once per server start.
CREATE TABLE store_state (
    id BIGINT PRIMARY KEY NOT NULL CHECK (id = 1),
    change_counter BIGINT NOT NULL,
    boot_epoch BIGINT NOT NULL
);

INSERT INTO store_state (id, change_counter, boot_epoch) VALUES (1, 0, 0);
