-- An organisation's alert names the accounts involved (comma-separated
-- ids; empty for an account's own alert).
ALTER TABLE guard_alert ADD COLUMN accounts TEXT NOT NULL DEFAULT '';
