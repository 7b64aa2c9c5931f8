//! Organisations: imports and listing.

use rempart_domain::{Organisation, OrganisationId, OrganisationKind, Reference};
use tokio_postgres::types::ToSql;

use super::PgStore;
use crate::{StorageError, UpsertCount, parse_code};

pub(super) async fn upsert_organisations(
    store: &PgStore,
    orgs: Vec<Organisation>,
) -> Result<UpsertCount, StorageError> {
    let mut count = UpsertCount::default();
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    tx.batch_execute("LOCK TABLE organisation IN SHARE ROW EXCLUSIVE MODE")
        .await?;
    let get = tx
        .prepare_cached("SELECT kind, name, departement FROM organisation WHERE code = $1")
        .await?;
    let ins = tx
        .prepare_cached(
            "INSERT INTO organisation (code, kind, name, departement) VALUES ($1, $2, $3, $4)",
        )
        .await?;
    let upd = tx
        .prepare_cached(
            "UPDATE organisation SET kind = $2, name = $3, departement = $4 WHERE code = $1",
        )
        .await?;
    for o in &orgs {
        let current: Option<(String, String, Option<String>)> = tx
            .query_opt(&get, &[&o.code.as_str()])
            .await?
            .map(|r| Ok::<_, StorageError>((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .transpose()?;
        let new = (
            o.kind.as_str().to_string(),
            o.name.clone(),
            o.departement.clone(),
        );
        let p: [&(dyn ToSql + Sync); 4] = [&o.code.as_str(), &new.0, &new.1, &new.2];
        match current {
            None => {
                tx.execute(&ins, &p).await?;
                count.inserted += 1;
            }
            Some(cur) if cur == new => count.unchanged += 1,
            Some(_) => {
                tx.execute(&upd, &p).await?;
                count.updated += 1;
            }
        }
    }
    tx.commit().await?;
    Ok(count)
}

pub(super) async fn organisations(
    store: &PgStore,
) -> Result<Vec<(OrganisationId, Organisation)>, StorageError> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "SELECT id, code, kind, name, departement FROM organisation
             ORDER BY code COLLATE \"C\"",
        )
        .await?;
    client
        .query(&stmt, &[])
        .await?
        .iter()
        .map(|r| {
            Ok((
                OrganisationId::new(r.try_get(0)?),
                Organisation {
                    code: parse_code(r.try_get(1)?, Reference::parse)?,
                    kind: parse_code(r.try_get(2)?, OrganisationKind::parse)?,
                    name: r.try_get(3)?,
                    departement: r.try_get(4)?,
                },
            ))
        })
        .collect()
}
