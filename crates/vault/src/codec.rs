//! Plaintext encoding of field groups before sealing: a format byte, then
//! postcard (compact, deterministic for a given value, so the fingerprint
//! of an unchanged record does not change).

use rempart_domain::{Contact, FieldGroup, Identity, Nir, Person, PersonId, Registration};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{PersonView, VaultError};

const FORMAT: u8 = 1;

/// Stable one-byte code of a group, bound into each seal's associated data.
pub fn group_code(g: FieldGroup) -> u8 {
    match g {
        FieldGroup::Identity => 1,
        FieldGroup::Contact => 2,
        FieldGroup::Nir => 3,
        FieldGroup::Status => 4,
    }
}

fn encode<T: Serialize>(group: FieldGroup, v: &T) -> Result<Vec<u8>, VaultError> {
    let mut out = vec![FORMAT];
    postcard::to_io(v, &mut out).map_err(|e| VaultError::Decode {
        person: PersonId::new(0),
        group,
        reason: e.to_string(),
    })?;
    Ok(out)
}

fn decode<T: DeserializeOwned>(
    person: PersonId,
    group: FieldGroup,
    b: &[u8],
) -> Result<T, VaultError> {
    let err = |reason: String| VaultError::Decode {
        person,
        group,
        reason,
    };
    match b.split_first() {
        Some((&FORMAT, rest)) => postcard::from_bytes(rest).map_err(|e| err(e.to_string())),
        Some((other, _)) => Err(err(format!("unknown format {other}"))),
        None => Err(err("empty".into())),
    }
}

/// The four groups' plaintexts, in [`FieldGroup::ALL`] order.
pub fn encode_groups(p: &Person) -> Result<[Vec<u8>; 4], VaultError> {
    Ok([
        encode(FieldGroup::Identity, &p.identity)?,
        encode(FieldGroup::Contact, &p.contact)?,
        encode(FieldGroup::Nir, &p.nir)?,
        encode(FieldGroup::Status, &p.status)?,
    ])
}

/// Decodes one opened group into the view.
pub fn decode_into(view: &mut PersonView, group: FieldGroup, b: &[u8]) -> Result<(), VaultError> {
    let id = view.id;
    match group {
        FieldGroup::Identity => view.identity = Some(decode::<Identity>(id, group, b)?),
        FieldGroup::Contact => view.contact = Some(decode::<Contact>(id, group, b)?),
        FieldGroup::Nir => view.nir = Some(decode::<Nir>(id, group, b)?),
        FieldGroup::Status => view.status = Some(decode::<Registration>(id, group, b)?),
    }
    Ok(())
}
