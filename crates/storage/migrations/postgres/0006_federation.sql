-- Registry v6: federated identities. An officer links an identity of an
-- external OpenID provider (ProConnect), named by the provider's issuer URL
-- and its stable subject, to an account; a federated login opens a session
-- only through such a link, never by matching an e-mail. One identity names
-- at most one account (the key); an account may have several (two
-- providers, or one that changed its issuer URL). linked_by is the officer
-- who made the link (the store checks the role; an account never links
-- itself).
CREATE TABLE federation_link (
    issuer     TEXT NOT NULL CHECK (char_length(issuer) BETWEEN 1 AND 512),
    subject    TEXT NOT NULL CHECK (char_length(subject) BETWEEN 1 AND 255),
    account_id BIGINT NOT NULL REFERENCES account (id),
    linked_by  BIGINT NOT NULL REFERENCES account (id),
    linked_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (issuer, subject),
    CHECK (linked_by <> account_id)
);

CREATE INDEX federation_link_account ON federation_link (account_id);
