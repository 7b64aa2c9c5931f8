//! The authorization stage of the consultation path.
//!
//! A Cedar schema and policies, shipped as files in `policies/` and embedded
//! as the defaults, are parsed and **validated in strict mode** once, when the
//! server starts: an invalid file stops start-up with an error naming the
//! file, line, column and reason. Per request, the entities (account,
//! organisation, person) and the context (purpose, mandate facts, length of
//! the written reason) are built from the caller's data and evaluated
//! against the parsed policy set.
//!
//! Decisions are **memoized exactly**: the answer is a pure function of the
//! facts policies can observe (role, account state, organisation kind,
//! purpose, reason length, the set of mandate records) and of the policy set,
//! which never changes for a given [`Authorizer`]. The loader proves that no
//! policy observes what the cache key leaves out (account, organisation and
//! person ids, login); when it cannot, nothing is memoized
//! ([`Authorizer::memoizes`]). Errors are never remembered. See the `memo`
//! module for the argument in full.
//!
//! Reading a person is decided one field group at a time
//! ([`Authorizer::allowed_field_groups`]); the NIR is shown in the most
//! revealing way allowed: clear, masked, pseudonymous token, or not at all.
//! A policy that fails during evaluation denies the request (fail closed).

mod error;
mod memo;

pub mod bench;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{
    ActionConstraint, Authorizer as CedarAuthorizer, Context, Decision as CedarDecision, Entities,
    Entity, EntityId, EntityTypeName, EntityUid, PolicyId, Request, RestrictedExpression, Schema,
    ValidationMode, Validator,
};
use rempart_domain::{
    AccountId, AccountState, FieldGroup, OrganisationId, OrganisationKind, PersonId, Purpose, Role,
};

pub use error::{Location, PolicyError, Problem, Problems};

/// The shipped schema (`policies/rempart.cedarschema`).
pub const DEFAULT_SCHEMA: &str = include_str!("../policies/rempart.cedarschema");
/// The shipped policies (`policies/default.cedar`).
pub const DEFAULT_POLICIES: &str = include_str!("../policies/default.cedar");
/// File names used in messages for the embedded defaults and by [`Authorizer::from_dir`].
pub const SCHEMA_FILE: &str = "rempart.cedarschema";
pub const DEFAULT_POLICY_FILE: &str = "default.cedar";

/// What an account asks to do. One action per field group (and per NIR
/// view), plus the actions that do not read a person's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    ReadIdentity,
    ReadContact,
    ReadStatus,
    ReadNirClear,
    ReadNirMasked,
    ReadNirToken,
    Search,
    ListCaseload,
    BreakGlass,
    GrantMandate,
    RevokeMandate,
    ManageAccounts,
    /// Ask for a new account in one's own organisation (first pair of eyes).
    RequestAccount,
    /// Ask for a credential reset of another account (first pair of eyes).
    RequestReset,
    /// Approve or reject requested accounts and resets, list those pending
    /// (second pair of eyes).
    DecideAccount,
    /// List accounts with their history, to recertify them.
    ReviewAccounts,
    /// Lift the guard's freeze of an organisation (with a written reason).
    LiftFreeze,
    /// Keep the breach register: open incidents, record their timeline,
    /// scope them from the ledger, read them.
    ManageIncidents,
}

impl Action {
    pub const ALL: &'static [Action] = &[
        Action::ReadIdentity,
        Action::ReadContact,
        Action::ReadStatus,
        Action::ReadNirClear,
        Action::ReadNirMasked,
        Action::ReadNirToken,
        Action::Search,
        Action::ListCaseload,
        Action::BreakGlass,
        Action::GrantMandate,
        Action::RevokeMandate,
        Action::ManageAccounts,
        Action::RequestAccount,
        Action::RequestReset,
        Action::DecideAccount,
        Action::ReviewAccounts,
        Action::LiftFreeze,
        Action::ManageIncidents,
    ];

    /// The Cedar action id.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::ReadIdentity => "read_identity",
            Action::ReadContact => "read_contact",
            Action::ReadStatus => "read_status",
            Action::ReadNirClear => "read_nir_clear",
            Action::ReadNirMasked => "read_nir_masked",
            Action::ReadNirToken => "read_nir_token",
            Action::Search => "search",
            Action::ListCaseload => "list_caseload",
            Action::BreakGlass => "break_glass",
            Action::GrantMandate => "grant_mandate",
            Action::RevokeMandate => "revoke_mandate",
            Action::ManageAccounts => "manage_accounts",
            Action::RequestAccount => "request_account",
            Action::RequestReset => "request_reset",
            Action::DecideAccount => "decide_account",
            Action::ReviewAccounts => "review_accounts",
            Action::LiftFreeze => "lift_freeze",
            Action::ManageIncidents => "manage_incidents",
        }
    }

    /// Whether the action's resource is a person (otherwise: the registry).
    pub fn on_person(self) -> bool {
        !matches!(
            self,
            Action::Search
                | Action::ListCaseload
                | Action::ManageAccounts
                | Action::RequestAccount
                | Action::RequestReset
                | Action::DecideAccount
                | Action::ReviewAccounts
                | Action::LiftFreeze
                | Action::ManageIncidents
        )
    }

    fn index(self) -> usize {
        self as usize
    }
}

// How the NIR may be shown: defined in the domain, where the ledger's leaf
// records it too.
pub use rempart_domain::NirView;

/// The account making the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    pub account_id: AccountId,
    /// The pseudonymous login handle.
    pub login: String,
    pub role: Role,
    pub state: AccountState,
    pub organisation_id: OrganisationId,
    pub kind: OrganisationKind,
}

/// One mandate on the person, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MandateFact {
    pub organisation_id: OrganisationId,
    /// When set, only this account of the organisation holds the mandate.
    pub account_id: Option<AccountId>,
    pub purpose: Purpose,
    /// In force today (the caller decides with `Mandate::is_live_on`).
    pub live: bool,
}

/// What the account asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct What {
    /// The person (ignored by registry-wide actions).
    pub person_id: PersonId,
    /// The declared purpose of the request.
    pub purpose: Purpose,
    /// Every mandate on the person (empty for registry-wide actions).
    pub mandates: Vec<MandateFact>,
    /// Length in characters of the written reason (break-glass), 0 when none.
    pub reason_len: usize,
}

/// The outcome of [`Authorizer::allowed_field_groups`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed field groups in `FieldGroup::ALL` order; holds `Nir` exactly
    /// when `nir` is not [`NirView::None`].
    pub groups: Vec<FieldGroup>,
    pub nir: NirView,
}

impl Decision {
    pub fn allows(&self, group: FieldGroup) -> bool {
        self.groups.contains(&group)
    }

    /// Nothing at all may be shown.
    pub fn is_denied(&self) -> bool {
        self.groups.is_empty()
    }
}

/// Where a mandate stands relative to the requesting account: the only way
/// the ids of a mandate reach the policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Holder {
    /// Names this very account.
    Account,
    /// Held by the account's organisation, no account named.
    Organisation,
    /// Held by the organisation but names another account.
    OtherAccount,
    /// Held by another organisation.
    OtherOrganisation,
}

impl Holder {
    /// The value of the `holder` field of a mandate record in the context.
    fn as_str(self) -> &'static str {
        match self {
            Holder::Account => "account",
            Holder::Organisation => "organisation",
            Holder::OtherAccount => "other_account",
            Holder::OtherOrganisation => "other_organisation",
        }
    }
}

fn holder(who: &Who, m: &MandateFact) -> Holder {
    if m.organisation_id != who.organisation_id {
        Holder::OtherOrganisation
    } else {
        match m.account_id {
            None => Holder::Organisation,
            Some(a) if a == who.account_id => Holder::Account,
            Some(_) => Holder::OtherAccount,
        }
    }
}

/// Entity type names and action uids, parsed once.
#[derive(Debug, Clone)]
struct Names {
    organisation: EntityTypeName,
    account: EntityTypeName,
    person: EntityTypeName,
    registry: EntityUid,
    actions: Vec<EntityUid>,
}

impl Names {
    fn new(schema: &Schema) -> Result<Self, PolicyError> {
        let type_name =
            |s: &str| EntityTypeName::from_str(s).map_err(|e| PolicyError::Request(e.to_string()));
        let declared: HashSet<EntityUid> = schema.actions().cloned().collect();
        let action_type = type_name("Action")?;
        let mut actions = Vec::with_capacity(Action::ALL.len());
        for a in Action::ALL {
            let uid =
                EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(a.as_str()));
            if !declared.contains(&uid) {
                return Err(PolicyError::MissingAction { action: a.as_str() });
            }
            actions.push(uid);
        }
        Ok(Names {
            organisation: type_name("Organisation")?,
            account: type_name("Account")?,
            person: type_name("Person")?,
            registry: EntityUid::from_type_name_and_id(
                type_name("Registry")?,
                EntityId::new("rempart"),
            ),
            actions,
        })
    }

    fn action(&self, a: Action) -> Result<&EntityUid, PolicyError> {
        self.actions
            .get(a.index())
            .ok_or_else(|| PolicyError::Request(format!("unknown action {}", a.as_str())))
    }
}

/// A schema and a policy set, parsed and validated; cheap to share
/// (`Arc<Authorizer>`) between request handlers.
///
/// It remembers its decisions (at most [`Authorizer::CACHE_CAPACITY`]),
/// when [`Authorizer::memoizes`]. The cache belongs to this authorizer:
/// loading other policies makes another authorizer, with an empty cache, so
/// an answer can never outlive the policies that gave it.
#[derive(Debug)]
pub struct Authorizer {
    schema: Schema,
    policies: cedar_policy::PolicySet,
    cedar: CedarAuthorizer,
    names: Names,
    /// Per action (`Action::ALL` order), the policies whose action scope
    /// admits it; `None` (evaluate them all) if the schema's action
    /// hierarchy could not be read.
    by_action: Option<Vec<cedar_policy::PolicySet>>,
    /// `None` when a policy may observe what the key leaves out.
    memo: Option<memo::Memo>,
    /// Why `memo` is `None`.
    blocker: Option<String>,
}

/// Loading entry point: `PolicySet::load(schema, policies)`.
pub struct PolicySet;

impl PolicySet {
    /// Parses and validates (strict mode) a schema and one policy file.
    pub fn load(schema_text: &str, policies_text: &str) -> Result<Authorizer, PolicyError> {
        Authorizer::load_files(
            (SCHEMA_FILE, schema_text),
            &[(DEFAULT_POLICY_FILE, policies_text)],
        )
    }
}

impl Authorizer {
    /// The shipped schema and policies.
    pub fn defaults() -> Result<Authorizer, PolicyError> {
        PolicySet::load(DEFAULT_SCHEMA, DEFAULT_POLICIES)
    }

    /// Reads `rempart.cedarschema` and every `*.cedar` file of `dir` (in
    /// name order). Policies annotated `@id("…")` keep that id; the others
    /// are named `<file>#<n>`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Authorizer, PolicyError> {
        let dir = dir.as_ref();
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let schema_path = dir.join(SCHEMA_FILE);
        let schema_text = read(&schema_path)?;
        let entries = std::fs::read_dir(dir).map_err(|source| PolicyError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut paths = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| PolicyError::Read {
                path: dir.to_path_buf(),
                source,
            })?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "cedar") && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        if paths.is_empty() {
            return Err(PolicyError::NoPolicies {
                dir: dir.to_path_buf(),
            });
        }
        let mut files = Vec::with_capacity(paths.len());
        for path in &paths {
            files.push((path.display().to_string(), read(path)?));
        }
        let borrowed: Vec<(&str, &str)> = files
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        Authorizer::load_files(
            (&schema_path.display().to_string(), &schema_text),
            &borrowed,
        )
    }

    /// Parses the schema and the policy files, merges the policies and
    /// validates them in strict mode.
    pub fn load_files(
        schema: (&str, &str),
        policy_files: &[(&str, &str)],
    ) -> Result<Authorizer, PolicyError> {
        let (schema_file, schema_text) = schema;
        let schema = match Schema::from_cedarschema_str(schema_text) {
            Ok((schema, _warnings)) => schema,
            Err(e) => {
                return Err(PolicyError::Schema(Problems(error::problems_of(
                    &e,
                    schema_file,
                    schema_text,
                ))));
            }
        };
        let names = Names::new(&schema)?;

        let mut merged = cedar_policy::PolicySet::new();
        // Policy id → (file, text) for locating type errors.
        let mut origin: HashMap<String, usize> = HashMap::new();
        let mut syntax = Vec::new();
        let mut rejected = Vec::new();
        for (index, (file, text)) in policy_files.iter().enumerate() {
            let parsed = match cedar_policy::PolicySet::from_str(text) {
                Ok(p) => p,
                Err(e) => {
                    syntax.extend(error::problems_of(&e, file, text));
                    continue;
                }
            };
            if parsed.templates().next().is_some() {
                rejected.push(Problem {
                    file: file.to_string(),
                    location: None,
                    message: "policy templates (`?principal`, `?resource`) are not supported"
                        .into(),
                    policy: None,
                });
                continue;
            }
            for (n, policy) in parsed.policies().enumerate() {
                let id = policy
                    .annotation("id")
                    .map_or_else(|| format!("{file}#{n}"), str::to_string);
                if origin.contains_key(&id) {
                    rejected.push(Problem {
                        file: file.to_string(),
                        location: None,
                        message: format!("two policies have the id `{id}`"),
                        policy: Some(id),
                    });
                    continue;
                }
                let renamed = policy.new_id(PolicyId::new(&id));
                if let Err(e) = merged.add(renamed) {
                    rejected.push(error::problem_of(&e, file, text, Some(id)));
                    continue;
                }
                origin.insert(id, index);
            }
        }
        if !syntax.is_empty() {
            return Err(PolicyError::Syntax(Problems(syntax)));
        }
        if !rejected.is_empty() {
            return Err(PolicyError::Unsupported(Problems(rejected)));
        }

        let result = Validator::new(schema.clone()).validate(&merged, ValidationMode::Strict);
        if !result.validation_passed() {
            let problems = result
                .validation_errors()
                .map(|e| {
                    let id = e.policy_id().to_string();
                    let (file, text) = origin
                        .get(&id)
                        .and_then(|i| policy_files.get(*i))
                        .copied()
                        .unwrap_or(("<policies>", ""));
                    error::problem_of(e, file, text, Some(id))
                })
                .collect();
            return Err(PolicyError::Validation(Problems(problems)));
        }

        let blocker = memo::blocker(&merged);
        let by_action = policies_by_action(&schema, &merged, &names);
        Ok(Authorizer {
            schema,
            policies: merged,
            cedar: CedarAuthorizer::new(),
            names,
            by_action,
            memo: blocker.is_none().then(memo::Memo::new),
            blocker,
        })
    }

    /// Number of policies loaded.
    pub fn policy_count(&self) -> usize {
        self.policies.policies().count()
    }

    /// Most decisions remembered by one authorizer.
    pub const CACHE_CAPACITY: usize = memo::CAPACITY;

    /// Whether decisions are memoized: true unless a policy names an
    /// account, organisation or person (`principal == Account::"7"`,
    /// `principal in Organisation::"3"`, `resource == Person::"42"`…) or reads
    /// the account's `login`. Such a policy answers differently for two
    /// requests with the same role, state, kind, purpose, reason length and
    /// mandate records, which the cache key could not tell apart; with it,
    /// every call is evaluated by Cedar.
    pub fn memoizes(&self) -> bool {
        self.memo.is_some()
    }

    /// Why decisions are not memoized (the first policy found that observes
    /// an id or the login), for the start-up log; `None` when they are.
    pub fn memo_blocker(&self) -> Option<&str> {
        self.blocker.as_deref()
    }

    /// Decisions currently remembered (0 when not memoizing).
    pub fn cached_decisions(&self) -> usize {
        self.memo.as_ref().map_or(0, memo::Memo::len)
    }

    /// The memo and the request's key, when this request can be memoized.
    fn memo_key(
        &self,
        who: &Who,
        what: &What,
        query: memo::Query,
    ) -> Option<(&memo::Memo, memo::Hashed)> {
        let memo = self.memo.as_ref()?;
        let key = memo::Key::new(who, what, query)?;
        Some((memo, memo.hashed(key)))
    }

    /// Which field groups `who` may read of the person in `what`, and how
    /// the NIR may be shown.
    ///
    /// Memoized when [`Authorizer::memoizes`]: the answer is the one
    /// [`Authorizer::allowed_field_groups_uncached`] gives, remembered under
    /// the facts policies can observe. Errors are not remembered.
    pub fn allowed_field_groups(&self, who: &Who, what: &What) -> Result<Decision, PolicyError> {
        let Some((memo, key)) = self.memo_key(who, what, memo::Query::FieldGroups) else {
            return self.allowed_field_groups_uncached(who, what);
        };
        if let Some(memo::Answer::Groups(decision)) = memo.get(&key) {
            return Ok(decision);
        }
        let decision = self.allowed_field_groups_uncached(who, what)?;
        memo.insert(key, memo::Answer::Groups(decision.clone()));
        Ok(decision)
    }

    /// [`Authorizer::allowed_field_groups`] evaluated by Cedar, bypassing
    /// the cache (neither read nor filled): for benchmarks and tests.
    pub fn allowed_field_groups_uncached(
        &self,
        who: &Who,
        what: &What,
    ) -> Result<Decision, PolicyError> {
        let built = self.build(who, what, true)?;
        let mut groups = Vec::with_capacity(4);
        let mut nir = NirView::None;
        for group in FieldGroup::ALL {
            match group {
                FieldGroup::Identity => {
                    if self.eval(&built, Action::ReadIdentity)? {
                        groups.push(*group);
                    }
                }
                FieldGroup::Contact => {
                    if self.eval(&built, Action::ReadContact)? {
                        groups.push(*group);
                    }
                }
                FieldGroup::Status => {
                    if self.eval(&built, Action::ReadStatus)? {
                        groups.push(*group);
                    }
                }
                FieldGroup::Nir => {
                    for (action, view) in [
                        (Action::ReadNirClear, NirView::Clear),
                        (Action::ReadNirMasked, NirView::Masked),
                        (Action::ReadNirToken, NirView::Token),
                    ] {
                        if self.eval(&built, action)? {
                            nir = view;
                            break;
                        }
                    }
                    if nir != NirView::None {
                        groups.push(*group);
                    }
                }
            }
        }
        Ok(Decision { groups, nir })
    }

    /// Whether `who` may perform `action` (search, caseload, break-glass,
    /// mandate and account management, or one read action) for `what`.
    ///
    /// Memoized like [`Authorizer::allowed_field_groups`].
    pub fn is_allowed(&self, who: &Who, action: Action, what: &What) -> Result<bool, PolicyError> {
        let Some((memo, key)) = self.memo_key(who, what, memo::Query::Action(action)) else {
            return self.is_allowed_uncached(who, action, what);
        };
        if let Some(memo::Answer::Allowed(allowed)) = memo.get(&key) {
            return Ok(allowed);
        }
        let allowed = self.is_allowed_uncached(who, action, what)?;
        memo.insert(key, memo::Answer::Allowed(allowed));
        Ok(allowed)
    }

    /// [`Authorizer::is_allowed`] evaluated by Cedar, bypassing the cache.
    pub fn is_allowed_uncached(
        &self,
        who: &Who,
        action: Action,
        what: &What,
    ) -> Result<bool, PolicyError> {
        let built = self.build(who, what, action.on_person())?;
        self.eval(&built, action)
    }

    fn build(&self, who: &Who, what: &What, on_person: bool) -> Result<Built, PolicyError> {
        let n = &self.names;
        let org = EntityUid::from_type_name_and_id(
            n.organisation.clone(),
            EntityId::new(who.organisation_id.to_string()),
        );
        let account = EntityUid::from_type_name_and_id(
            n.account.clone(),
            EntityId::new(who.account_id.to_string()),
        );
        let resource = if on_person {
            EntityUid::from_type_name_and_id(
                n.person.clone(),
                EntityId::new(what.person_id.to_string()),
            )
        } else {
            n.registry.clone()
        };
        let string = |s: &str| RestrictedExpression::new_string(s.to_string());
        let request_error = |e: &dyn std::fmt::Display| PolicyError::Request(e.to_string());

        let org_entity = Entity::new(
            org.clone(),
            HashMap::from([("kind".to_string(), string(who.kind.as_str()))]),
            HashSet::new(),
        )
        .map_err(|e| request_error(&e))?;
        let account_entity = Entity::new(
            account.clone(),
            HashMap::from([
                ("login".to_string(), string(&who.login)),
                ("role".to_string(), string(who.role.as_str())),
                ("state".to_string(), string(who.state.as_str())),
                (
                    "organisation".to_string(),
                    RestrictedExpression::new_entity_uid(org.clone()),
                ),
            ]),
            HashSet::from([org]),
        )
        .map_err(|e| request_error(&e))?;
        let resource_entity = Entity::new_no_attrs(resource.clone(), HashSet::new());
        let entities = Entities::from_entities(
            [org_entity, account_entity, resource_entity],
            Some(&self.schema),
        )
        .map_err(|e| request_error(&e))?;

        let mut mandates = Vec::with_capacity(what.mandates.len());
        for m in &what.mandates {
            mandates.push(
                RestrictedExpression::new_record([
                    ("purpose".to_string(), string(m.purpose.as_str())),
                    ("holder".to_string(), string(holder(who, m).as_str())),
                    ("live".to_string(), RestrictedExpression::new_bool(m.live)),
                ])
                .map_err(|e| request_error(&e))?,
            );
        }
        let reason_len = i64::try_from(what.reason_len).unwrap_or(i64::MAX);
        let context = Context::from_pairs([
            ("purpose".to_string(), string(what.purpose.as_str())),
            (
                "mandates".to_string(),
                RestrictedExpression::new_set(mandates),
            ),
            (
                "reason_len".to_string(),
                RestrictedExpression::new_long(reason_len),
            ),
        ])
        .map_err(|e| request_error(&e))?;
        Ok(Built {
            checked: std::cell::Cell::new(false),
            principal: account,
            resource,
            context,
            entities,
        })
    }

    /// The policies to evaluate for `action`.
    fn policies_for(&self, action: Action) -> &cedar_policy::PolicySet {
        self.by_action
            .as_ref()
            .and_then(|sets| sets.get(action.index()))
            .unwrap_or(&self.policies)
    }

    fn eval(&self, built: &Built, action: Action) -> Result<bool, PolicyError> {
        self.eval_with(built, action, self.policies_for(action))
    }

    fn eval_with(
        &self,
        built: &Built,
        action: Action,
        policies: &cedar_policy::PolicySet,
    ) -> Result<bool, PolicyError> {
        let request = Request::new(
            built.principal.clone(),
            self.names.action(action)?.clone(),
            built.resource.clone(),
            built.context.clone(),
            // The context is the same for every action of one call: check it
            // against the schema on the first evaluation only.
            (!built.checked.replace(true)).then_some(&self.schema),
        )
        .map_err(|e| PolicyError::Request(e.to_string()))?;
        let response = self
            .cedar
            .is_authorized(&request, policies, &built.entities);
        let mut errors = response.diagnostics().errors().peekable();
        if errors.peek().is_some() {
            let list: Vec<String> = errors.map(|e| e.to_string()).collect();
            return Err(PolicyError::Evaluation(list.join("; ")));
        }
        Ok(response.decision() == CedarDecision::Allow)
    }
}

/// For each action of `names` (in `Action::ALL` order), the policies whose
/// action scope (`action`, `action == A`, `action in [A, G…]`) admits it,
/// through the schema's action groups.
///
/// Evaluating only those gives exactly Cedar's answer on the whole set: a
/// policy's condition is `principal-scope && action-scope && resource-scope
/// && when/unless`, a principal scope (`==`, `in`, `is`) cannot fail, so a
/// policy whose action scope excludes the action is false without error: it
/// neither permits, forbids nor reports anything. With the shipped set,
/// `allowed_field_groups` evaluates 27 policies instead of 72.
fn policies_by_action(
    schema: &Schema,
    policies: &cedar_policy::PolicySet,
    names: &Names,
) -> Option<Vec<cedar_policy::PolicySet>> {
    let hierarchy = schema.action_entities().ok()?;
    let mut sets = Vec::with_capacity(names.actions.len());
    for action in &names.actions {
        // The action and every group it is in, transitively.
        let mut within: HashSet<EntityUid> = HashSet::from([action.clone()]);
        let mut todo = vec![action.clone()];
        while let Some(uid) = todo.pop() {
            for parent in hierarchy.ancestors(&uid).into_iter().flatten() {
                if within.insert(parent.clone()) {
                    todo.push(parent.clone());
                }
            }
        }
        let mut set = cedar_policy::PolicySet::new();
        for policy in policies.policies() {
            let applies = match policy.action_constraint() {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(uid) => uid == *action,
                ActionConstraint::In(uids) => uids.iter().any(|uid| within.contains(uid)),
            };
            if applies {
                set.add(policy.clone()).ok()?;
            }
        }
        sets.push(set);
    }
    Some(sets)
}

/// The Cedar side of one request, built fresh for each call.
struct Built {
    /// Whether a request carrying this context was checked against the schema.
    checked: std::cell::Cell<bool>,
    principal: EntityUid,
    resource: EntityUid,
    context: Context,
    entities: Entities,
}

#[cfg(test)]
mod tests {
    //! Memoized answers, uncached answers and Cedar on the whole policy set
    //! (no slicing by action) agree on random requests.

    use std::sync::OnceLock;

    use proptest::prelude::*;
    use proptest::sample::select;

    use super::*;

    /// Policies that look at what the defaults leave aside: other holders,
    /// dead mandates, an exact reason length, registry-wide actions.
    const EXTRA: &str = r#"
@id("extra-other-account-dead-status")
permit (principal, action == Action::"read_status", resource)
when {
  context.mandates.contains({ purpose: context.purpose, holder: "other_account", live: false }) &&
  context.reason_len == 20
};

@id("extra-no-contact-if-trained-elsewhere")
forbid (principal, action in [Action::"read_contact", Action::"search"], resource)
when {
  context.mandates.contains({ purpose: "training", holder: "other_organisation", live: true })
};

@id("extra-managers-list-with-reason")
permit (principal, action == Action::"list_caseload", resource)
when { principal.role == "manager" && context.reason_len > 20 && context.mandates.isEmpty() };
"#;

    fn defaults() -> &'static Authorizer {
        static A: OnceLock<Option<Authorizer>> = OnceLock::new();
        A.get_or_init(|| match Authorizer::defaults() {
            Ok(a) => Some(a),
            Err(e) => panic!("{e}"),
        })
        .as_ref()
        .unwrap_or_else(|| panic!("defaults must load"))
    }

    fn extended() -> &'static Authorizer {
        static A: OnceLock<Option<Authorizer>> = OnceLock::new();
        A.get_or_init(|| {
            let policies = format!("{DEFAULT_POLICIES}\n{EXTRA}");
            match PolicySet::load(DEFAULT_SCHEMA, &policies) {
                Ok(a) => Some(a),
                Err(e) => panic!("{e}"),
            }
        })
        .as_ref()
        .unwrap_or_else(|| panic!("extended policies must load"))
    }

    /// Cedar on every policy, as before slicing by action.
    fn whole_set(a: &Authorizer, who: &Who, action: Action, what: &What) -> bool {
        let built = a.build(who, what, action.on_person()).unwrap();
        a.eval_with(&built, action, &a.policies).unwrap()
    }

    fn whole_set_groups(a: &Authorizer, who: &Who, what: &What) -> (Vec<FieldGroup>, NirView) {
        let mut groups = Vec::new();
        let mut nir = NirView::None;
        for group in FieldGroup::ALL {
            let allowed = match group {
                FieldGroup::Identity => whole_set(a, who, Action::ReadIdentity, what),
                FieldGroup::Contact => whole_set(a, who, Action::ReadContact, what),
                FieldGroup::Status => whole_set(a, who, Action::ReadStatus, what),
                FieldGroup::Nir => {
                    nir = [
                        (Action::ReadNirClear, NirView::Clear),
                        (Action::ReadNirMasked, NirView::Masked),
                        (Action::ReadNirToken, NirView::Token),
                    ]
                    .into_iter()
                    .find(|(action, _)| whole_set(a, who, *action, what))
                    .map_or(NirView::None, |(_, view)| view);
                    nir != NirView::None
                }
            };
            if allowed {
                groups.push(*group);
            }
        }
        (groups, nir)
    }

    fn who_strategy() -> impl Strategy<Value = Who> {
        (
            1..4i64,
            1..4i64,
            select(Role::ALL),
            select(AccountState::ALL),
            select(OrganisationKind::ALL),
            "[a-z]{1,8}",
        )
            .prop_map(
                |(account_id, organisation_id, role, state, kind, login)| Who {
                    account_id: AccountId::new(account_id),
                    login,
                    role,
                    state,
                    organisation_id: OrganisationId::new(organisation_id),
                    kind,
                },
            )
    }

    fn what_strategy() -> impl Strategy<Value = What> {
        let mandate = (
            1..4i64,
            proptest::option::of(1..4i64),
            select(Purpose::ALL),
            any::<bool>(),
        )
            .prop_map(|(organisation_id, account_id, purpose, live)| MandateFact {
                organisation_id: OrganisationId::new(organisation_id),
                account_id: account_id.map(AccountId::new),
                purpose,
                live,
            });
        (
            any::<i64>(),
            select(Purpose::ALL),
            proptest::collection::vec(mandate, 0..=4),
            prop_oneof![Just(0usize), 18..=22usize, 0..100usize],
        )
            .prop_map(|(person_id, purpose, mandates, reason_len)| What {
                person_id: PersonId::new(person_id),
                purpose,
                mandates,
                reason_len,
            })
    }

    fn check(a: &Authorizer, who: &Who, what: &What) -> Result<(), TestCaseError> {
        prop_assert!(a.memoizes());
        let uncached = a.allowed_field_groups_uncached(who, what).unwrap();
        // First call may fill the cache, second reads it (or an answer left
        // by an earlier request with other ids and the same facts).
        for _ in 0..2 {
            let memoized = a.allowed_field_groups(who, what).unwrap();
            prop_assert_eq!(&memoized, &uncached);
        }
        prop_assert_eq!(
            whole_set_groups(a, who, what),
            (uncached.groups.clone(), uncached.nir)
        );
        for action in Action::ALL {
            let uncached = a.is_allowed_uncached(who, *action, what).unwrap();
            for _ in 0..2 {
                prop_assert_eq!(a.is_allowed(who, *action, what).unwrap(), uncached);
            }
            prop_assert_eq!(whole_set(a, who, *action, what), uncached, "{:?}", action);
        }
        Ok(())
    }

    /// Requests that differ from `(who, what)` by one fact each (and two
    /// by ids only): asked after it, each would hit its cached answer if the
    /// key missed that fact.
    fn neighbours(who: &Who, what: &What) -> Vec<(Who, What)> {
        let mut out = Vec::new();
        let with_who = |f: &dyn Fn(&mut Who)| {
            let mut w = who.clone();
            f(&mut w);
            (w, what.clone())
        };
        let with_what = |f: &dyn Fn(&mut What)| {
            let mut q = what.clone();
            f(&mut q);
            (who.clone(), q)
        };
        for state in AccountState::ALL {
            out.push(with_who(&|w| w.state = *state));
        }
        for role in Role::ALL {
            out.push(with_who(&|w| w.role = *role));
        }
        for kind in OrganisationKind::ALL {
            out.push(with_who(&|w| w.kind = *kind));
        }
        out.push(with_who(&|w| {
            w.account_id = AccountId::new(w.account_id.get() + 10)
        }));
        out.push(with_who(&|w| w.login.push('x')));
        for purpose in Purpose::ALL {
            out.push(with_what(&|q| q.purpose = *purpose));
        }
        for reason_len in [
            what.reason_len.saturating_sub(1),
            what.reason_len + 1,
            19,
            20,
            21,
        ] {
            out.push(with_what(&|q| q.reason_len = reason_len));
        }
        out.push(with_what(&|q| {
            q.person_id = PersonId::new(q.person_id.get().wrapping_add(1))
        }));
        let next_account = AccountId::new(who.account_id.get() + 1);
        let next_organisation = OrganisationId::new(who.organisation_id.get() + 1);
        let holders = [
            (who.organisation_id, None),
            (who.organisation_id, Some(who.account_id)),
            (who.organisation_id, Some(next_account)),
            (next_organisation, None),
        ];
        for i in 0..what.mandates.len() {
            out.push(with_what(&|q| q.mandates[i].live = !q.mandates[i].live));
            out.push(with_what(&|q| {
                q.mandates.remove(i);
            }));
            for purpose in Purpose::ALL {
                out.push(with_what(&|q| q.mandates[i].purpose = *purpose));
            }
            for (organisation_id, account_id) in holders {
                out.push(with_what(&|q| {
                    q.mandates[i].organisation_id = organisation_id;
                    q.mandates[i].account_id = account_id;
                }));
            }
        }
        out.push(with_what(&|q| {
            q.mandates.push(MandateFact {
                organisation_id: who.organisation_id,
                account_id: None,
                purpose: q.purpose,
                live: true,
            })
        }));
        out
    }

    /// `check`, then every neighbour through the memo after it.
    fn check_with_neighbours(a: &Authorizer, who: &Who, what: &What) -> Result<(), TestCaseError> {
        check(a, who, what)?;
        for (w, q) in neighbours(who, what) {
            prop_assert_eq!(
                a.allowed_field_groups(&w, &q).unwrap(),
                a.allowed_field_groups_uncached(&w, &q).unwrap(),
                "{:?} {:?}",
                w,
                q
            );
            for action in [Action::Search, Action::BreakGlass, Action::ListCaseload] {
                prop_assert_eq!(
                    a.is_allowed(&w, action, &q).unwrap(),
                    a.is_allowed_uncached(&w, action, &q).unwrap(),
                    "{:?} {:?} {:?}",
                    action,
                    w,
                    q
                );
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn memoized_equals_uncached_next_to_a_cached_answer(who in who_strategy(), what in what_strategy()) {
            check_with_neighbours(extended(), &who, &what)?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(192))]

        #[test]
        fn memoized_equals_uncached_on_the_shipped_policies(who in who_strategy(), what in what_strategy()) {
            check(defaults(), &who, &what)?;
        }

        #[test]
        fn memoized_equals_uncached_on_policies_reading_more_facts(who in who_strategy(), what in what_strategy()) {
            check(extended(), &who, &what)?;
        }
    }

    /// Every combination of the facts, with few ids: most calls are hits
    /// on answers computed for other ids.
    #[test]
    fn memoized_equals_uncached_exhaustively_for_one_mandate() {
        let policies = format!("{DEFAULT_POLICIES}\n{EXTRA}");
        let a = &PolicySet::load(DEFAULT_SCHEMA, &policies).unwrap();
        let mut calls = 0;
        for kind in OrganisationKind::ALL {
            for role in Role::ALL {
                for state in [AccountState::Active, AccountState::Suspended] {
                    for purpose in Purpose::ALL {
                        for (org, account) in [(1, None), (1, Some(1)), (1, Some(2)), (2, None)] {
                            for live in [true, false] {
                                for account_id in [1, 5] {
                                    let who = Who {
                                        account_id: AccountId::new(account_id),
                                        login: format!("l{account_id}"),
                                        role: *role,
                                        state,
                                        organisation_id: OrganisationId::new(1),
                                        kind: *kind,
                                    };
                                    let what = What {
                                        person_id: PersonId::new(account_id * 7),
                                        purpose: *purpose,
                                        mandates: vec![MandateFact {
                                            organisation_id: OrganisationId::new(org),
                                            account_id: account.map(AccountId::new),
                                            purpose: Purpose::FollowUp,
                                            live,
                                        }],
                                        reason_len: 20,
                                    };
                                    assert_eq!(
                                        a.allowed_field_groups(&who, &what).unwrap(),
                                        a.allowed_field_groups_uncached(&who, &what).unwrap(),
                                        "{who:?} {what:?}"
                                    );
                                    calls += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        // Answers were shared between requests with other ids.
        assert!(
            a.cached_decisions() > 0 && a.cached_decisions() < calls,
            "{} {calls}",
            a.cached_decisions()
        );
    }

    #[test]
    fn evaluation_errors_are_never_remembered() {
        // Overflows (an evaluation error) as soon as reason_len > 0.
        let policies = format!(
            "{DEFAULT_POLICIES}\n@id(\"overflow\")\nforbid (principal, action == Action::\"search\", resource)\nwhen {{ context.reason_len + 9223372036854775807 < 0 }};\n"
        );
        let a = PolicySet::load(DEFAULT_SCHEMA, &policies).unwrap();
        assert!(a.memoizes());
        let who = Who {
            account_id: AccountId::new(1),
            login: "x".into(),
            role: Role::Agent,
            state: AccountState::Active,
            organisation_id: OrganisationId::new(1),
            kind: OrganisationKind::FranceTravail,
        };
        let mut what = What {
            person_id: PersonId::new(1),
            purpose: Purpose::FollowUp,
            mandates: vec![],
            reason_len: 1,
        };
        for _ in 0..3 {
            let err = a.is_allowed(&who, Action::Search, &what).unwrap_err();
            assert!(matches!(err, PolicyError::Evaluation(_)), "{err}");
            assert!(a.is_allowed_uncached(&who, Action::Search, &what).is_err());
        }
        assert_eq!(a.cached_decisions(), 0);
        what.reason_len = 0;
        assert!(a.is_allowed(&who, Action::Search, &what).unwrap());
        assert_eq!(a.cached_decisions(), 1);
        what.reason_len = 1;
        assert!(a.is_allowed(&who, Action::Search, &what).is_err());
    }

    #[test]
    fn policies_are_sliced_by_action_through_the_groups() {
        let a = defaults();
        let sets = a.by_action.as_ref().unwrap();
        assert_eq!(sets.len(), Action::ALL.len());
        let ids = |action: Action| -> Vec<String> {
            let mut ids: Vec<String> = a
                .policies_for(action)
                .policies()
                .map(|p| p.id().to_string())
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(
            ids(Action::ReadNirToken),
            [
                "guard-account-not-active",
                "guard-no-live-mandate",
                "processor-document-processing"
            ]
        );
        assert!(ids(Action::ReadNirClear).contains(&"guard-nir-clear-agency-only".to_string()));
        assert!(
            ids(Action::GrantMandate)
                .contains(&"guard-officer-actions-agency-officers-only".to_string())
        );
        assert!(ids(Action::BreakGlass).contains(&"guard-break-glass-needs-reason".to_string()));
        assert!(!ids(Action::Search).contains(&"guard-no-live-mandate".to_string()));
        let mut evaluated = 0;
        for action in Action::ALL {
            assert!(ids(*action).len() < a.policy_count(), "{action:?}");
            evaluated += ids(*action).len();
        }
        // 44 of 144 with the shipped set.
        assert!(evaluated * 3 < a.policy_count() * Action::ALL.len() * 2);
    }
}
