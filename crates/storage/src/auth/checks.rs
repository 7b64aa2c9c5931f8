//! The checks both backends run before they write what authentication
//! persists: input shapes (codes, key thumbprints, PHC strings, sealed
//! secrets, session instants) and the four-eyes and state-machine rules
//! of decisions on accounts, resets, activations and federated links.
//! Written once here; each backend only fetches the facts they judge.

use chrono::{DateTime, Utc};
use rempart_domain::{
    AccountAction, AccountId, AccountState, LifecycleState, OrganisationId, OrganisationKind, Role,
};

use crate::StorageError;
use crate::auth::{AccessTokenRow, SESSION_METHODS, StoredSession};

/// A refusal naming the field and the rule, as elsewhere in the store.
pub(crate) fn refuse(field: &'static str, reason: impl Into<String>) -> StorageError {
    StorageError::Refused {
        field,
        reason: reason.into(),
    }
}

/// What `field` names does not exist.
pub(crate) fn not_found(field: &'static str, what: &'static str) -> StorageError {
    StorageError::NotFound { field, what }
}

/// Ceremony kinds and session end reasons: lowercase codes the database
/// checks too (`[a-z][a-z_]{0,31}`).
pub(crate) fn check_code(field: &'static str, value: &str) -> Result<(), StorageError> {
    let mut bytes = value.bytes();
    let ok = value.len() <= 32
        && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(refuse(
            field,
            "must be 1 to 32 lowercase letters or underscores, starting with a letter",
        ))
    }
}

/// A session's method.
pub(crate) fn check_method(method: &str) -> Result<(), StorageError> {
    if SESSION_METHODS.contains(&method) {
        Ok(())
    } else {
        Err(refuse("method", "must be passkey, password_totp or oidc"))
    }
}

/// A JWK SHA-256 thumbprint: 43 characters of unpadded base64url.
pub(crate) fn check_jkt(jkt: &str) -> Result<(), StorageError> {
    if jkt.len() == 43
        && jkt
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err(refuse(
            "jkt",
            "must be a JWK thumbprint (43 characters of base64url)",
        ))
    }
}

/// An OAuth client id: 1 to 128 visible ASCII characters.
pub(crate) fn check_client_id(client_id: &str) -> Result<(), StorageError> {
    if (1..=128).contains(&client_id.len()) && client_id.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(refuse(
            "client_id",
            "must be 1 to 128 visible ASCII characters",
        ))
    }
}

/// A federated identity's issuer (1 to 512) or subject (1 to 255): visible
/// ASCII only, as issuer URLs and OpenID Connect subjects are. The value
/// is never echoed: a subject names a person at the provider.
pub(crate) fn check_federated(issuer: &str, subject: &str) -> Result<(), StorageError> {
    let visible = |v: &str, max: usize| {
        (1..=max).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic())
    };
    if !visible(issuer, 512) {
        return Err(refuse(
            "issuer",
            "must be 1 to 512 visible ASCII characters",
        ));
    }
    if !visible(subject, 255) {
        return Err(refuse(
            "subject",
            "must be 1 to 255 visible ASCII characters",
        ));
    }
    Ok(())
}

/// Who may link or unlink a federated identity: an active officer, never
/// the account linked (`account_id`, when linking).
pub(crate) fn check_federation_officer(
    field: &'static str,
    account_id: Option<AccountId>,
    officer: Option<&Decider>,
) -> Result<(), StorageError> {
    match officer {
        None => Err(not_found(field, "account")),
        Some(d) if d.role != Role::Officer => Err(refuse(
            field,
            "only an officer links or unlinks federated identities",
        )),
        Some(d) if d.state != AccountState::Active => {
            Err(refuse(field, "the officer's account is not active"))
        }
        Some(d) if Some(d.account_id) == account_id => Err(refuse(
            field,
            "an account cannot link an identity to itself (four eyes)",
        )),
        Some(_) => Ok(()),
    }
}

/// Ends the sessions federated logins opened, when their link goes.
pub(crate) const FEDERATION_UNLINK_REASON: &str = "federation_unlink";

/// A federation link.
pub(crate) const FEDERATION_SELECT: &str =
    "SELECT issuer, subject, account_id, linked_by, linked_at FROM federation_link";

/// A WebAuthn credential id: 1 to 1023 bytes (the specification's bound).
pub(crate) fn check_credential_id(id: &[u8]) -> Result<(), StorageError> {
    if (1..=1023).contains(&id.len()) {
        Ok(())
    } else {
        Err(refuse("credential_id", "must be 1 to 1023 bytes"))
    }
}

/// A password hash: an argon2id PHC string, nothing weaker.
pub(crate) fn check_phc(phc: &str) -> Result<(), StorageError> {
    if phc.starts_with("$argon2id$") && phc.len() <= 512 {
        Ok(())
    } else {
        Err(refuse(
            "phc",
            "must be an argon2id PHC string of at most 512 bytes",
        ))
    }
}

/// A sealed TOTP secret: 1 to 1024 opaque bytes.
pub(crate) fn check_sealed_secret(sealed: &[u8]) -> Result<(), StorageError> {
    if (1..=1024).contains(&sealed.len()) {
        Ok(())
    } else {
        Err(refuse("sealed_secret", "must be 1 to 1024 bytes"))
    }
}

/// A TOTP step as both databases keep it (a signed 64-bit integer).
pub(crate) fn step_to_i64(step: u64, field: &'static str) -> Result<i64, StorageError> {
    i64::try_from(step).map_err(|_| refuse(field, "out of range"))
}

/// A stored TOTP step back.
pub(crate) fn step_from_i64(step: Option<i64>) -> Result<Option<u64>, StorageError> {
    step.map(|s| {
        u64::try_from(s).map_err(|_| StorageError::Corrupt("stored last_step is negative".into()))
    })
    .transpose()
}

/// Checks a new session's fields and returns its instants, truncated:
/// (created_at, last_seen_at, absolute_expiry, step_up_at, ended_at).
pub(crate) type SessionInstants = (
    DateTime<Utc>,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

/// Checks a new session (see [`AuthStore::insert_session`]).
pub(crate) fn check_session(s: &StoredSession) -> Result<SessionInstants, StorageError> {
    check_jkt(&s.jkt)?;
    check_method(&s.method)?;
    if s.idle_timeout_secs <= 0 {
        return Err(refuse("idle_timeout_secs", "must be positive"));
    }
    let created_at = crate::instant(s.created_at, "created_at")?;
    let last_seen_at = crate::instant(s.last_seen_at, "last_seen_at")?;
    let absolute_expiry = crate::instant(s.absolute_expiry, "absolute_expiry")?;
    if absolute_expiry <= created_at {
        return Err(refuse("absolute_expiry", "must be after created_at"));
    }
    if last_seen_at < created_at {
        return Err(refuse("last_seen_at", "must not be before created_at"));
    }
    let step_up_at = s
        .step_up_at
        .map(|t| crate::instant(t, "step_up_at"))
        .transpose()?;
    let ended_at = s
        .ended_at
        .map(|t| crate::instant(t, "ended_at"))
        .transpose()?;
    match &s.end_reason {
        None if ended_at.is_some() => return Err(refuse("end_reason", "needed with ended_at")),
        Some(_) if ended_at.is_none() => {
            return Err(refuse("end_reason", "only with ended_at"));
        }
        Some(r) => check_code("end_reason", r)?,
        None => {}
    }
    Ok((
        created_at,
        last_seen_at,
        absolute_expiry,
        step_up_at,
        ended_at,
    ))
}

/// Checks a new access token and returns its instants, truncated.
pub(crate) fn check_access_token(
    t: &AccessTokenRow,
) -> Result<(DateTime<Utc>, DateTime<Utc>), StorageError> {
    check_client_id(&t.client_id)?;
    check_jkt(&t.jkt)?;
    let issued_at = crate::instant(t.issued_at, "issued_at")?;
    let expires_at = crate::instant(t.expires_at, "expires_at")?;
    if expires_at <= issued_at {
        return Err(refuse("expires_at", "must be after issued_at"));
    }
    Ok((issued_at, expires_at))
}

/// Checks a replay key's period and returns (expires_at, now), truncated.
pub(crate) fn check_replay_period(
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), StorageError> {
    let expires_at = crate::instant(expires_at, "expires_at")?;
    let now = crate::instant(now, "now")?;
    if expires_at <= now {
        return Err(refuse("expires_at", "must be after now"));
    }
    Ok((expires_at, now))
}

/// What a decision checks about the account decided on: where it
/// belongs, and its place in the state machine.
pub(crate) struct Subject {
    pub account_id: AccountId,
    pub organisation_id: OrganisationId,
    pub kind: OrganisationKind,
    /// Its stored state.
    pub state: AccountState,
    /// Who asked for it, if recorded.
    pub requested_by: Option<AccountId>,
    /// Who approved it (a four-eyes decision, or an import's checked
    /// approver).
    pub approved_by: Option<AccountId>,
    /// Whether a decision on its request is recorded.
    pub decided: bool,
}

impl Subject {
    /// Its state as the machine sees it (a decided, unapproved `disabled`
    /// account is a rejected request).
    pub fn lifecycle(&self) -> LifecycleState {
        LifecycleState::of(self.state, self.decided, self.approved_by.is_some())
    }

    /// Whether it carries a recorded four-eyes approval: an approver who
    /// is neither the account nor its requester.
    pub fn approved_under_four_eyes(&self) -> bool {
        self.approved_by
            .is_some_and(|a| a != self.account_id && Some(a) != self.requested_by)
    }
}

/// What a decision checks about the decider (or the requester).
pub(crate) struct Decider {
    pub account_id: AccountId,
    pub organisation_id: OrganisationId,
    pub role: Role,
    pub state: AccountState,
}

/// The four-eyes rule of decisions on accounts and resets: an active
/// officer, neither the account nor the requester, never of the
/// requester's organisation (France Travail agencies included), and from
/// outside a partner's organisation (the rule of imports,
/// [`crate::check_account_links`]). `requester` is the one who asked for
/// the account or the reset, `None` when unrecorded.
pub(crate) fn check_decider(
    subject: &Subject,
    requester: Option<&Decider>,
    decider: Option<&Decider>,
) -> Result<(), StorageError> {
    let field = "officer_id";
    let Some(d) = decider else {
        return Err(not_found(field, "account"));
    };
    if d.role != Role::Officer {
        return Err(refuse(field, "only an officer may decide"));
    }
    if d.state != AccountState::Active {
        return Err(refuse(field, "the officer's account is not active"));
    }
    if d.account_id == subject.account_id {
        return Err(refuse(
            field,
            "an account cannot decide on itself (four eyes)",
        ));
    }
    check_outside(field, subject, requester, d)
}

/// The part of the four-eyes rule about where the officer stands: not the
/// requester, not of the requester's organisation, and outside a
/// partner's organisation.
fn check_outside(
    field: &'static str,
    subject: &Subject,
    requester: Option<&Decider>,
    d: &Decider,
) -> Result<(), StorageError> {
    if requester.is_some_and(|r| r.account_id == d.account_id) {
        return Err(refuse(
            field,
            "the requester cannot decide on its own request (four eyes)",
        ));
    }
    if requester.is_some_and(|r| r.organisation_id == d.organisation_id) {
        return Err(refuse(
            field,
            "the decider cannot belong to the requester's organisation (four eyes)",
        ));
    }
    if d.organisation_id == subject.organisation_id
        && subject.kind != OrganisationKind::FranceTravail
    {
        return Err(refuse(
            field,
            "a partner's account is decided from outside its organisation (four eyes)",
        ));
    }
    Ok(())
}

/// Whether the state machine lets `action` happen to the subject: its
/// state, and the recorded approval the action needs
/// ([`AccountAction::needs_approval`]). Refuses naming `state`.
pub(crate) fn check_transition(
    subject: &Subject,
    action: AccountAction,
) -> Result<(), StorageError> {
    let from = subject.lifecycle();
    if let Err(e) = rempart_domain::transition(from, action) {
        return Err(refuse(
            "state",
            format!(
                "an account that is {} cannot be subject to {}",
                e.from, e.action
            ),
        ));
    }
    let approved = subject.approved_under_four_eyes();
    let needed = match action {
        AccountAction::IssueActivation => !approved,
        _ if action.needs_approval() => subject.requested_by.is_some() && !approved,
        _ => false,
    };
    if needed {
        return Err(refuse(
            "state",
            format!("the account was never approved under four eyes: no {action} without it"),
        ));
    }
    Ok(())
}

/// The SQL condition of `action` on an account row whose columns are
/// reached through `row` (a table name or alias): the same rule as
/// [`check_transition`], for the one conditional statement that makes the
/// change, so a change that raced the check does not slip through.
pub(crate) fn transition_sql(row: &str, action: AccountAction) -> String {
    let states: Vec<String> = action
        .from_states()
        .iter()
        .map(|s| format!("'{}'", s.stored().as_str()))
        .collect();
    // Final states share `disabled`; the machine never starts from them,
    // which the domain's tests hold.
    let mut sql = format!("{row}.state IN ({})", states.join(", "));
    let approved = approved_sql(row);
    if action == AccountAction::IssueActivation {
        sql.push_str(&format!(" AND {approved}"));
    } else if action.needs_approval() {
        sql.push_str(&format!(" AND ({row}.requested_by IS NULL OR {approved})"));
    }
    sql
}

/// The action that moves an account to `state` by suspension or
/// reactivation, the only changes [`crate::RegistryStore::set_account_state`]
/// makes; refuses (`state: …`) any other target.
pub(crate) fn state_change(state: AccountState) -> Result<AccountAction, StorageError> {
    match state {
        AccountState::Suspended => Ok(AccountAction::Suspend),
        AccountState::Active => Ok(AccountAction::Reactivate),
        AccountState::Requested => Err(refuse(
            "state",
            "an account is requested once, when it is asked for",
        )),
        AccountState::Disabled => Err(refuse(
            "state",
            "an account is disabled by a rejection or the inactivity job only",
        )),
    }
}

/// Why a state change's conditional statement changed nothing on an
/// account that exists: the machine's refusal on the facts read after it
/// (or, if those now allow it, a concurrent change).
pub(crate) fn refused_change(facts: Subject, action: AccountAction) -> StorageError {
    match check_transition(&facts, action) {
        Err(e) => e,
        Ok(()) => refuse("state", "the account changed meanwhile; try again"),
    }
}

/// The SQL condition of a recorded four-eyes approval
/// ([`Subject::approved_under_four_eyes`]) of the account row `row`.
pub(crate) fn approved_sql(row: &str) -> String {
    format!(
        "({row}.approved_by IS NOT NULL AND {row}.approved_by <> {row}.id
          AND ({row}.requested_by IS NULL OR {row}.approved_by <> {row}.requested_by))"
    )
}

/// The SQL condition of the four-eyes rule ([`check_decider`]) for the
/// one conditional statement of a decision: `subject`, `requester` and
/// `decider` are SQL expressions (columns or typed parameters) naming the
/// account decided on, the one who asked (may be NULL) and the officer.
pub(crate) fn four_eyes_sql(subject: &str, requester: &str, decider: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM account fe_d
            JOIN account fe_s ON fe_s.id = {subject}
            JOIN organisation fe_o ON fe_o.id = fe_s.organisation_id
          WHERE fe_d.id = {decider} AND fe_d.role = 'officer' AND fe_d.state = 'active'
            AND fe_d.id <> fe_s.id
            AND ({requester} IS NULL OR (fe_d.id <> {requester}
                 AND fe_d.organisation_id <>
                     (SELECT fe_r.organisation_id FROM account fe_r WHERE fe_r.id = {requester})))
            AND (fe_o.kind = 'france_travail' OR fe_d.organisation_id <> fe_s.organisation_id))"
    )
}

/// A stored 32-byte digest.
pub(crate) fn digest32(v: Vec<u8>, what: &str) -> Result<[u8; 32], StorageError> {
    v.try_into()
        .map_err(|_| StorageError::Corrupt(format!("stored {what} is not 32 bytes")))
}

/// Why an account cannot receive an activation code, if it cannot (the
/// rule of [`AuthStore::issue_activation`], on facts both backends read).
pub(crate) fn check_activation_target(
    state: Option<AccountState>,
    four_eyes: bool,
    has_password: bool,
    has_totp: bool,
) -> Result<(), StorageError> {
    let field = "account_id";
    match state {
        None => Err(not_found(field, "account")),
        Some(s) if s != AccountState::Active => Err(refuse(
            field,
            "the account is not active (an account is approved before it is activated)",
        )),
        Some(_) if !four_eyes => Err(refuse(
            field,
            "the account was never approved under four eyes: no activation code without it",
        )),
        Some(_) if has_password && has_totp => Err(refuse(
            field,
            "the account already has its password and TOTP: nothing to activate",
        )),
        Some(_) => Ok(()),
    }
}

/// The issuer of an activation code: an active officer, not the account,
/// and standing where a decider on its request would (the code opens the
/// account: an insider re-issuing it would take over an approved account
/// before its holder activates it).
pub(crate) fn check_activation_issuer(
    subject: &Subject,
    requester: Option<&Decider>,
    issuer: Option<&Decider>,
) -> Result<(), StorageError> {
    let field = "issued_by";
    match issuer {
        None => Err(not_found(field, "account")),
        Some(d) if d.role != Role::Officer => Err(refuse(field, "only an officer issues codes")),
        Some(d) if d.state != AccountState::Active => {
            Err(refuse(field, "the officer's account is not active"))
        }
        Some(d) if d.account_id == subject.account_id => Err(refuse(
            field,
            "an account cannot issue its own activation code (four eyes)",
        )),
        Some(d) => check_outside(field, subject, requester, d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(secs, 0).unwrap()
    }

    fn session() -> StoredSession {
        StoredSession {
            id_digest: [1; 32],
            account_id: AccountId::new(1),
            jkt: "A".repeat(43),
            method: "passkey".into(),
            created_at: at(1_000),
            last_seen_at: at(1_000),
            absolute_expiry: at(1_000 + 36_000),
            idle_timeout_secs: 1_800,
            high_risk: false,
            step_up_at: None,
            ended_at: None,
            end_reason: None,
        }
    }

    #[test]
    fn sessions_live_until_idle_absolute_or_ended() {
        let mut s = session();
        assert!(s.is_live_at(at(1_000)));
        assert!(s.is_live_at(at(2_799)));
        assert!(!s.is_live_at(at(2_800)), "idle for the whole timeout");
        s.last_seen_at = at(36_000);
        assert!(s.is_live_at(at(36_999)));
        assert!(!s.is_live_at(at(37_000)), "absolute expiry");
        s.ended_at = Some(at(36_500));
        assert!(!s.is_live_at(at(36_600)), "ended");
        s.ended_at = None;
        s.idle_timeout_secs = i64::MAX;
        assert!(
            !s.is_live_at(at(36_001)),
            "an unrepresentable timeout fails closed"
        );
        s.idle_timeout_secs = -5;
        assert!(
            !s.is_live_at(at(36_000)),
            "a negative timeout is never live"
        );
    }

    #[test]
    fn session_checks_name_their_field() {
        let field = |s: StoredSession| match check_session(&s) {
            Err(StorageError::Refused { field, .. } | StorageError::NotFound { field, .. }) => {
                field.to_string()
            }
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(check_session(&session()).is_ok());
        assert_eq!(
            field(StoredSession {
                jkt: "x".into(),
                ..session()
            }),
            "jkt"
        );
        assert_eq!(
            field(StoredSession {
                jkt: format!("{}=", "A".repeat(42)),
                ..session()
            }),
            "jkt"
        );
        assert_eq!(
            field(StoredSession {
                method: "password".into(),
                ..session()
            }),
            "method"
        );
        assert_eq!(
            field(StoredSession {
                idle_timeout_secs: 0,
                ..session()
            }),
            "idle_timeout_secs"
        );
        assert_eq!(
            field(StoredSession {
                absolute_expiry: at(1_000),
                ..session()
            }),
            "absolute_expiry"
        );
        assert_eq!(
            field(StoredSession {
                last_seen_at: at(999),
                ..session()
            }),
            "last_seen_at"
        );
        assert_eq!(
            field(StoredSession {
                ended_at: Some(at(1_001)),
                ..session()
            }),
            "end_reason"
        );
        assert_eq!(
            field(StoredSession {
                end_reason: Some("logout".into()),
                ..session()
            }),
            "end_reason"
        );
        assert_eq!(
            field(StoredSession {
                ended_at: Some(at(1_001)),
                end_reason: Some("Logout".into()),
                ..session()
            }),
            "end_reason"
        );
    }

    #[test]
    fn codes_are_lowercase_words() {
        for ok in ["reset", "logout", "webauthn_login", "a", &"a".repeat(32)] {
            assert!(check_code("kind", ok).is_ok(), "{ok}");
        }
        for bad in ["", "Reset", "_x", "1x", "x-y", "x y", "é", &"a".repeat(33)] {
            assert!(
                matches!(
                    check_code("kind", bad),
                    Err(StorageError::Refused { field: "kind", .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn other_field_checks() {
        assert!(check_phc("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA").is_ok());
        assert!(check_phc("$argon2i$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA").is_err());
        assert!(check_phc("$2b$12$abcdefghijklmnopqrstuu").is_err());
        assert!(check_client_id("partner-app.1").is_ok());
        assert!(check_client_id("").is_err());
        assert!(check_client_id("a b").is_err());
        assert!(check_client_id(&"c".repeat(129)).is_err());
        assert!(check_credential_id(&[0; 1023]).is_ok());
        assert!(check_credential_id(&[]).is_err());
        assert!(check_credential_id(&[0; 1024]).is_err());
        assert!(check_sealed_secret(&[]).is_err());
        assert!(step_to_i64(u64::MAX, "step").is_err());
        assert_eq!(step_to_i64(59_000_000, "step").unwrap(), 59_000_000);
        assert!(step_from_i64(Some(-1)).is_err());
        assert!(
            check_replay_period(at(10), at(10)).is_err(),
            "a key expiring now protects nothing"
        );
        for k in ResetKind::ALL {
            assert_eq!(ResetKind::parse(k.as_str()).unwrap(), *k);
        }
        assert!(ResetKind::parse("everything").is_err());
        let debug = format!(
            "{:?}",
            StoredTotp {
                account_id: AccountId::new(1),
                sealed_secret: vec![0x5a; 40],
                last_step: None,
                enrolled_at: at(0),
            }
        );
        assert!(
            debug.contains("<40 bytes>") && !debug.contains("90"),
            "{debug}"
        );
    }

    #[test]
    fn the_four_eyes_rule() {
        let partner = Subject {
            account_id: AccountId::new(10),
            organisation_id: OrganisationId::new(2),
            kind: OrganisationKind::MissionLocale,
            state: AccountState::Requested,
            requested_by: Some(AccountId::new(11)),
            approved_by: None,
            decided: false,
        };
        let officer = |id, org, role, state| Decider {
            account_id: AccountId::new(id),
            organisation_id: OrganisationId::new(org),
            role,
            state,
        };
        let manager = officer(11, 2, Role::Manager, AccountState::Active);
        let reason = |d: Option<&Decider>, requester: Option<&Decider>| match check_decider(
            &partner, requester, d,
        ) {
            Ok(()) => "ok".to_string(),
            Err(e @ (StorageError::Refused { .. } | StorageError::NotFound { .. })) => e
                .refused()
                .map(|(f, r)| format!("{f}: {r}"))
                .unwrap_or_default(),
            Err(e) => panic!("{e}"),
        };
        let ft = officer(1, 1, Role::Officer, AccountState::Active);
        assert_eq!(reason(Some(&ft), Some(&manager)), "ok");
        assert!(reason(None, None).contains("no such account"));
        assert!(
            reason(
                Some(&officer(1, 1, Role::Manager, AccountState::Active)),
                None
            )
            .contains("only an officer")
        );
        assert!(
            reason(
                Some(&officer(1, 1, Role::Officer, AccountState::Suspended)),
                None
            )
            .contains("not active")
        );
        assert!(
            reason(
                Some(&officer(10, 1, Role::Officer, AccountState::Active)),
                None
            )
            .contains("itself")
        );
        assert!(reason(Some(&ft), Some(&ft)).contains("requester"));
        assert!(
            reason(
                Some(&officer(1, 2, Role::Officer, AccountState::Active)),
                None
            )
            .contains("outside")
        );
        // A France Travail account: an officer of the agency may decide on
        // a colleague, unless the agency asked for it (four eyes means two
        // organisations, France Travail agencies included).
        let colleague = Subject {
            kind: OrganisationKind::FranceTravail,
            organisation_id: OrganisationId::new(1),
            requested_by: None,
            ..partner
        };
        assert!(check_decider(&colleague, None, Some(&ft)).is_ok());
        let agency_manager = officer(12, 1, Role::Manager, AccountState::Active);
        assert!(matches!(
            check_decider(&colleague, Some(&agency_manager), Some(&ft)),
            Err(StorageError::Refused { field: "officer_id", reason }) if reason.contains("requester's organisation")
        ));
        assert!(matches!(
            check_activation_issuer(&colleague, Some(&agency_manager), Some(&ft)),
            Err(StorageError::Refused {
                field: "issued_by",
                ..
            })
        ));
        let outside = officer(3, 5, Role::Officer, AccountState::Active);
        assert!(check_decider(&colleague, Some(&agency_manager), Some(&outside)).is_ok());
        assert!(check_activation_issuer(&colleague, Some(&agency_manager), Some(&outside)).is_ok());
        assert!(reason(Some(&ft), Some(&ft)).starts_with("officer_id: "));
    }

    #[test]
    fn transitions_follow_the_machine_and_the_sql_names_its_states() {
        let subject =
            |state, requested_by: Option<i64>, approved_by: Option<i64>, decided| Subject {
                account_id: AccountId::new(10),
                organisation_id: OrganisationId::new(2),
                kind: OrganisationKind::CapEmploi,
                state,
                requested_by: requested_by.map(AccountId::new),
                approved_by: approved_by.map(AccountId::new),
                decided,
            };
        use AccountAction::*;
        use AccountState::*;
        let approved = subject(Active, Some(11), Some(1), true);
        for a in [Suspend, Disable, ApproveReset, IssueActivation] {
            assert!(check_transition(&approved, a).is_ok(), "{a}");
        }
        // Active without an approval (walked around before this rule):
        // no code, no reset, and once suspended no way back.
        let walked = subject(Active, Some(11), None, false);
        for a in [ApproveReset, IssueActivation] {
            assert!(
                matches!(
                    check_transition(&walked, a),
                    Err(StorageError::Refused { field: "state", .. })
                ),
                "{a}"
            );
        }
        let walked = subject(Suspended, Some(11), None, false);
        assert!(check_transition(&walked, Reactivate).is_err());
        // Imported, history unknown: may be reactivated, gets no code.
        let imported = subject(Suspended, None, None, false);
        assert!(check_transition(&imported, Reactivate).is_ok());
        let imported = subject(Active, None, None, false);
        assert!(check_transition(&imported, IssueActivation).is_err());
        // Rejected is final.
        let rejected = subject(Disabled, Some(11), None, true);
        assert_eq!(rejected.lifecycle(), LifecycleState::Rejected);
        for &a in AccountAction::ALL {
            assert!(check_transition(&rejected, a).is_err(), "{a}");
        }
        assert_eq!(
            transition_sql("a", Suspend),
            "a.state IN ('active')",
            "states from the domain's table"
        );
        assert!(
            transition_sql("a", ApproveReset).starts_with("a.state IN ('active', 'suspended') AND")
        );
        assert!(transition_sql("a", IssueActivation).contains("a.approved_by IS NOT NULL"));
        assert!(state_change(Requested).is_err() && state_change(Disabled).is_err());
    }
}
