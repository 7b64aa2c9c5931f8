-- The guard's exchange reads one account's and one organisation's
-- counters on every decision near a limit: by subject, not by bucket.
CREATE INDEX guard_counter_subject ON guard_counter (scope, subject, bucket);

-- The instances sharing the store, each seen at its last sync (Unix
-- seconds): an instance alone exchanges with no one.
CREATE TABLE guard_instance (
    instance BIGINT NOT NULL PRIMARY KEY,
    seen_at  BIGINT NOT NULL
);
