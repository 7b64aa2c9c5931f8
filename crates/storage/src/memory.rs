//! What a store keeps in memory so that a consultation does not read it
//! again, each copy exact rather than fresh enough (migration 7 holds the
//! database side of both):
//!
//! - [`Names`]: organisation codes and account logins by id, so that a
//!   person's mandates are read without joining the organisation and
//!   account tables. A code or a login never changes and neither row is
//!   ever deleted (the database refuses both, whoever writes), and a name
//!   is copied only from a committed row: an id once seen keeps its name.
//! - [`Credentials`]: checked API credentials with their accounts, each
//!   with the `access_version` read before it. Every change to a
//!   credential, an account's organisation, role, state or creation instant,
//!   or an organisation's kind or département moves the version in the
//!   same transaction, so a copy whose version is the one read for this
//!   request is what the rows hold for this request: a revocation or a
//!   suspension, by this process or another, counts from the next request.

use std::collections::HashMap;
use std::sync::RwLock;

use rempart_domain::Reference;

use crate::{AccountRecord, StoredCredential};

/// Entries kept per kind; past that, names are read from the store each
/// time (a registry this large has other problems first).
const CAPACITY: usize = 1 << 20;

/// What a name belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Named {
    Organisation,
    Account,
}

/// The names seen so far.
#[derive(Debug, Default)]
pub(crate) struct Names {
    organisations: RwLock<HashMap<i64, Reference>>,
    accounts: RwLock<HashMap<i64, Reference>>,
}

impl Names {
    fn map(&self, kind: Named) -> &RwLock<HashMap<i64, Reference>> {
        match kind {
            Named::Organisation => &self.organisations,
            Named::Account => &self.accounts,
        }
    }

    /// The name of `id`, if seen.
    pub(crate) fn get(&self, kind: Named, id: i64) -> Option<Reference> {
        // A poisoned lock still holds only committed names.
        let map = self.map(kind).read().unwrap_or_else(|p| p.into_inner());
        map.get(&id).cloned()
    }

    /// Remembers the name of `id`, read from a committed row.
    pub(crate) fn put(&self, kind: Named, id: i64, name: &Reference) {
        let mut map = self.map(kind).write().unwrap_or_else(|p| p.into_inner());
        if map.len() < CAPACITY {
            map.insert(id, name.clone());
        }
    }
}

/// A credential with its account, as [`crate::RegistryStore::credential`]
/// returns it.
pub(crate) type CredentialRow = (StoredCredential, AccountRecord);

/// Checked credentials, by id, each with the `access_version` read before
/// its row. Only credentials that exist are kept (a stream of made-up ids
/// costs a read each, and no memory).
#[derive(Debug, Default)]
pub(crate) struct Credentials {
    rows: RwLock<HashMap<i64, (i64, CredentialRow)>>,
}

impl Credentials {
    /// The copy of credential `id`, if it was read under `version`.
    pub(crate) fn get(&self, id: i64, version: i64) -> Option<CredentialRow> {
        let rows = self.rows.read().unwrap_or_else(|p| p.into_inner());
        match rows.get(&id) {
            Some((v, row)) if *v == version => Some(row.clone()),
            _ => None,
        }
    }

    /// Keeps `row`, read after `version` was. A full map starts again empty
    /// rather than choosing what to evict: credentials are few.
    pub(crate) fn put(&self, version: i64, row: &CredentialRow) {
        let mut rows = self.rows.write().unwrap_or_else(|p| p.into_inner());
        if rows.len() >= CAPACITY {
            rows.clear();
        }
        rows.insert(row.0.id, (version, row.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kept_per_kind() {
        let names = Names::default();
        let code = Reference::parse("CE-035").unwrap();
        assert_eq!(names.get(Named::Organisation, 7), None);
        names.put(Named::Organisation, 7, &code);
        assert_eq!(names.get(Named::Organisation, 7), Some(code));
        assert_eq!(names.get(Named::Account, 7), None);
    }
}
