//! After a breach: what was revealed, to whom, proven from the audit
//! ledger, and what the GDPR then requires.
//!
//! [`scope`] reads the ledger's leaves of the compromised subjects
//! (accounts, organisations) in a window and returns, for every person
//! whose data left the vault for them, what was shown: the field groups,
//! how the NIR was shown (clear, masked, token), when and by which
//! organisations; and the attempts that were refused. It reads only the
//! ledger: nothing here decrypts a person or touches the registry.

mod scope;

pub use scope::{Exposure, NirSeen, Scope, ScopeError, scope, scope_at};
