-- The breach register (GDPR Art. 33(5)): every incident, notified or not,
-- what was compromised, the window, and its timeline. No personal value:
-- ids, instants, an officer's text. `events` counts the timeline's rows
-- and is bumped by the statement that adds one, under the row's lock, only
-- while `closed_at` is NULL: nothing is recorded on a closed incident,
-- whatever runs beside it. Window bounds are microseconds since the Unix
-- epoch, as the audit ledger's leaves keep time.
CREATE TABLE incident (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title       text        NOT NULL CHECK (length(title) BETWEEN 1 AND 2000),
    window_from bigint      NOT NULL,
    window_to   bigint      NOT NULL CHECK (window_to > window_from),
    aware_at    timestamptz NOT NULL,
    opened_by   text        NOT NULL CHECK (length(opened_by) BETWEEN 1 AND 2000),
    events      integer     NOT NULL DEFAULT 0 CHECK (events >= 0),
    closed_at   timestamptz
);

-- What was in the attacker's hands: kind 1 an account, 2 an organisation.
CREATE TABLE incident_subject (
    incident_id bigint   NOT NULL REFERENCES incident (id),
    kind        smallint NOT NULL CHECK (kind IN (1, 2)),
    subject_id  bigint   NOT NULL,
    PRIMARY KEY (incident_id, kind, subject_id)
);

CREATE TABLE incident_event (
    incident_id bigint      NOT NULL REFERENCES incident (id),
    seq         integer     NOT NULL CHECK (seq >= 1),
    at          timestamptz NOT NULL,
    milestone   text        NOT NULL CHECK (milestone IN ('opened', 'contained', 'scoped',
                    'authority_notified', 'persons_informed', 'closed')),
    note        text,
    recorded_at timestamptz NOT NULL,
    PRIMARY KEY (incident_id, seq)
);
