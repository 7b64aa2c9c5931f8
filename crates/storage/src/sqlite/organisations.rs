//! Organisations: imports and listing.

use rempart_domain::{Organisation, OrganisationId, OrganisationKind, Reference};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::SqliteStore;
use crate::{StorageError, UpsertCount, parse_code};

pub(super) async fn upsert_organisations(
    store: &SqliteStore,
    orgs: Vec<Organisation>,
) -> Result<UpsertCount, StorageError> {
    store
        .write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut count = UpsertCount::default();
            {
                let mut get = tx.prepare_cached(
                    "SELECT kind, name, departement FROM organisation WHERE code = ?1",
                )?;
                let mut ins = tx.prepare_cached(
                "INSERT INTO organisation (code, kind, name, departement) VALUES (?1, ?2, ?3, ?4)",
            )?;
                let mut upd = tx.prepare_cached(
                "UPDATE organisation SET kind = ?2, name = ?3, departement = ?4 WHERE code = ?1",
            )?;
                for o in &orgs {
                    let current: Option<(String, String, Option<String>)> = get
                        .query_row([o.code.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .optional()?;
                    let new = (
                        o.kind.as_str().to_string(),
                        o.name.clone(),
                        o.departement.clone(),
                    );
                    let p = params![o.code.as_str(), new.0, new.1, new.2];
                    match current {
                        None => {
                            ins.execute(p)?;
                            count.inserted += 1;
                        }
                        Some(cur) if cur == new => count.unchanged += 1,
                        Some(_) => {
                            upd.execute(p)?;
                            count.updated += 1;
                        }
                    }
                }
            }
            tx.commit()?;
            Ok(count)
        })
        .await
}

pub(super) async fn organisations(
    store: &SqliteStore,
) -> Result<Vec<(OrganisationId, Organisation)>, StorageError> {
    store
        .read(move |c| {
            c.prepare_cached(
                "SELECT id, code, kind, name, departement FROM organisation ORDER BY code",
            )?
            .query_and_then([], |r| {
                Ok((
                    OrganisationId::new(r.get(0)?),
                    Organisation {
                        code: parse_code(r.get(1)?, Reference::parse)?,
                        kind: parse_code(r.get(2)?, OrganisationKind::parse)?,
                        name: r.get(3)?,
                        departement: r.get(4)?,
                    },
                ))
            })?
            .collect()
        })
        .await
}
