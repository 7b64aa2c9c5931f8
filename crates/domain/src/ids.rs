//! The registry's numeric ids of persons, accounts, organisations and
//! mandates, one type each, so that one kind of id cannot be passed where
//! another is expected.
//!
//! Each is a newtype over the `i64` the databases store. Any value is
//! accepted (id 0 names "no account" in the ledger); the type says only
//! which table the number points into. They serialize as the plain number
//! (`serde(transparent)`), so JSON bodies and exports are unchanged.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(i64);

        impl $name {
            /// Id 0, which no row has: what a ledger leaf names when the
            /// request never reached a known row (an unknown login, a
            /// malformed credential).
            pub const UNKNOWN: Self = Self(0);

            /// The id the registry stores as `value`.
            pub const fn new(value: i64) -> Self {
                Self(value)
            }

            /// The stored value, for binding in a query or encoding.
            pub const fn get(self) -> i64 {
                self.0
            }
        }

        /// The bare number, as in URLs and logs.
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

id_type!(
    /// The registry's opaque id of a person. It stays meaningful after the
    /// person is crypto-shredded: the row and its id survive, only the keys
    /// go, so the ledger can keep naming "that person".
    PersonId
);

id_type!(
    /// The registry's id of an account.
    AccountId
);

id_type!(
    /// The registry's id of an organisation.
    OrganisationId
);

id_type!(
    /// The registry's id of a mandate.
    MandateId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_serialize_as_plain_numbers() {
        let id = AccountId::new(42);
        assert_eq!(serde_json::to_string(&id).unwrap(), "42");
        assert_eq!(serde_json::from_str::<AccountId>("42").unwrap(), id);
        assert_eq!(PersonId::new(-7).to_string(), "-7");
        assert_eq!(MandateId::new(3).get(), 3);
    }
}
