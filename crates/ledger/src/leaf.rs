//! The audit leaf: what one consultation (or denial, login, mandate change…)
//! leaves in the ledger, and its canonical binary encoding.
//!
//! The encoding is what the Merkle tree hashes, so it is canonical: one leaf
//! has exactly one encoding and every byte string decodes to at most one
//! leaf. Format version 1, all integers fixed-width big-endian:
//!
//! ```text
//! u8   format version (1)
//! i64  time, microseconds since the Unix epoch (UTC)
//! i64  account id
//! i64  organisation id
//! u8   session present (0|1)       [16 bytes session id]
//! u8   person present (0|1)        [i64 person id]
//! u8   action code
//! u16  field groups bitmask; bits 4-5: how the NIR was shown (below)
//! u8   purpose code (0 = none)
//! u8   decision (0 = allow, otherwise the deny reason code)
//! u8   guard verdict code (0 = none)
//! u8   note present (0|1)          [u16 length, UTF-8 bytes]
//! ```
//!
//! The field groups mask has one bit per group (identity 0, contact 1, NIR
//! 2, status 3) and, when the NIR group is set, its view in bits 4-5: 1
//! token, 2 masked, 3 clear, 0 not recorded (leaves written before the
//! view was, which breach scoping counts as clear). The view bits are
//! refused without the NIR bit, so each leaf still has one encoding.
//!
//! A leaf holds identifiers only, never a name, NIR or contact value. The
//! person reference is the registry's opaque person id: the person row
//! outlives crypto-shredding (only its keys and blind indexes go), so the
//! reference keeps meaning "that person" after the data is gone, and nothing
//! in the ledger ever needs rewriting when a person is shredded.
//!
//! The sequence number of a leaf is its index in the Merkle tree; it is not
//! repeated inside the leaf (the inclusion proof binds leaf and index).

use std::fmt;

use chrono::{DateTime, Utc};
use rempart_domain::{FieldGroup, NirView, Purpose};

// The ids a leaf names are the registry's, defined once in the domain;
// re-exported so the ledger's callers need not import both crates.
pub use rempart_domain::{AccountId, OrganisationId, PersonId};

/// Format version written by [`AuditLeaf::encode`].
pub const FORMAT_VERSION: u8 = 1;

/// Longest free-text note, in UTF-8 bytes.
pub const MAX_NOTE_BYTES: usize = 1000;

/// Longest encoded leaf accepted by the decoder. The largest valid version-1
/// leaf is 1,060 bytes; the bound keeps every leaf far below 64 KiB whatever
/// later versions add.
pub const MAX_LEAF_BYTES: usize = 4096;

/// Size of the fixed part of a version-1 leaf with no optional field.
const MIN_LEAF_BYTES: usize = 1 + 8 + 8 + 8 + 1 + 1 + 1 + 2 + 1 + 1 + 1 + 1;

/// Why a leaf cannot be encoded or decoded. Messages name the field, never
/// its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeafError {
    /// The first byte is not a format version this program knows.
    #[error("unknown leaf format version {0} (this program knows version {FORMAT_VERSION})")]
    UnknownVersion(u8),
    /// The bytes end before the leaf does.
    #[error("leaf is truncated: {field} is missing")]
    Truncated {
        /// The field that could not be read.
        field: &'static str,
    },
    /// Bytes follow the last field.
    #[error("leaf has {0} trailing bytes after its last field")]
    TrailingBytes(usize),
    /// The encoding is larger than any valid leaf.
    #[error("leaf is {found} bytes, more than the {max} a leaf may take")]
    TooLarge {
        /// Size found.
        found: usize,
        /// Largest accepted.
        max: usize,
    },
    /// A code byte does not name a known value.
    #[error("unknown {field} code {code}")]
    UnknownCode {
        /// Which field.
        field: &'static str,
        /// The code found.
        code: u16,
    },
    /// A presence flag is neither 0 nor 1.
    #[error("presence flag of {field} is {flag}, expected 0 or 1")]
    BadFlag {
        /// Which field.
        field: &'static str,
        /// The flag found.
        flag: u8,
    },
    /// The note is longer than [`MAX_NOTE_BYTES`].
    #[error("note is {found} bytes, at most {MAX_NOTE_BYTES} are allowed")]
    NoteTooLong {
        /// Size found.
        found: usize,
    },
    /// The note is not UTF-8.
    #[error("note is not valid UTF-8")]
    NoteNotUtf8,
}

/// A point in time, in microseconds since the Unix epoch (UTC). Leaves carry
/// microseconds so that a stored leaf decodes back to exactly what was
/// appended.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The earliest representable time.
    pub const MIN: Timestamp = Timestamp(i64::MIN);
    /// The latest representable time.
    pub const MAX: Timestamp = Timestamp(i64::MAX);

    /// The current time, truncated to the microsecond.
    pub fn now() -> Self {
        Self::from_datetime(Utc::now())
    }

    /// Truncates a date-time to the microsecond.
    pub fn from_datetime(t: DateTime<Utc>) -> Self {
        Timestamp(t.timestamp_micros())
    }

    /// The date-time, or `None` outside chrono's range.
    pub fn to_datetime(self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_micros(self.0)
    }

    /// Microseconds since the Unix epoch.
    pub fn micros(self) -> i64 {
        self.0
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_datetime() {
            Some(t) => write!(f, "{}", t.format("%Y-%m-%dT%H:%M:%S%.6fZ")),
            None => write!(f, "Timestamp({})", self.0),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(t: DateTime<Utc>) -> Self {
        Self::from_datetime(t)
    }
}

/// The identifier of a session (never its bearer secret): 16 opaque bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub [u8; 16]);

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

/// Declares an enum with a stable one-byte code (what the encoding stores,
/// never reused) and a stable text code (what files and the API show).
macro_rules! coded_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident = $code:literal => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every value, in code order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The byte stored in the leaf encoding.
            pub fn code(self) -> u8 {
                match self { $($name::$variant => $code),+ }
            }

            /// The value of a stored byte.
            pub fn from_code(code: u8) -> Result<Self, LeafError> {
                match code {
                    $($code => Ok($name::$variant),)+
                    _ => Err(LeafError::UnknownCode { field: $what, code: code.into() }),
                }
            }

            /// The stable text code.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses a text code.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

coded_enum!(
    /// What the account did.
    Action, "action" {
        /// Opened a person's record.
        ReadPerson = 1 => "read_person",
        /// Looked a person up (exact-match search).
        Search = 2 => "search",
        /// Listed its caseload.
        ListCaseload = 3 => "list_caseload",
        /// Read a person outside any mandate, giving a reason (emergency access).
        BreakGlass = 4 => "break_glass",
        /// Granted a mandate on a person.
        MandateGrant = 5 => "mandate_grant",
        /// Revoked a mandate on a person.
        MandateRevoke = 6 => "mandate_revoke",
        /// Logged in.
        Login = 7 => "login",
        /// Failed to log in.
        LoginFailed = 8 => "login_failed",
        /// Was asked for, or passed, a step-up authentication.
        StepUp = 9 => "step_up",
        /// Logged out.
        Logout = 10 => "logout",
        /// Requested a new account (four-eyes rule, first pair).
        AccountRequest = 11 => "account_request",
        /// Approved a requested account (four-eyes rule, second pair).
        AccountApprove = 12 => "account_approve",
        /// Suspended an account.
        AccountSuspend = 13 => "account_suspend",
        /// Reset a password or a second factor.
        CredentialReset = 14 => "credential_reset",
        /// Exported data (breach scoping, notifications).
        Export = 15 => "export",
        /// Reactivated a suspended account.
        AccountReactivate = 16 => "account_reactivate",
        /// Listed organisations or accounts (administration).
        AdminList = 17 => "admin_list",
        /// Rejected a requested account (four-eyes rule, second pair).
        AccountReject = 18 => "account_reject",
        /// Asked for a password or second-factor reset (four-eyes rule,
        /// first pair); `CredentialReset` is the approval.
        CredentialResetRequest = 19 => "credential_reset_request",
        /// Was locked out after too many failed logins.
        LockedOut = 20 => "locked_out",
        /// Enrolled a factor (passkey, TOTP) or set a password.
        FactorEnrol = 21 => "factor_enrol",
        /// Was issued an API access token (client credentials).
        TokenIssue = 22 => "token_issue",
        /// Was disabled for inactivity.
        AccountDisable = 23 => "account_disable",
        /// Lifted the guard's freeze of an organisation, with a written
        /// reason.
        OrganisationUnfreeze = 24 => "organisation_unfreeze",
        /// Entered an incident in the breach register, or a step of its
        /// timeline (the note says which incident and which step).
        IncidentRecord = 25 => "incident_record",
    }
);

coded_enum!(
    /// Why a request was refused.
    DenyReason, "deny reason" {
        /// No live mandate links the account or its organisation to the person.
        NoMandate = 1 => "no_mandate",
        /// The mandate's purpose does not allow a requested field group.
        FieldGroupNotAllowed = 2 => "field_group_not_allowed",
        /// The account is not active (requested, suspended, disabled).
        AccountInactive = 3 => "account_inactive",
        /// The session or its device proof is invalid or expired.
        SessionInvalid = 4 => "session_invalid",
        /// A stronger authentication is needed first.
        StepUpRequired = 5 => "step_up_required",
        /// The guard throttled the account.
        Throttled = 6 => "throttled",
        /// The guard suspended the account.
        Suspended = 7 => "suspended",
        /// A hard quota was reached.
        QuotaExceeded = 8 => "quota_exceeded",
        /// The policy refused for another reason.
        PolicyDenied = 9 => "policy_denied",
        /// The credentials were wrong.
        BadCredentials = 10 => "bad_credentials",
        /// The person does not exist (or is not visible).
        UnknownPerson = 11 => "unknown_person",
        /// The request itself was malformed.
        InvalidRequest = 12 => "invalid_request",
        /// A four-eyes rule was not met (same organisation, same person).
        FourEyes = 13 => "four_eyes",
        /// An internal error: the request failed closed.
        InternalError = 14 => "internal_error",
        /// Too many failed attempts: the account or the address waits.
        LockedOut = 15 => "locked_out",
        /// The guard froze the account's organisation.
        OrganisationFrozen = 16 => "organisation_frozen",
    }
);

coded_enum!(
    /// What the guard (quotas and behaviour scoring) said.
    GuardVerdict, "guard verdict" {
        /// Nothing unusual.
        Allow = 1 => "allow",
        /// A fresh strong authentication is required.
        StepUp = 2 => "step_up",
        /// The account is slowed down.
        Throttle = 3 => "throttle",
        /// The account is suspended.
        Suspend = 4 => "suspend",
        /// Every account of the organisation is refused until an officer
        /// lifts the freeze.
        FreezeOrganisation = 5 => "freeze_organisation",
    }
);

/// The outcome of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// The request was served.
    Allow,
    /// The request was refused, for this reason.
    Deny(DenyReason),
}

impl Decision {
    fn code(self) -> u8 {
        match self {
            Decision::Allow => 0,
            Decision::Deny(r) => r.code(),
        }
    }

    fn from_code(code: u8) -> Result<Self, LeafError> {
        match code {
            0 => Ok(Decision::Allow),
            c => DenyReason::from_code(c)
                .map(Decision::Deny)
                .map_err(|_| LeafError::UnknownCode {
                    field: "decision",
                    code: c.into(),
                }),
        }
    }

    /// Whether the request was served.
    pub fn is_allow(self) -> bool {
        self == Decision::Allow
    }
}

fn purpose_code(p: Option<Purpose>) -> u8 {
    // Explicit codes: the domain enum's order may change, the ledger's bytes
    // may not. A new purpose fails to compile here until it gets a code.
    match p {
        None => 0,
        Some(Purpose::FollowUp) => 1,
        Some(Purpose::Training) => 2,
        Some(Purpose::DocumentProcessing) => 3,
        Some(Purpose::Compensation) => 4,
    }
}

fn purpose_from_code(code: u8) -> Result<Option<Purpose>, LeafError> {
    Ok(match code {
        0 => None,
        1 => Some(Purpose::FollowUp),
        2 => Some(Purpose::Training),
        3 => Some(Purpose::DocumentProcessing),
        4 => Some(Purpose::Compensation),
        _ => {
            return Err(LeafError::UnknownCode {
                field: "purpose",
                code: code.into(),
            });
        }
    })
}

/// A set of field groups, stored as a 16-bit mask with one fixed bit per
/// group, and how the NIR was shown when its group is in the set.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FieldGroups(u16);

/// Where the NIR view sits in the mask.
const NIR_VIEW_SHIFT: u16 = 4;
const NIR_VIEW_BITS: u16 = 0b11 << NIR_VIEW_SHIFT;

impl FieldGroups {
    /// No field group.
    pub const EMPTY: FieldGroups = FieldGroups(0);

    /// The same groups, recording that the NIR was shown as `view`
    /// (nothing recorded if the NIR group is not in the set or `view` is
    /// [`NirView::None`]).
    pub fn with_nir_view(self, view: NirView) -> Self {
        let code = match view {
            NirView::None => 0,
            NirView::Token => 1,
            NirView::Masked => 2,
            NirView::Clear => 3,
        };
        let groups = self.0 & !NIR_VIEW_BITS;
        if groups & Self::bit(FieldGroup::Nir) == 0 {
            return FieldGroups(groups);
        }
        FieldGroups(groups | (code << NIR_VIEW_SHIFT))
    }

    /// How the NIR was shown: `None` if its group is not in the set or the
    /// leaf predates the recording of the view (see the module's notes).
    pub fn nir_view(self) -> Option<NirView> {
        match (self.0 & NIR_VIEW_BITS) >> NIR_VIEW_SHIFT {
            1 => Some(NirView::Token),
            2 => Some(NirView::Masked),
            3 => Some(NirView::Clear),
            _ => None,
        }
    }

    /// The groups alone, without the NIR view.
    pub fn groups_only(self) -> Self {
        FieldGroups(self.0 & !NIR_VIEW_BITS)
    }

    fn bit(g: FieldGroup) -> u16 {
        // Fixed bits, as for purposes: a new group must be given one here.
        match g {
            FieldGroup::Identity => 1 << 0,
            FieldGroup::Contact => 1 << 1,
            FieldGroup::Nir => 1 << 2,
            FieldGroup::Status => 1 << 3,
        }
    }

    fn known_bits() -> u16 {
        FieldGroup::ALL.iter().fold(0, |m, g| m | Self::bit(*g))
    }

    /// Every known field group.
    pub fn all() -> Self {
        FieldGroups(Self::known_bits())
    }

    /// The set holding these groups.
    pub fn of(groups: &[FieldGroup]) -> Self {
        groups.iter().copied().collect()
    }

    /// Adds a group.
    pub fn insert(&mut self, g: FieldGroup) {
        self.0 |= Self::bit(g);
    }

    /// Whether the set holds `g`.
    pub fn contains(self, g: FieldGroup) -> bool {
        self.0 & Self::bit(g) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 & Self::known_bits() == 0
    }

    /// The groups, in `FieldGroup::ALL` order.
    pub fn iter(self) -> impl Iterator<Item = FieldGroup> {
        FieldGroup::ALL
            .iter()
            .copied()
            .filter(move |g| self.contains(*g))
    }

    /// The stored mask.
    pub fn bits(self) -> u16 {
        self.0
    }

    /// The set of a stored mask; unknown bits, and a NIR view without the
    /// NIR group, are refused.
    pub fn from_bits(bits: u16) -> Result<Self, LeafError> {
        let view_without_nir = bits & NIR_VIEW_BITS != 0 && bits & Self::bit(FieldGroup::Nir) == 0;
        if bits & !(Self::known_bits() | NIR_VIEW_BITS) != 0 || view_without_nir {
            return Err(LeafError::UnknownCode {
                field: "field groups",
                code: bits,
            });
        }
        Ok(FieldGroups(bits))
    }
}

impl FromIterator<FieldGroup> for FieldGroups {
    fn from_iter<I: IntoIterator<Item = FieldGroup>>(iter: I) -> Self {
        let mut s = FieldGroups::EMPTY;
        for g in iter {
            s.insert(g);
        }
        s
    }
}

impl fmt::Debug for FieldGroups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(|g| match (g, self.nir_view()) {
                (FieldGroup::Nir, Some(v)) => format!("nir ({v})"),
                _ => g.as_str().to_string(),
            }))
            .finish()
    }
}

/// One entry of the audit ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditLeaf {
    /// When the request was decided.
    pub time: Timestamp,
    /// The acting account.
    pub account: AccountId,
    /// The acting account's organisation.
    pub organisation: OrganisationId,
    /// The session the request came through, if any (a failed login has none).
    pub session: Option<SessionId>,
    /// The person concerned, if any (a search with no match, a login…).
    pub person: Option<PersonId>,
    /// What was done.
    pub action: Action,
    /// The field groups shown (or asked for, when denied).
    pub field_groups: FieldGroups,
    /// The purpose invoked, if any.
    pub purpose: Option<Purpose>,
    /// Served or refused, and why.
    pub decision: Decision,
    /// The guard's verdict, if the guard ran.
    pub guard: Option<GuardVerdict>,
    /// A short free-text note (a break-glass reason), at most
    /// [`MAX_NOTE_BYTES`] bytes. The caller must keep personal data out of it.
    pub note: Option<String>,
}

impl AuditLeaf {
    /// Whether this leaf records person data leaving the vault: allowed, about
    /// a person, with at least one field group shown. Breach scoping counts
    /// these.
    pub fn reveals_person_data(&self) -> bool {
        self.decision.is_allow() && self.person.is_some() && !self.field_groups.is_empty()
    }

    /// The canonical encoding (format version 1).
    pub fn encode(&self) -> Result<Vec<u8>, LeafError> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Size of the encoding in bytes.
    pub fn encoded_len(&self) -> usize {
        MIN_LEAF_BYTES
            + self.session.map_or(0, |_| 16)
            + self.person.map_or(0, |_| 8)
            + self.note.as_ref().map_or(0, |n| 2 + n.len())
    }

    /// Appends the canonical encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), LeafError> {
        if let Some(note) = &self.note
            && note.len() > MAX_NOTE_BYTES
        {
            return Err(LeafError::NoteTooLong { found: note.len() });
        }
        let start = out.len();
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&self.time.0.to_be_bytes());
        out.extend_from_slice(&self.account.get().to_be_bytes());
        out.extend_from_slice(&self.organisation.get().to_be_bytes());
        match self.session {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                out.extend_from_slice(&s.0);
            }
        }
        match self.person {
            None => out.push(0),
            Some(p) => {
                out.push(1);
                out.extend_from_slice(&p.get().to_be_bytes());
            }
        }
        out.push(self.action.code());
        out.extend_from_slice(&self.field_groups.0.to_be_bytes());
        out.push(purpose_code(self.purpose));
        out.push(self.decision.code());
        out.push(self.guard.map_or(0, GuardVerdict::code));
        match &self.note {
            None => out.push(0),
            Some(note) => {
                out.push(1);
                // Checked above: at most MAX_NOTE_BYTES, which fits a u16.
                let len = u16::try_from(note.len())
                    .map_err(|_| LeafError::NoteTooLong { found: note.len() })?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(note.as_bytes());
            }
        }
        let written = out.len() - start;
        if written > MAX_LEAF_BYTES {
            // Unreachable with version 1's bounds; kept so that a future field
            // cannot silently produce an oversize leaf.
            out.truncate(start);
            return Err(LeafError::TooLarge {
                found: written,
                max: MAX_LEAF_BYTES,
            });
        }
        Ok(())
    }

    /// The fields the query index keys on (time, account, organisation,
    /// person, whether person data was revealed), read from an encoding at
    /// their fixed places without decoding the rest: a scan of thousands of
    /// leaves for one subject spends nothing on fields it does not need.
    /// `None` if the bytes are too short or of another version; bytes that
    /// would not [`decode`](Self::decode) may still give keys (the verifier
    /// reports them).
    pub(crate) fn query_keys(bytes: &[u8]) -> Option<(i64, i64, i64, Option<i64>, bool)> {
        let i64_at = |at: usize| {
            bytes
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(i64::from_be_bytes)
        };
        if *bytes.first()? != FORMAT_VERSION {
            return None;
        }
        let (time, account, organisation) = (i64_at(1)?, i64_at(9)?, i64_at(17)?);
        let mut at = 25 + if *bytes.get(25)? == 1 { 17 } else { 1 };
        let person = if *bytes.get(at)? == 1 {
            at += 9;
            Some(i64_at(at - 8)?)
        } else {
            at += 1;
            None
        };
        // Action (1), field groups (2), purpose (1), then the decision.
        let groups = u16::from_be_bytes(bytes.get(at + 1..at + 3)?.try_into().ok()?);
        let allowed = *bytes.get(at + 4)? == Decision::Allow.code();
        Some((
            time,
            account,
            organisation,
            person,
            allowed && person.is_some() && groups != 0,
        ))
    }

    /// Decodes a canonical encoding, refusing anything else.
    pub fn decode(bytes: &[u8]) -> Result<Self, LeafError> {
        if bytes.len() > MAX_LEAF_BYTES {
            return Err(LeafError::TooLarge {
                found: bytes.len(),
                max: MAX_LEAF_BYTES,
            });
        }
        let mut r = Reader(bytes);
        let version = r.u8("format version")?;
        if version != FORMAT_VERSION {
            return Err(LeafError::UnknownVersion(version));
        }
        let time = Timestamp(r.i64("time")?);
        let account = AccountId::new(r.i64("account")?);
        let organisation = OrganisationId::new(r.i64("organisation")?);
        let session = if r.flag("session")? {
            Some(SessionId(r.array("session")?))
        } else {
            None
        };
        let person = if r.flag("person")? {
            Some(PersonId::new(r.i64("person")?))
        } else {
            None
        };
        let action = Action::from_code(r.u8("action")?)?;
        let field_groups = FieldGroups::from_bits(u16::from_be_bytes(r.array("field groups")?))?;
        let purpose = purpose_from_code(r.u8("purpose")?)?;
        let decision = Decision::from_code(r.u8("decision")?)?;
        let guard = match r.u8("guard verdict")? {
            0 => None,
            c => Some(GuardVerdict::from_code(c)?),
        };
        let note = if r.flag("note")? {
            let len = usize::from(u16::from_be_bytes(r.array("note length")?));
            if len > MAX_NOTE_BYTES {
                return Err(LeafError::NoteTooLong { found: len });
            }
            let bytes = r.take(len, "note")?;
            Some(
                std::str::from_utf8(bytes)
                    .map_err(|_| LeafError::NoteNotUtf8)?
                    .to_string(),
            )
        } else {
            None
        };
        if !r.0.is_empty() {
            return Err(LeafError::TrailingBytes(r.0.len()));
        }
        Ok(AuditLeaf {
            time,
            account,
            organisation,
            session,
            person,
            action,
            field_groups,
            purpose,
            decision,
            guard,
            note,
        })
    }
}

/// A cursor over the bytes still to decode.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], LeafError> {
        if self.0.len() < n {
            return Err(LeafError::Truncated { field });
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], LeafError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, LeafError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, LeafError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    fn flag(&mut self, field: &'static str) -> Result<bool, LeafError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            flag => Err(LeafError::BadFlag { field, flag }),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample() -> AuditLeaf {
        AuditLeaf {
            time: Timestamp(1_780_000_000_123_456),
            account: AccountId::new(42),
            organisation: OrganisationId::new(7),
            session: Some(SessionId([0xab; 16])),
            person: Some(PersonId::new(123_456_789)),
            action: Action::ReadPerson,
            field_groups: FieldGroups::of(&[FieldGroup::Identity, FieldGroup::Contact]),
            purpose: Some(Purpose::FollowUp),
            decision: Decision::Allow,
            guard: Some(GuardVerdict::Allow),
            note: None,
        }
    }

    fn arb_leaf() -> impl Strategy<Value = AuditLeaf> {
        (
            (any::<i64>(), any::<i64>(), any::<i64>()),
            proptest::option::of(any::<[u8; 16]>()),
            proptest::option::of(any::<i64>()),
            proptest::sample::select(Action::ALL),
            (0u16..16, proptest::sample::select(NirView::ALL)),
            proptest::option::of(proptest::sample::select(Purpose::ALL)),
            proptest::option::of(proptest::sample::select(DenyReason::ALL)),
            proptest::option::of(proptest::sample::select(GuardVerdict::ALL)),
            proptest::option::of("\\PC{0,300}"),
        )
            .prop_map(
                |((t, a, o), s, p, action, (fg, nir), purpose, deny, guard, note)| AuditLeaf {
                    time: Timestamp(t),
                    account: AccountId::new(a),
                    organisation: OrganisationId::new(o),
                    session: s.map(SessionId),
                    person: p.map(PersonId::new),
                    action,
                    field_groups: FieldGroups(fg).with_nir_view(nir),
                    purpose,
                    decision: deny.map_or(Decision::Allow, Decision::Deny),
                    guard,
                    note,
                },
            )
    }

    proptest! {
        #[test]
        fn roundtrip(leaf in arb_leaf()) {
            let bytes = leaf.encode().unwrap();
            prop_assert_eq!(bytes.len(), leaf.encoded_len());
            prop_assert!(bytes.len() <= MAX_LEAF_BYTES);
            prop_assert_eq!(AuditLeaf::decode(&bytes).unwrap(), leaf);
        }

        #[test]
        fn canonical_any_decodable_bytes_reencode_identically(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Ok(leaf) = AuditLeaf::decode(&bytes) {
                prop_assert_eq!(leaf.encode().unwrap(), bytes);
            }
        }

        #[test]
        fn every_strict_prefix_is_refused(leaf in arb_leaf()) {
            let bytes = leaf.encode().unwrap();
            for n in 0..bytes.len() {
                prop_assert!(AuditLeaf::decode(&bytes[..n]).is_err());
            }
        }
    }

    #[test]
    fn layout_is_fixed_big_endian() {
        let mut leaf = sample();
        leaf.session = None;
        leaf.note = Some("é".into());
        let b = leaf.encode().unwrap();
        assert_eq!(b[0], 1);
        assert_eq!(&b[1..9], &1_780_000_000_123_456i64.to_be_bytes());
        assert_eq!(&b[9..17], &42i64.to_be_bytes());
        assert_eq!(&b[17..25], &7i64.to_be_bytes());
        assert_eq!(b[25], 0, "no session");
        assert_eq!(b[26], 1, "person present");
        assert_eq!(&b[27..35], &123_456_789i64.to_be_bytes());
        assert_eq!(b[35], Action::ReadPerson.code());
        assert_eq!(&b[36..38], &[0, 0b11]);
        assert_eq!(b[38], 1, "follow_up");
        assert_eq!(b[39], 0, "allow");
        assert_eq!(b[40], 1, "guard allow");
        assert_eq!(b[41], 1, "note present");
        assert_eq!(&b[42..44], &[0, 2]);
        assert_eq!(&b[44..], "é".as_bytes());
    }

    #[test]
    fn decoding_refuses_what_is_not_canonical() {
        let good = sample().encode().unwrap();
        let mut v = good.clone();
        v[0] = 2;
        assert_eq!(AuditLeaf::decode(&v), Err(LeafError::UnknownVersion(2)));
        let mut v = good.clone();
        v.push(0);
        assert_eq!(AuditLeaf::decode(&v), Err(LeafError::TrailingBytes(1)));
        // Action code 0 and 200 are unknown.
        let action_at = 1 + 24 + 17 + 9;
        for code in [0u8, 200] {
            let mut v = good.clone();
            v[action_at] = code;
            assert!(matches!(
                AuditLeaf::decode(&v),
                Err(LeafError::UnknownCode {
                    field: "action",
                    ..
                })
            ));
        }
        // Unknown field-group bit.
        let mut v = good.clone();
        v[action_at + 1] = 0x80;
        assert!(matches!(
            AuditLeaf::decode(&v),
            Err(LeafError::UnknownCode {
                field: "field groups",
                ..
            })
        ));
        // A presence flag of 2.
        let mut v = good.clone();
        v[25] = 2;
        assert!(matches!(
            AuditLeaf::decode(&v),
            Err(LeafError::BadFlag {
                field: "session",
                flag: 2
            })
        ));
        // Unknown deny reason, unknown guard verdict, unknown purpose.
        for (offset, field) in [(4, "decision"), (5, "guard verdict"), (3, "purpose")] {
            let mut v = good.clone();
            v[action_at + offset] = 99;
            assert!(
                matches!(AuditLeaf::decode(&v), Err(LeafError::UnknownCode { field: f, .. }) if f == field),
                "{field}"
            );
        }
        assert!(matches!(
            AuditLeaf::decode(&vec![1; MAX_LEAF_BYTES + 1]),
            Err(LeafError::TooLarge { .. })
        ));
    }

    #[test]
    fn the_nir_view_rides_in_the_mask_and_only_with_the_nir() {
        let nir = FieldGroups::of(&[FieldGroup::Identity, FieldGroup::Nir]);
        for view in [NirView::Token, NirView::Masked, NirView::Clear] {
            let mut leaf = sample();
            leaf.field_groups = nir.with_nir_view(view);
            let back = AuditLeaf::decode(&leaf.encode().unwrap()).unwrap();
            assert_eq!(back.field_groups.nir_view(), Some(view));
            assert_eq!(back.field_groups.groups_only(), nir);
            assert!(back.field_groups.contains(FieldGroup::Nir));
            assert_eq!(back.field_groups.iter().count(), 2);
        }
        // Not recorded (older leaves), or no NIR group: no view.
        assert_eq!(nir.nir_view(), None);
        let identity = FieldGroups::of(&[FieldGroup::Identity]);
        assert_eq!(identity.with_nir_view(NirView::Clear), identity);
        assert!(FieldGroups::EMPTY.with_nir_view(NirView::Clear).is_empty());
        // View bits without the NIR group are not canonical.
        let mut b = sample().encode().unwrap();
        let mask_at = 1 + 24 + 17 + 9 + 1;
        b[mask_at + 1] |= 3 << 4;
        assert!(matches!(
            AuditLeaf::decode(&b),
            Err(LeafError::UnknownCode {
                field: "field groups",
                ..
            })
        ));
    }

    #[test]
    fn notes_are_bounded_and_utf8() {
        let mut leaf = sample();
        leaf.action = Action::BreakGlass;
        leaf.note = Some("x".repeat(MAX_NOTE_BYTES));
        let b = leaf.encode().unwrap();
        assert!(b.len() < 1100);
        assert_eq!(AuditLeaf::decode(&b).unwrap(), leaf);
        leaf.note = Some("x".repeat(MAX_NOTE_BYTES + 1));
        assert_eq!(
            leaf.encode(),
            Err(LeafError::NoteTooLong {
                found: MAX_NOTE_BYTES + 1
            })
        );
        // A note length over the bound is refused by the decoder too.
        let mut leaf = sample();
        leaf.note = Some("ab".into());
        let mut b = leaf.encode().unwrap();
        let len_at = b.len() - 4;
        b[len_at..len_at + 2].copy_from_slice(&1001u16.to_be_bytes());
        assert_eq!(
            AuditLeaf::decode(&b),
            Err(LeafError::NoteTooLong { found: 1001 })
        );
        // Invalid UTF-8.
        let mut b = leaf.encode().unwrap();
        let n = b.len();
        b[n - 1] = 0xff;
        assert_eq!(AuditLeaf::decode(&b), Err(LeafError::NoteNotUtf8));
    }

    #[test]
    fn codes_are_unique_and_parse_back() {
        fn check<T: Copy + PartialEq + std::fmt::Debug>(
            all: &[T],
            code: impl Fn(T) -> u8,
            text: impl Fn(T) -> &'static str,
            parse: impl Fn(&str) -> Option<T>,
        ) {
            let mut codes: Vec<u8> = all.iter().map(|v| code(*v)).collect();
            codes.sort_unstable();
            codes.dedup();
            assert_eq!(codes.len(), all.len());
            assert!(!codes.contains(&0), "0 means none");
            for v in all {
                assert_eq!(parse(text(*v)), Some(*v));
            }
        }
        check(Action::ALL, Action::code, Action::as_str, Action::parse);
        check(
            DenyReason::ALL,
            DenyReason::code,
            DenyReason::as_str,
            DenyReason::parse,
        );
        check(
            GuardVerdict::ALL,
            GuardVerdict::code,
            GuardVerdict::as_str,
            GuardVerdict::parse,
        );
        for p in Purpose::ALL {
            assert_eq!(purpose_from_code(purpose_code(Some(*p))), Ok(Some(*p)));
        }
        assert_eq!(FieldGroups::all().iter().count(), FieldGroup::ALL.len());
    }

    #[test]
    fn query_keys_agree_with_decoding() {
        let mut g = crate::bench::Synthetic::new(3, 0);
        for _ in 0..2_000 {
            let mut leaf = g.leaf();
            if leaf.action == Action::Login {
                leaf.session = None;
                leaf.note = Some("a note".into());
            }
            let bytes = leaf.encode().unwrap();
            assert_eq!(
                AuditLeaf::query_keys(&bytes),
                Some((
                    leaf.time.0,
                    leaf.account.get(),
                    leaf.organisation.get(),
                    leaf.person.map(|p| p.get()),
                    leaf.reveals_person_data()
                ))
            );
            for cut in [0, 1, 20, 26, 40] {
                let _ = AuditLeaf::query_keys(&bytes[..cut.min(bytes.len())]);
            }
        }
    }

    #[test]
    fn reveals_person_data_only_when_allowed_with_fields() {
        let leaf = sample();
        assert!(leaf.reveals_person_data());
        let mut denied = leaf.clone();
        denied.decision = Decision::Deny(DenyReason::NoMandate);
        assert!(!denied.reveals_person_data());
        let mut nothing = leaf.clone();
        nothing.field_groups = FieldGroups::EMPTY;
        assert!(!nothing.reveals_person_data());
        let mut nobody = leaf;
        nobody.person = None;
        assert!(!nobody.reveals_person_data());
    }

    #[test]
    fn debug_output() {
        let s = format!("{:?}", sample());
        assert!(s.contains("2026-"), "{s}");
        assert!(s.contains("\"identity\""), "{s}");
    }
}
