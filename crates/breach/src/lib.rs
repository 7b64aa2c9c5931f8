//! After a breach: what was revealed, to whom, proven from the audit
//! ledger, and what the GDPR then requires.
//!
//! [`scope`] reads the ledger's leaves of the compromised subjects
//! (accounts, organisations) in a window and returns, for every person
//! whose data left the vault for them, what was shown: the field groups,
//! how the NIR was shown (clear, masked, token), when and by which
//! organisations; and the attempts that were refused. It reads only the
//! ledger: nothing here decrypts a person or touches the registry.
//!
//! [`report`] turns an incident and its scope into the draft notification
//! to the CNIL (Art. 33); [`notice`] renders each person's notice
//! (Art. 34) and its PDF letter. Both are pure: the caller brings the
//! register's incident, the registry's organisation names and, for a
//! letter, the recipient's address.

pub mod notice;
pub mod report;
mod scope;

pub use notice::{NoticeContext, NoticeFacts, NoticeText};
pub use report::{Art33Draft, Controller, DraftError, DraftFacts, OrganisationLabel, Phase};
pub use scope::{Exposure, NirSeen, Scope, ScopeError, ScopeSummary, scope, scope_at};
