-- Registry v9: the guard's suspension blocks, shared by every instance.
--
-- When the guard suspends an account it refuses it with a suspension for a
-- day, whatever the account's state says meanwhile, so that an officer
-- reactivating it sooner sees it suspended again at its first attempt.
-- That block lived in the deciding instance's memory only; here every
-- instance reads it. One row per account, whose end only moves later.
-- Ids and instants only; no foreign key, like the other guard tables.
CREATE TABLE guard_block (
    account_id    INTEGER PRIMARY KEY,
    blocked_until TEXT NOT NULL             -- RFC 3339, microseconds, UTC
) STRICT;
