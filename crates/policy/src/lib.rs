//! The authorization stage of the consultation path.
//!
//! A Cedar schema and policies, shipped as files in `policies/` and embedded
//! as the defaults, are parsed and **validated in strict mode** once, when the
//! server starts: an invalid file stops start-up with an error naming the
//! file, line, column and reason. Per request, the entities (account,
//! organisation, person) and the context (purpose, mandate facts, length of
//! the written reason) are built fresh from the caller's data — nothing is
//! cached between requests — and evaluated against the parsed policy set.
//!
//! Reading a person is decided one field group at a time
//! ([`Authorizer::allowed_field_groups`]); the NIR is shown in the most
//! revealing way allowed: clear, masked, pseudonymous token, or not at all.
//! A policy that fails during evaluation denies the request (fail closed).

mod error;

pub mod bench;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{
    Authorizer as CedarAuthorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId,
    EntityTypeName, EntityUid, PolicyId, Request, RestrictedExpression, Schema, ValidationMode,
    Validator,
};
use rempart_domain::{AccountState, FieldGroup, OrganisationKind, Purpose, Role};

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
        }
    }

    /// Whether the action's resource is a person (otherwise: the registry).
    pub fn on_person(self) -> bool {
        !matches!(
            self,
            Action::Search | Action::ListCaseload | Action::ManageAccounts
        )
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How the NIR may be shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NirView {
    /// Not at all.
    None,
    /// A pseudonymous token (processors).
    Token,
    /// Masked (partners).
    Masked,
    /// In clear (France Travail).
    Clear,
}

/// The account making the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    pub account_id: i64,
    /// The pseudonymous login handle.
    pub login: String,
    pub role: Role,
    pub state: AccountState,
    pub organisation_id: i64,
    pub kind: OrganisationKind,
}

/// One mandate on the person, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MandateFact {
    pub organisation_id: i64,
    /// When set, only this account of the organisation holds the mandate.
    pub account_id: Option<i64>,
    pub purpose: Purpose,
    /// In force today (the caller decides with `Mandate::is_live_on`).
    pub live: bool,
}

/// What the account asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct What {
    /// The person (ignored by registry-wide actions).
    pub person_id: i64,
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

/// Where a mandate stands relative to the requesting account.
fn holder(who: &Who, m: &MandateFact) -> &'static str {
    if m.organisation_id != who.organisation_id {
        "other_organisation"
    } else {
        match m.account_id {
            None => "organisation",
            Some(a) if a == who.account_id => "account",
            Some(_) => "other_account",
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
#[derive(Debug)]
pub struct Authorizer {
    schema: Schema,
    policies: cedar_policy::PolicySet,
    cedar: CedarAuthorizer,
    names: Names,
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

        Ok(Authorizer {
            schema,
            policies: merged,
            cedar: CedarAuthorizer::new(),
            names,
        })
    }

    /// Number of policies loaded.
    pub fn policy_count(&self) -> usize {
        self.policies.policies().count()
    }

    /// Which field groups `who` may read of the person in `what`, and how
    /// the NIR may be shown.
    pub fn allowed_field_groups(&self, who: &Who, what: &What) -> Result<Decision, PolicyError> {
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
    pub fn is_allowed(&self, who: &Who, action: Action, what: &What) -> Result<bool, PolicyError> {
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
                    ("holder".to_string(), string(holder(who, m))),
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

    fn eval(&self, built: &Built, action: Action) -> Result<bool, PolicyError> {
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
            .is_authorized(&request, &self.policies, &built.entities);
        let mut errors = response.diagnostics().errors().peekable();
        if errors.peek().is_some() {
            let list: Vec<String> = errors.map(|e| e.to_string()).collect();
            return Err(PolicyError::Evaluation(list.join("; ")));
        }
        Ok(response.decision() == CedarDecision::Allow)
    }
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
