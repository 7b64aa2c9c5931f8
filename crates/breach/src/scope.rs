//! Scoping: every person whose data was revealed to the compromised
//! subjects in a window, read from the ledger's query index and leaves.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use rempart_domain::incident::{Compromised, Window};
use rempart_domain::{FieldGroup, NirView};
use rempart_ledger::leaf::{AuditLeaf, Decision, DenyReason, FieldGroups};
use rempart_ledger::{
    LedgerError, LedgerStore, OrganisationId, PersonId, QueryRange, Subject, Timestamp, query,
};

/// Leaves asked of the store per page: large enough that a scope of
/// millions of leaves pays few round trips, small enough to bound memory.
/// (In unit tests, a few, so that every subject spans pages.)
#[cfg(not(test))]
const PAGE: u32 = 20_000;
#[cfg(test)]
const PAGE: u32 = 3;

/// Why a scope cannot be computed. Messages name the field, never a
/// person.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    /// Nothing is said to be compromised.
    #[error("compromised: name at least one account or organisation")]
    NothingCompromised,
    /// The ledger could not be read (nothing is reported from a partial
    /// read).
    #[error("reading the audit ledger: {0}")]
    Ledger(#[from] LedgerError),
    /// The ledger's store could not be read.
    #[error("reading the audit ledger: {0}")]
    Store(#[from] rempart_ledger::StoreError),
}

/// How the NIR reached the compromised subjects, the most revealing first
/// in [`Ord`] (what a person's exposure keeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NirSeen {
    /// A pseudonymous token: identifies no one without the key.
    Token,
    /// Masked: sex, year and month of birth.
    Masked,
    /// In clear.
    Clear,
    /// Shown, in a view the leaf did not record (leaves written before the
    /// view was): counted as clear, the worst case.
    NotRecorded,
}

impl NirSeen {
    /// The view a leaf's groups record, if its NIR group is set.
    pub(crate) fn of(groups: FieldGroups) -> Option<Self> {
        if !groups.contains(FieldGroup::Nir) {
            return None;
        }
        Some(match groups.nir_view() {
            Some(NirView::Token) => NirSeen::Token,
            Some(NirView::Masked) => NirSeen::Masked,
            Some(NirView::Clear) => NirSeen::Clear,
            Some(NirView::None) | None => NirSeen::NotRecorded,
        })
    }

    /// Whether it identifies the person (clear, or not known not to).
    pub fn identifies(self) -> bool {
        matches!(self, NirSeen::Clear | NirSeen::NotRecorded)
    }

    /// Its stable text code.
    pub fn as_str(self) -> &'static str {
        match self {
            NirSeen::Token => "token",
            NirSeen::Masked => "masked",
            NirSeen::Clear => "clear",
            NirSeen::NotRecorded => "not_recorded",
        }
    }
}

impl fmt::Display for NirSeen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one person's data showed the compromised subjects in the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposure {
    /// Every field group shown at least once (the NIR's view apart).
    pub groups: FieldGroups,
    /// The most revealing view of the NIR shown, if it was.
    pub nir: Option<NirSeen>,
    /// How many times their data was shown.
    pub reads: u64,
    /// The first time, and its leaf.
    pub first: (Timestamp, u64),
    /// The last time, and its leaf.
    pub last: (Timestamp, u64),
    /// The organisations whose accounts were shown it, ascending.
    pub organisations: Vec<OrganisationId>,
}

impl Exposure {
    /// Whether what was shown cannot identify the person by itself (no
    /// identity, no contact, no NIR in clear): GDPR Art. 34(3)(a) exempts
    /// such persons from the notice (data unintelligible to the holder).
    pub fn pseudonymous_only(&self) -> bool {
        !self.groups.contains(FieldGroup::Identity)
            && !self.groups.contains(FieldGroup::Contact)
            && !self.nir.is_some_and(NirSeen::identifies)
    }

    fn first_seen(
        leaf_groups: FieldGroups,
        organisation: OrganisationId,
        at: (Timestamp, u64),
    ) -> Self {
        Exposure {
            groups: leaf_groups.groups_only(),
            nir: NirSeen::of(leaf_groups),
            reads: 1,
            first: at,
            last: at,
            organisations: vec![organisation],
        }
    }

    /// Adds what another slice saw of the same person.
    fn merge(&mut self, other: Exposure) {
        self.add(
            other.groups,
            other.nir,
            other.reads,
            (other.first, other.last),
            other.organisations,
        );
    }

    fn seen_again(
        &mut self,
        leaf_groups: FieldGroups,
        organisation: OrganisationId,
        at: (Timestamp, u64),
    ) {
        let nir = NirSeen::of(leaf_groups);
        self.add(leaf_groups, nir, 1, (at, at), [organisation]);
    }

    /// Counts `reads` more reads between `first` and `last` that showed
    /// `groups` and `nir` to `organisations`.
    fn add(
        &mut self,
        groups: FieldGroups,
        nir: Option<NirSeen>,
        reads: u64,
        (first, last): ((Timestamp, u64), (Timestamp, u64)),
        organisations: impl IntoIterator<Item = OrganisationId>,
    ) {
        for g in groups.iter() {
            self.groups.insert(g);
        }
        self.nir = self.nir.max(nir);
        self.reads += reads;
        self.first = self.first.min(first);
        self.last = self.last.max(last);
        for o in organisations {
            if let Err(at) = self.organisations.binary_search(&o) {
                self.organisations.insert(at, o);
            }
        }
    }
}

/// The exact scope of a breach: who was revealed, what, when, and the
/// attempts that were refused, over the ledger up to a tree size.
#[derive(Debug, Clone)]
pub struct Scope {
    /// What was compromised, as asked.
    pub compromised: Vec<Compromised>,
    /// The window read.
    pub window: Window,
    /// The ledger's size the scope covers: leaves at or after it (appended
    /// while scoping) are left out, so a checkpoint of at least this size
    /// proves every leaf the scope counted.
    pub tree_size: u64,
    /// Every person revealed, ascending by id.
    pub persons: Vec<(PersonId, Exposure)>,
    /// Leaves of the compromised subjects in the window.
    pub leaves: u64,
    /// Those that revealed person data.
    pub revealing: u64,
    /// Refused attempts by reason (each a leaf of the subjects, denied).
    pub refused: BTreeMap<DenyReason, u64>,
    /// Distinct persons named by a refused attempt and never revealed.
    pub refused_only_persons: u64,
    /// The lowest and highest index of the leaves counted.
    pub leaf_range: Option<(u64, u64)>,
}

impl Scope {
    /// Persons shown each field group (the NIR whatever its view).
    pub fn persons_by_group(&self) -> BTreeMap<FieldGroup, u64> {
        let mut counts = BTreeMap::new();
        for (_, e) in &self.persons {
            for g in e.groups.iter() {
                *counts.entry(g).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Persons by the most revealing view of their NIR shown.
    pub fn persons_by_nir(&self) -> BTreeMap<NirSeen, u64> {
        let mut counts = BTreeMap::new();
        for (_, e) in &self.persons {
            if let Some(n) = e.nir {
                *counts.entry(n).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Persons revealed to each organisation's accounts.
    pub fn persons_by_organisation(&self) -> BTreeMap<OrganisationId, u64> {
        let mut counts = BTreeMap::new();
        for (_, e) in &self.persons {
            for o in &e.organisations {
                *counts.entry(*o).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Persons whose exposure is pseudonymous only (Art. 34(3)(a)).
    pub fn pseudonymous_only(&self) -> u64 {
        self.persons
            .iter()
            .filter(|(_, e)| e.pseudonymous_only())
            .count() as u64
    }

    /// Its counts, as the register's tools show them (ids and numbers,
    /// never a personal value).
    pub fn summary(&self) -> ScopeSummary {
        ScopeSummary {
            persons: self.persons.len() as u64,
            reads: self.revealing,
            pseudonymous_only: self.pseudonymous_only(),
            by_field_group: self
                .persons_by_group()
                .into_iter()
                .map(|(g, n)| (g.to_string(), n))
                .collect(),
            by_nir_view: self
                .persons_by_nir()
                .into_iter()
                .map(|(v, n)| (v.to_string(), n))
                .collect(),
            by_organisation: self
                .persons_by_organisation()
                .into_iter()
                .map(|(o, n)| (o.to_string(), n))
                .collect(),
            refused: self
                .refused
                .iter()
                .map(|(r, n)| (r.to_string(), *n))
                .collect(),
            persons_only_attempted: self.refused_only_persons,
            leaves: self.leaves,
            leaf_range: self.leaf_range.map(|(lo, hi)| [lo, hi]),
            tree_size: self.tree_size,
        }
    }

    /// The exposure of one person, if they were revealed.
    pub fn exposure_of(&self, person: PersonId) -> Option<&Exposure> {
        self.persons
            .binary_search_by_key(&person, |(p, _)| *p)
            .ok()
            .map(|i| &self.persons[i].1)
    }
}

/// A scope's counts ([`Scope::summary`]), serialisable as the CLI's JSON
/// and the API's body share it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ScopeSummary {
    /// Persons revealed.
    pub persons: u64,
    /// Leaves that revealed person data.
    pub reads: u64,
    /// Persons whose exposure is pseudonymous only (Art. 34(3)(a)).
    pub pseudonymous_only: u64,
    /// Persons by field group shown.
    pub by_field_group: BTreeMap<String, u64>,
    /// Persons by the most revealing view of their NIR.
    pub by_nir_view: BTreeMap<String, u64>,
    /// Persons by organisation (its id) whose accounts saw them.
    pub by_organisation: BTreeMap<String, u64>,
    /// Refused attempts by reason.
    pub refused: BTreeMap<String, u64>,
    /// Persons named by a refused attempt and never revealed.
    pub persons_only_attempted: u64,
    /// Leaves of the compromised subjects in the window.
    pub leaves: u64,
    /// The lowest and highest index of the leaves counted.
    pub leaf_range: Option<[u64; 2]>,
    /// The ledger size the scope covers.
    pub tree_size: u64,
}

/// Scopes a breach over the whole ledger as it is now.
pub async fn scope(
    store: &dyn LedgerStore,
    compromised: &[Compromised],
    window: Window,
) -> Result<Scope, ScopeError> {
    let size = store.size().await?;
    scope_at(store, compromised, window, size).await
}

/// Scopes a breach over the ledger's first `tree_size` leaves: every leaf
/// of a compromised subject in the window is read once (an account of a
/// compromised organisation is read with it), decoded, and counted. A
/// leaf that does not decode fails the whole scope: a scope that silently
/// skipped one could miss a person.
///
/// Each subject's window is cut into [`SLICES`] consecutive time slices
/// read at once (a store serves them on several connections), and their
/// counts merged: the slices partition the window, so each leaf is read
/// exactly once.
pub async fn scope_at(
    store: &dyn LedgerStore,
    compromised: &[Compromised],
    window: Window,
    tree_size: u64,
) -> Result<Scope, ScopeError> {
    let mut subjects: Vec<Compromised> = compromised.to_vec();
    subjects.sort_unstable();
    subjects.dedup();
    if subjects.is_empty() {
        return Err(ScopeError::NothingCompromised);
    }
    // An account of a listed organisation is counted with it, once.
    let organisations: HashSet<OrganisationId> = subjects
        .iter()
        .filter_map(|s| match s {
            Compromised::Organisation(o) => Some(*o),
            Compromised::Account(_) => None,
        })
        .collect();
    let slices = slices(store, window, tree_size).await?;
    // The reads listed first (futures do nothing until polled): a lazy
    // iterator of closures here makes the future not provably `Send`
    // for every lifetime, which a server's handler needs.
    let mut reads = Vec::with_capacity(subjects.len() * slices.len());
    for subject in &subjects {
        for &(from, to) in &slices {
            reads.push(read_slice(
                store,
                *subject,
                from,
                to,
                tree_size,
                &organisations,
            ));
        }
    }
    let parts: Vec<Partial> = stream::iter(reads)
        .buffer_unordered(SLICES)
        .try_collect()
        .await?;
    let mut total = Partial::default();
    for part in parts {
        total.merge(part);
    }
    let refused_only_persons = total
        .refused_persons
        .iter()
        .filter(|p| !total.persons.contains_key(p))
        .count() as u64;
    let mut persons: Vec<(PersonId, Exposure)> = total.persons.into_iter().collect();
    persons.sort_unstable_by_key(|(p, _)| *p);
    Ok(Scope {
        compromised: subjects,
        window,
        tree_size,
        persons,
        leaves: total.leaves,
        revealing: total.revealing,
        refused: total.refused,
        refused_only_persons,
        leaf_range: total.range,
    })
}

/// Time slices read at once.
const SLICES: usize = 4;

/// The window cut into up to [`SLICES`] consecutive half-open slices of
/// equal time over the part the ledger's leaves span (the first starts at
/// the window's start and the last ends at its end, whatever the leaves'
/// times: together they are the window).
async fn slices(
    store: &dyn LedgerStore,
    window: Window,
    tree_size: u64,
) -> Result<Vec<(Timestamp, Timestamp)>, ScopeError> {
    let (from, to) = (
        Timestamp::from_datetime(window.from()),
        Timestamp::from_datetime(window.to()),
    );
    let time_of = |index: u64| async move {
        let rows = store.leaves(index, 1).await?;
        Ok::<_, ScopeError>(
            rows.first()
                .and_then(|r| AuditLeaf::decode(&r.data).ok())
                .map(|l| l.time.micros()),
        )
    };
    let span = match tree_size {
        0 => None,
        n => match (time_of(0).await?, time_of(n - 1).await?) {
            (Some(first), Some(last)) => Some((first.max(from.micros()), last.min(to.micros()))),
            _ => None,
        },
    };
    let Some((lo, hi)) = span.filter(|(lo, hi)| lo < hi) else {
        return Ok(vec![(from, to)]);
    };
    let step = (hi - lo) / SLICES as i64;
    if step <= 0 {
        return Ok(vec![(from, to)]);
    }
    let mut bounds = vec![from];
    bounds.extend((1..SLICES as i64).map(|k| Timestamp(lo + k * step)));
    bounds.push(to);
    Ok(bounds.windows(2).map(|w| (w[0], w[1])).collect())
}

/// What one slice of one subject counted.
#[derive(Default)]
struct Partial {
    persons: HashMap<PersonId, Exposure>,
    refused_persons: HashSet<PersonId>,
    refused: BTreeMap<DenyReason, u64>,
    leaves: u64,
    revealing: u64,
    range: Option<(u64, u64)>,
}

impl Partial {
    fn merge(&mut self, other: Partial) {
        if other.persons.len() > self.persons.len() {
            let mine = std::mem::replace(&mut self.persons, other.persons);
            merge_persons(&mut self.persons, mine);
        } else {
            merge_persons(&mut self.persons, other.persons);
        }
        self.refused_persons.extend(other.refused_persons);
        for (r, n) in other.refused {
            *self.refused.entry(r).or_insert(0) += n;
        }
        self.leaves += other.leaves;
        self.revealing += other.revealing;
        self.range = match (self.range, other.range) {
            (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
            (r, None) | (None, r) => r,
        };
    }
}

fn merge_persons(into: &mut HashMap<PersonId, Exposure>, from: HashMap<PersonId, Exposure>) {
    for (p, e) in from {
        match into.get_mut(&p) {
            Some(mine) => mine.merge(e),
            None => {
                into.insert(p, e);
            }
        }
    }
}

/// Reads one subject's leaves in `[from, to)` page by page.
async fn read_slice(
    store: &dyn LedgerStore,
    subject: Compromised,
    from: Timestamp,
    to: Timestamp,
    tree_size: u64,
    organisations: &HashSet<OrganisationId>,
) -> Result<Partial, ScopeError> {
    let (query_subject, account) = match subject {
        Compromised::Organisation(o) => (Subject::Organisation(o), None),
        Compromised::Account(a) => (Subject::Account(a), Some(a)),
    };
    let mut part = Partial::default();
    let mut after = None;
    loop {
        let page = query::query(
            store,
            &QueryRange {
                subject: query_subject,
                from,
                to,
                after,
                limit: PAGE,
            },
        )
        .await?;
        for entry in &page.entries {
            let leaf = &entry.leaf;
            if entry.index >= tree_size
                || (account.is_some() && organisations.contains(&leaf.organisation))
            {
                continue;
            }
            part.leaves += 1;
            part.range = Some(match part.range {
                None => (entry.index, entry.index),
                Some((lo, hi)) => (lo.min(entry.index), hi.max(entry.index)),
            });
            if let Decision::Deny(reason) = leaf.decision {
                *part.refused.entry(reason).or_insert(0) += 1;
                if let Some(p) = leaf.person {
                    part.refused_persons.insert(p);
                }
                continue;
            }
            let Some(person) = leaf.person.filter(|_| leaf.reveals_person_data()) else {
                continue;
            };
            part.revealing += 1;
            let at = (leaf.time, entry.index);
            part.persons
                .entry(person)
                .and_modify(|e| e.seen_again(leaf.field_groups, leaf.organisation, at))
                .or_insert_with(|| Exposure::first_seen(leaf.field_groups, leaf.organisation, at));
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(part),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rempart_domain::Purpose;
    use rempart_ledger::leaf::{Action, AuditLeaf, GuardVerdict};
    use rempart_ledger::store::postgres::{PgLedgerConfig, PgLedgerStore};
    use rempart_ledger::store::sqlite::SqliteLedgerStore;
    use rempart_ledger::{AccountId, Ledger, LedgerConfig, LedgerKey};
    use rempart_testdb::TestSchema;

    use super::*;

    enum Keep {
        Dir(#[allow(dead_code)] tempfile::TempDir),
        Schema(#[allow(dead_code)] TestSchema),
    }

    async fn store(postgres: bool) -> (Arc<dyn LedgerStore>, Keep) {
        if postgres {
            let schema = TestSchema::new("breach");
            let config = PgLedgerConfig::new(&schema.url).with_schema(&schema.schema);
            let store = PgLedgerStore::connect(&config)
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL at {} is required: {e}", schema.url));
            (Arc::new(store), Keep::Schema(schema))
        } else {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteLedgerStore::open(dir.path()).await.unwrap();
            (Arc::new(store), Keep::Dir(dir))
        }
    }

    fn t(minute: i64) -> chrono::DateTime<chrono::Utc> {
        // 2026-03-02T00:00Z plus minutes.
        chrono::DateTime::from_timestamp(1_772_409_600 + minute * 60, 0).unwrap()
    }

    fn read(minute: i64, account: i64, person: i64, groups: FieldGroups) -> AuditLeaf {
        AuditLeaf {
            time: Timestamp::from_datetime(t(minute)),
            account: AccountId::new(account),
            organisation: OrganisationId::new(account / 10),
            session: None,
            person: Some(PersonId::new(person)),
            action: Action::ReadPerson,
            field_groups: groups,
            purpose: Some(Purpose::FollowUp),
            decision: Decision::Allow,
            guard: Some(GuardVerdict::Allow),
            note: None,
        }
    }

    fn groups(g: &[FieldGroup], nir: NirView) -> FieldGroups {
        FieldGroups::of(g).with_nir_view(nir)
    }

    /// Organisation 7 (accounts 70, 71) and 8 (account 80).
    fn history() -> Vec<AuditLeaf> {
        use FieldGroup::*;
        let ident = groups(&[Identity, Contact], NirView::None);
        let mut denied = read(12, 71, 4, ident);
        denied.decision = Decision::Deny(DenyReason::NoMandate);
        let mut login = read(13, 70, 0, FieldGroups::EMPTY);
        login.person = None;
        login.action = Action::Login;
        let mut refused_then_read = read(14, 71, 1, ident);
        refused_then_read.decision = Decision::Deny(DenyReason::Throttled);
        vec![
            read(5, 70, 6, ident), // before the window
            read(10, 70, 1, ident),
            read(11, 70, 2, groups(&[Nir, Status], NirView::Token)),
            read(11, 70, 3, groups(&[Nir], NirView::Clear)),
            denied,
            login,
            refused_then_read,
            read(15, 71, 1, groups(&[Nir], NirView::Masked)),
            read(16, 80, 5, ident), // another organisation
            read(17, 70, 3, groups(&[Status], NirView::None)),
            read(18, 71, 8, groups(&[Nir], NirView::None)), // NIR, view not recorded
            read(30, 70, 9, ident),                         // after the window
        ]
    }

    async fn ledger_of(store: &Arc<dyn LedgerStore>, leaves: &[AuditLeaf]) {
        let key = LedgerKey::generate("rempart.test/breach").unwrap();
        let ledger = Ledger::open(store.clone(), key, LedgerConfig::default())
            .await
            .unwrap();
        ledger.append_batch(leaves).await.unwrap();
        ledger.close().await.unwrap();
        store.settle_index().await.unwrap();
    }

    fn window() -> Window {
        Window::new(t(10), t(20)).unwrap()
    }

    async fn exact_scope(postgres: bool) {
        let (store, _keep) = store(postgres).await;
        ledger_of(&store, &history()).await;
        let org = [Compromised::Organisation(OrganisationId::new(7))];
        let s = scope(store.as_ref(), &org, window()).await.unwrap();
        let ids: Vec<i64> = s.persons.iter().map(|(p, _)| p.get()).collect();
        assert_eq!(
            ids,
            [1, 2, 3, 8],
            "exactly the persons revealed in the window"
        );
        assert_eq!(s.tree_size, 12);
        assert_eq!(s.leaves, 9, "the organisation's leaves in the window");
        assert_eq!(s.revealing, 6);
        assert_eq!(
            s.refused.iter().map(|(r, n)| (*r, *n)).collect::<Vec<_>>(),
            [(DenyReason::NoMandate, 1), (DenyReason::Throttled, 1)]
        );
        assert_eq!(s.refused_only_persons, 1, "person 4 was only attempted");
        assert_eq!(s.leaf_range, Some((1, 10)));

        let one = s.exposure_of(PersonId::new(1)).unwrap();
        assert_eq!(one.reads, 2);
        assert!(one.groups.contains(FieldGroup::Identity));
        assert_eq!(one.nir, Some(NirSeen::Masked));
        assert_eq!((one.first.1, one.last.1), (1, 7));
        assert!(!one.pseudonymous_only());
        let two = s.exposure_of(PersonId::new(2)).unwrap();
        assert_eq!(two.nir, Some(NirSeen::Token));
        assert!(
            two.pseudonymous_only(),
            "a token and a status identify no one"
        );
        let three = s.exposure_of(PersonId::new(3)).unwrap();
        assert_eq!(three.nir, Some(NirSeen::Clear));
        assert!(three.groups.contains(FieldGroup::Status));
        let eight = s.exposure_of(PersonId::new(8)).unwrap();
        assert_eq!(eight.nir, Some(NirSeen::NotRecorded));
        assert!(
            !eight.pseudonymous_only(),
            "an unrecorded view counts as clear"
        );
        assert_eq!(s.pseudonymous_only(), 1);
        assert_eq!(
            s.persons_by_nir().into_iter().collect::<Vec<_>>(),
            [
                (NirSeen::Token, 1),
                (NirSeen::Masked, 1),
                (NirSeen::Clear, 1),
                (NirSeen::NotRecorded, 1)
            ]
        );
        assert_eq!(s.persons_by_group()[&FieldGroup::Nir], 4);
        assert_eq!(s.persons_by_group()[&FieldGroup::Contact], 1);
        assert_eq!(
            s.persons_by_organisation().into_iter().collect::<Vec<_>>(),
            [(OrganisationId::new(7), 4)]
        );

        // Accounts named beside their organisation are not counted twice;
        // an account alone gives its own reads only.
        let both = [
            Compromised::Account(AccountId::new(70)),
            Compromised::Organisation(OrganisationId::new(7)),
            Compromised::Account(AccountId::new(80)),
        ];
        let s2 = scope(store.as_ref(), &both, window()).await.unwrap();
        assert_eq!(s2.leaves, 10);
        assert_eq!(s2.persons.len(), 5);
        assert_eq!(s2.exposure_of(PersonId::new(1)).unwrap().reads, 2);
        let s3 = scope(
            store.as_ref(),
            &[Compromised::Account(AccountId::new(71))],
            window(),
        )
        .await
        .unwrap();
        let ids: Vec<i64> = s3.persons.iter().map(|(p, _)| p.get()).collect();
        assert_eq!(ids, [1, 8]);

        // A scope bound to a tree size leaves later leaves out.
        let at = scope_at(store.as_ref(), &org, window(), 3).await.unwrap();
        let ids: Vec<i64> = at.persons.iter().map(|(p, _)| p.get()).collect();
        assert_eq!(ids, [1, 2]);
        assert_eq!(at.tree_size, 3);
    }

    async fn bad_input(postgres: bool) {
        let (store, _keep) = store(postgres).await;
        ledger_of(&store, &history()).await;
        assert!(Window::new(t(20), t(10)).is_err());
        assert!(Window::new(t(10), t(10)).is_err());
        assert!(matches!(
            scope(store.as_ref(), &[], window()).await,
            Err(ScopeError::NothingCompromised)
        ));
        // An unknown subject has an empty scope (the ledger cannot tell an
        // unknown account from an idle one; the registry can).
        let none = scope(
            store.as_ref(),
            &[Compromised::Account(AccountId::new(999))],
            window(),
        )
        .await
        .unwrap();
        assert!(none.persons.is_empty() && none.leaves == 0 && none.leaf_range.is_none());
    }

    macro_rules! both {
        ($($name:ident),+) => {$(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(false).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(true).await;
                }
            }
        )+};
    }

    both!(exact_scope, bad_input);
}
