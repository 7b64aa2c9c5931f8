-- An organisation's alert names the accounts involved (comma-separated
-- ids; empty for an account's own alert).
ALTER TABLE guard_alert ADD COLUMN accounts TEXT NOT NULL DEFAULT '';

-- Organisations get hourly activity rows too (scope 2): their usual is
-- what the guard's organisation stage compares with.
ALTER TABLE guard_activity DROP CONSTRAINT guard_activity_scope_check;
ALTER TABLE guard_activity ADD CONSTRAINT guard_activity_scope_check
    CHECK (scope IN (1, 2, 3));
