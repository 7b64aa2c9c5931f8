//! Rempart's domain model: what a job seeker's record is made of, who may
//! see it, and why. Pure values and rules; no I/O, no clock, no randomness.
//!
//! Every value that comes from outside is a newtype built by a `parse`
//! function that validates it and says which rule failed. `Debug` of
//! personal values is redacted, so a stray `{:?}` cannot leak them.

mod access;
mod ids;
pub mod incident;
mod lifecycle;
mod nir;
mod normalise;
mod person;
pub mod records;

pub use access::{
    Account, AccountState, FieldGroup, Mandate, NirView, Organisation, OrganisationKind, Purpose,
    Reference, Role,
};
pub use ids::{AccountId, MandateId, OrganisationId, PersonId};
pub use lifecycle::{AccountAction, LifecycleState, TransitionError, WhoMay, transition};
pub use nir::{Nir, NirError, NirSex};
pub use normalise::normalise_name;
pub use person::{
    Contact, Email, FtId, Identity, Name, Person, Phone, PostalAddress, PostalCode, Registration,
    Statut, Text, ValueError, date_serde, iso_date, parse_date,
};
