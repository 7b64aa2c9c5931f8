//! Exact memoization of decisions.
//!
//! # Why a cached answer is always the answer Cedar would give
//!
//! A decision is a pure function of the Cedar request and the policy set.
//! The policy set of an [`Authorizer`](crate::Authorizer) never changes
//! (loading new policies makes a new authorizer, with an empty cache), and
//! the request is built by `Authorizer::build` from these facts only:
//!
//! | Cedar value                      | built from                                   |
//! |----------------------------------|----------------------------------------------|
//! | `principal` (`Account::"<id>"`)  | `Who::account_id`                            |
//! | `principal.login`                | `Who::login`                                 |
//! | `principal.role`, `.state`       | `Who::role`, `Who::state`                    |
//! | `principal.organisation`         | `Organisation::"<Who::organisation_id>"`     |
//! | `principal.organisation.kind`    | `Who::kind`                                  |
//! | `action`                         | the [`Action`] asked                         |
//! | `resource`                       | `Person::"<What::person_id>"` or the registry |
//! | `context.purpose`                | `What::purpose`                              |
//! | `context.reason_len`             | `What::reason_len`                           |
//! | `context.mandates`               | the *set* of `{purpose, holder, live}` records |
//!
//! The [`Key`] holds every one of these facts except the three ids and the
//! login. A policy can only observe an id through an entity literal
//! (`principal == Account::"7"`, `principal in Organisation::"3"`,
//! `resource == Person::"42"`, `principal.organisation == …`): without one,
//! every entity-valued expression of a given type evaluates to the only
//! entity of that type in the request, so `==`, `in` and `is` between them
//! give the same answer whatever the ids are, and Cedar has no operator that
//! turns an entity id into a string. The login is an ordinary attribute and
//! can only be observed by reading it (`principal.login`, `has login`).
//! The loader ([`blocker`]) looks for both in every policy; if it finds
//! either, or cannot inspect a policy, the authorizer does not memoize at
//! all. A false alarm only costs speed.
//!
//! The mandates enter the context as a Cedar `Set` of records: duplicates
//! collapse and order does not count, and the ids only enter through the
//! `holder` computed by `holder()`. The key stores exactly that set, as a
//! bit set over the (purpose, holder, live) triples.
//!
//! Only successful answers are stored: an error (a request that cannot be
//! built, a failing policy) is evaluated again, and reported again, on every
//! call.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::RwLock;

use rempart_domain::{AccountState, OrganisationKind, Purpose, Role};

use crate::{Action, Decision, Holder, MandateFact, What, Who};

/// Most decisions kept by one authorizer.
pub(crate) const CAPACITY: usize = 4096;
/// Independent locks, so that two cores rarely wait for each other.
const SHARDS: usize = 16;
const SHARD_CAPACITY: usize = CAPACITY / SHARDS;

/// Entity types whose literals a policy may name without observing any
/// request id: the action uids and the registry are the same in every request.
const NEUTRAL_TYPES: &[&str] = &["Action", "Registry"];

/// Attributes that carry something other than the key's facts.
const UNKEYED_ATTRIBUTES: &[&str] = &["login"];

/// What was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Query {
    /// [`Authorizer::allowed_field_groups`](crate::Authorizer::allowed_field_groups).
    FieldGroups,
    /// [`Authorizer::is_allowed`](crate::Authorizer::is_allowed).
    Action(Action),
}

/// Every fact of a request that a memoizable policy set can observe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    query: Query,
    role: Role,
    state: AccountState,
    kind: OrganisationKind,
    purpose: Purpose,
    reason_len: usize,
    /// The set of mandate records: bit `8 * purpose + 2 * holder + live`.
    mandates: u128,
}

impl Key {
    /// The key of a request, or `None` when its mandate records do not fit
    /// the bit set (more purposes than it has room for): such a request is
    /// simply not memoized.
    pub(crate) fn new(who: &Who, what: &What, query: Query) -> Option<Key> {
        let mut mandates = 0u128;
        for m in &what.mandates {
            mandates |= 1u128.checked_shl(record_bit(who, m)?)?;
        }
        Some(Key {
            query,
            role: who.role,
            state: who.state,
            kind: who.kind,
            purpose: what.purpose,
            reason_len: what.reason_len,
            mandates,
        })
    }
}

/// The bit of one mandate record `{purpose, holder, live}`; distinct records
/// get distinct bits.
fn record_bit(who: &Who, m: &MandateFact) -> Option<u32> {
    let purpose = Purpose::ALL.iter().position(|p| *p == m.purpose)?;
    let purpose = u32::try_from(purpose).ok()?;
    let holder = match crate::holder(who, m) {
        Holder::Account => 0,
        Holder::Organisation => 1,
        Holder::OtherAccount => 2,
        Holder::OtherOrganisation => 3,
    };
    let bit = purpose.checked_mul(8)? + holder * 2 + u32::from(m.live);
    (bit < u128::BITS).then_some(bit)
}

/// A remembered answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    Groups(Decision),
    Allowed(bool),
}

/// A key and its hash, computed once per call (SipHash with a per-cache
/// random seed: request facts cannot be chosen to collide).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hashed {
    hash: u64,
    key: Key,
}

impl PartialEq for Hashed {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Hashed {}

impl Hash for Hashed {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Passes the precomputed hash of a [`Hashed`] through.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `Hashed`; stay correct for anything else.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Shard = HashMap<Hashed, Answer, BuildHasherDefault<PassThrough>>;

/// A bounded map from [`Key`] to [`Answer`], shared by all request handlers:
/// [`SHARDS`] maps of at most [`SHARD_CAPACITY`] answers each, behind their
/// own read-write lock (a hit takes one read lock). When a map is full,
/// inserting forgets one of its answers.
pub(crate) struct Memo {
    seed: RandomState,
    shards: Vec<RwLock<Shard>>,
}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memo").field("len", &self.len()).finish()
    }
}

impl Memo {
    pub(crate) fn new() -> Memo {
        Memo {
            seed: RandomState::new(),
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
        }
    }

    pub(crate) fn hashed(&self, key: Key) -> Hashed {
        Hashed {
            hash: self.seed.hash_one(key),
            key,
        }
    }

    fn shard(&self, key: &Hashed) -> Option<&RwLock<Shard>> {
        // The top bits: hashbrown uses the low ones inside the shard.
        let index = usize::try_from(key.hash >> 60).unwrap_or(0) % SHARDS;
        self.shards.get(index)
    }

    /// The remembered answer, if any. A poisoned lock reads as a miss.
    pub(crate) fn get(&self, key: &Hashed) -> Option<Answer> {
        self.shard(key)?.read().ok()?.get(key).cloned()
    }

    /// Remembers a successful answer.
    pub(crate) fn insert(&self, key: Hashed, answer: Answer) {
        let Some(shard) = self.shard(&key) else {
            return;
        };
        let Ok(mut map) = shard.write() else {
            return;
        };
        if map.len() >= SHARD_CAPACITY
            && !map.contains_key(&key)
            && let Some(old) = map.keys().next().copied()
        {
            // Full: forget one answer, whichever the table holds first (its
            // place depends on the seeded hash, not on the facts).
            map.remove(&old);
        }
        map.insert(key, answer);
    }

    /// Answers currently remembered.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().map_or(0, |m| m.len()))
            .sum()
    }
}

/// Why the policy set cannot be memoized, if it cannot: the first policy
/// that names an account, organisation or person (any entity literal other
/// than an action or the registry), or reads an attribute the key does not
/// hold (`login`), or cannot be inspected.
pub(crate) fn blocker(policies: &cedar_policy::PolicySet) -> Option<String> {
    if let Some(template) = policies.templates().next() {
        return Some(format!(
            "`{}` is a template (linked policies name entities)",
            template.id()
        ));
    }
    for policy in policies.policies() {
        let id = policy.id();
        for uid in policy.entity_literals() {
            let type_name = uid.type_name().to_string();
            if !NEUTRAL_TYPES.contains(&type_name.as_str()) {
                return Some(format!("policy `{id}` names the entity {uid}"));
            }
        }
        match policy.to_json() {
            Ok(json) => {
                if let Some(found) = observed_in_json(&json) {
                    return Some(format!("policy `{id}` {found}"));
                }
            }
            Err(e) => return Some(format!("policy `{id}` cannot be inspected: {e}")),
        }
    }
    None
}

/// Walks a policy's JSON form for an entity literal (`{"type": …, "id": …}`,
/// whether in the scope, under `"entity"`/`"entities"`, or as a
/// `{"__entity": …}` value) of a non-neutral type, and for a read or `has`
/// test (`{"attr": …}`) of an unkeyed attribute.
fn observed_in_json(json: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match json {
        Value::Object(map) => {
            if let (Some(Value::String(t)), Some(id)) = (map.get("type"), map.get("id"))
                && !NEUTRAL_TYPES.contains(&t.as_str())
            {
                return Some(format!("names the entity {t}::{id}"));
            }
            let unkeyed = |v: &Value| v.as_str().is_some_and(|a| UNKEYED_ATTRIBUTES.contains(&a));
            match map.get("attr") {
                Some(a) if unkeyed(a) => return Some(format!("reads the attribute {a}")),
                Some(Value::Array(list)) => {
                    if let Some(a) = list.iter().find(|a| unkeyed(a)) {
                        return Some(format!("reads the attribute {a}"));
                    }
                }
                _ => {}
            }
            map.values().find_map(observed_in_json)
        }
        Value::Array(list) => list.iter().find_map(observed_in_json),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rempart_domain::{AccountId, OrganisationId, PersonId};

    fn who() -> Who {
        Who {
            account_id: AccountId::new(1),
            login: "a".into(),
            role: Role::Agent,
            state: AccountState::Active,
            organisation_id: OrganisationId::new(10),
            kind: OrganisationKind::CapEmploi,
        }
    }

    fn mandate(
        organisation_id: i64,
        account_id: Option<i64>,
        purpose: Purpose,
        live: bool,
    ) -> MandateFact {
        MandateFact {
            organisation_id: OrganisationId::new(organisation_id),
            account_id: account_id.map(AccountId::new),
            purpose,
            live,
        }
    }

    #[test]
    fn every_mandate_record_has_its_own_bit() {
        let w = who();
        let mut seen = std::collections::HashMap::new();
        for purpose in Purpose::ALL {
            for (org, account) in [(10, Some(1)), (10, None), (10, Some(2)), (11, None)] {
                for live in [false, true] {
                    let m = mandate(org, account, *purpose, live);
                    let record = (m.purpose, crate::holder(&w, &m), m.live);
                    let bit = record_bit(&w, &m).unwrap_or(u32::MAX);
                    assert!(bit < u128::BITS, "{record:?}");
                    if let Some(other) = seen.insert(bit, record) {
                        assert_eq!(other, record, "bit {bit}");
                    }
                }
            }
        }
        assert_eq!(seen.len(), Purpose::ALL.len() * 4 * 2);
    }

    #[test]
    fn the_key_sees_the_set_of_records_not_ids_order_or_repeats() {
        let w = who();
        let what = |mandates: Vec<MandateFact>| What {
            person_id: PersonId::new(1),
            purpose: Purpose::FollowUp,
            mandates,
            reason_len: 0,
        };
        let a = mandate(10, None, Purpose::FollowUp, true);
        let b = mandate(11, None, Purpose::Training, false);
        // Another organisation with the same standing: same record.
        let b2 = mandate(12, Some(7), Purpose::Training, false);
        let key = |m| Key::new(&w, &what(m), Query::FieldGroups);
        assert_eq!(key(vec![a, b]), key(vec![b, a]));
        assert_eq!(key(vec![a, b]), key(vec![a, b2, b, a]));
        assert_ne!(key(vec![a, b]), key(vec![a]));
        assert_ne!(key(vec![a]), key(vec![]));
        // The account's own mandate differs from its organisation's.
        assert_ne!(
            key(vec![mandate(10, Some(1), Purpose::FollowUp, true)]),
            key(vec![a])
        );
        // Another request for a different person, by another account of
        // another organisation standing the same way: same key.
        let other = Who {
            account_id: AccountId::new(2),
            login: "b".into(),
            organisation_id: OrganisationId::new(20),
            ..w.clone()
        };
        let shifted = What {
            person_id: PersonId::new(99),
            ..what(vec![mandate(20, None, Purpose::FollowUp, true)])
        };
        assert_eq!(Key::new(&other, &shifted, Query::FieldGroups), key(vec![a]));
        assert_ne!(
            Key::new(&w, &what(vec![a]), Query::Action(Action::ReadIdentity)),
            key(vec![a])
        );
    }

    #[test]
    fn the_memo_stays_bounded() {
        let memo = Memo::new();
        let w = who();
        for reason_len in 0..CAPACITY * 3 {
            let what = What {
                person_id: PersonId::new(1),
                purpose: Purpose::FollowUp,
                mandates: vec![],
                reason_len,
            };
            let Some(key) = Key::new(&w, &what, Query::Action(Action::BreakGlass)) else {
                panic!("no key")
            };
            let hashed = memo.hashed(key);
            memo.insert(hashed, Answer::Allowed(reason_len % 2 == 0));
            assert_eq!(
                memo.get(&hashed),
                Some(Answer::Allowed(reason_len % 2 == 0))
            );
            assert!(memo.len() <= CAPACITY);
        }
        assert!(memo.len() > CAPACITY / 2, "{}", memo.len());
    }
}
