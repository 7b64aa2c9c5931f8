//! The vault: where a [`Person`] becomes sealed rows and back.
//!
//! It joins the key ring ([`rempart_crypto`]) and the store
//! ([`rempart_storage`]): it computes blind indexes, creates and unwraps
//! per-person data keys, seals each field group on its own, and opens only
//! the groups a caller asks for. It also runs the two key operations that
//! span the whole registry: KEK rotation and crypto-shredding.

mod account_secrets;
mod codec;
mod rotate;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use chrono::NaiveDate;
use rempart_crypto::reason::{ReasonSalt, SALT_LEN};
use rempart_crypto::{Binding, BlindKind, CryptoError, DataKey, KeyRing};
use rempart_domain::{
    Contact, FieldGroup, FtId, Identity, Nir, OrganisationId, Person, PersonId, Registration,
};
use rempart_storage::{
    Blind, ExistingPerson, PersonIndex, SealedPerson, StorageError, Store, StoredBreakGlassReason,
    StoredPerson,
};

pub use account_secrets::{AccountSecretError, AccountSecrets};
pub use rotate::{OtherRewrap, OtherSecrets, RotationProgress, RotationReport};

/// Where the key ring comes from; a file can be re-read when another
/// process (a rotation) added a KEK version.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A 0600 key file.
    File(PathBuf),
    /// The key file's JSON passed in an environment variable (cannot rotate).
    Env(String),
}

/// Name of the environment variable that may hold the whole key file.
pub const KEYS_ENV: &str = "REMPART_KEYS";

impl KeySource {
    /// Loads the ring.
    pub fn load(&self) -> Result<KeyRing, CryptoError> {
        match self {
            KeySource::File(p) => KeyRing::load(p),
            KeySource::Env(json) => KeyRing::from_json(json.as_bytes(), KEYS_ENV),
        }
    }
}

/// Vault failures. None carries a personal value.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("field group {group} of person {person} does not decode: {reason}")]
    Decode {
        person: PersonId,
        group: FieldGroup,
        reason: String,
    },
    #[error("break-glass reason {id} does not decode: {reason}")]
    Reason { id: i64, reason: &'static str },
    #[error("keys given through {KEYS_ENV} cannot be rotated: use a key file")]
    RotationNeedsFile,
}

/// A person's data, limited to the groups asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonView {
    pub id: PersonId,
    pub identity: Option<Identity>,
    pub contact: Option<Contact>,
    pub nir: Option<Nir>,
    pub status: Option<Registration>,
}

impl PersonView {
    /// The groups present.
    pub fn groups(&self) -> Vec<FieldGroup> {
        let mut g = Vec::new();
        if self.identity.is_some() {
            g.push(FieldGroup::Identity);
        }
        if self.contact.is_some() {
            g.push(FieldGroup::Contact);
        }
        if self.nir.is_some() {
            g.push(FieldGroup::Nir);
        }
        if self.status.is_some() {
            g.push(FieldGroup::Status);
        }
        g
    }
}

/// Outcome of reading a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    Found(Box<PersonView>),
    /// The person existed and was crypto-shredded: nothing can be read.
    Shredded,
    Missing,
}

/// What sealing decided for one incoming person.
#[derive(Debug)]
pub enum Sealed {
    /// A new person, to insert.
    Insert(SealedPerson),
    /// A known person whose record changed: replace, if the stored
    /// fingerprint is still the given one.
    Update(SealedPerson, Blind),
    /// Same record as stored: nothing to write.
    Unchanged,
}

/// Seals persons with the key ring of the moment it was made
/// ([`Vault::sealer`]): what an import hands to its worker threads, so the
/// import itself never holds a key. Cheap to clone; CPU only.
#[derive(Clone)]
pub struct Sealer(Arc<KeyRing>);

impl Sealer {
    /// [`Vault::seal`] with this sealer's keys.
    pub fn seal(
        &self,
        person: &Person,
        existing: Option<&ExistingPerson>,
        new_id: PersonId,
    ) -> Result<Sealed, VaultError> {
        Vault::seal(&self.0, person, existing, new_id)
    }
}

/// A break-glass reason sealed under its person's data key, and the
/// digest the ledger keeps of it (see [`rempart_crypto::reason`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedReason {
    /// The version of the person's data key it is sealed under.
    pub dek_version: u32,
    /// Salt and text, sealed.
    pub sealed: Vec<u8>,
    /// `HMAC-SHA-256(salt, tag ‖ text)`: what the ledger keeps.
    pub digest: [u8; 32],
}

/// A break-glass reason opened again (auditors, the person's own view).
#[derive(Clone, PartialEq, Eq)]
pub struct OpenedReason {
    pub text: String,
    /// Its digest, recomputed: compare with the ledger's.
    pub digest: [u8; 32],
}

impl std::fmt::Debug for OpenedReason {
    // The text may hold personal data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedReason")
            .field("text", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The associated-data code of a sealed break-glass reason: apart from the
/// field groups' (1 to 4), so no blob opens as the other.
const REASON_CODE: u8 = 0x42;
/// Format byte of a sealed reason's plaintext: salt, then UTF-8 text.
const REASON_FORMAT: u8 = 1;

/// Keys + store.
#[derive(Clone)]
pub struct Vault {
    keys: Arc<RwLock<Arc<KeyRing>>>,
    source: KeySource,
    store: Store,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("backend", &self.store.backend())
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Loads the keys and wraps the store.
    pub fn new(source: KeySource, store: Store) -> Result<Self, VaultError> {
        let ring = source.load()?;
        Ok(Vault {
            keys: Arc::new(RwLock::new(Arc::new(ring))),
            source,
            store,
        })
    }

    /// The store underneath.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The key source.
    pub fn key_source(&self) -> &KeySource {
        &self.source
    }

    /// The current key ring (cheap clone of an `Arc`).
    pub fn keys(&self) -> Arc<KeyRing> {
        self.keys
            .read()
            .map(|k| k.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn set_keys(&self, ring: KeyRing) {
        let mut guard = self.keys.write().unwrap_or_else(|p| p.into_inner());
        *guard = Arc::new(ring);
    }

    /// Re-reads the key source; used when a row names a KEK version this
    /// process has not seen (another process is rotating).
    pub fn reload_keys(&self) -> Result<(), VaultError> {
        let ring = self.source.load()?;
        self.set_keys(ring);
        Ok(())
    }

    /// Blind index of a France Travail identifier.
    pub fn blind_ft(&self, id: &FtId) -> Blind {
        self.keys()
            .indexer()
            .compute(BlindKind::FtId, &[id.as_str().as_bytes()])
    }

    /// Blind index of a NIR.
    pub fn blind_nir(&self, nir: &Nir) -> Blind {
        self.keys()
            .indexer()
            .compute(BlindKind::Nir, &[nir.as_bytes()])
    }

    /// Blind index of (nom, prénom, date de naissance), after normalisation.
    pub fn blind_name_birth(&self, nom: &str, prenom: &str, born: NaiveDate) -> Blind {
        let keys = self.keys();
        name_birth(&keys, nom, prenom, born)
    }

    /// A [`Sealer`] with the current key ring, for an import's worker
    /// threads.
    pub fn sealer(&self) -> Sealer {
        Sealer(self.keys())
    }

    /// Seals one person. `existing` is what the store holds under the same
    /// France Travail id (from [`rempart_storage::RegistryStore::lookup_persons`]);
    /// `new_id` is used only for a new person. CPU only: safe to call from
    /// many threads at once.
    pub fn seal(
        keys: &KeyRing,
        person: &Person,
        existing: Option<&ExistingPerson>,
        new_id: PersonId,
    ) -> Result<Sealed, VaultError> {
        let encoded = codec::encode_groups(person)?;
        let fingerprint = keys.indexer().compute(
            BlindKind::Fingerprint,
            &[&encoded[0], &encoded[1], &encoded[2], &encoded[3]],
        );
        let (data_key, kek_version, wrapped_dek, id) = match existing {
            Some(e) if e.fingerprint == fingerprint => return Ok(Sealed::Unchanged),
            Some(e) => {
                let binding = Binding {
                    person: e.id.get(),
                    dek_version: e.dek_version,
                };
                let dk = keys
                    .kek(e.kek_version)?
                    .unwrap_data_key(binding, &e.wrapped_dek)?;
                (dk, e.kek_version, e.wrapped_dek.clone(), e.id)
            }
            None => {
                let binding = Binding {
                    person: new_id.get(),
                    dek_version: 1,
                };
                let kek = keys.current_kek();
                let (dk, wrapped) = kek.new_data_key(binding)?;
                (dk, kek.version, wrapped, new_id)
            }
        };
        let [identity, contact, nir, status] = seal_groups(&data_key, &encoded)?;
        let sealed = SealedPerson {
            id,
            ft_blind: keys.indexer().compute(
                BlindKind::FtId,
                &[person.identity.ft_id.as_str().as_bytes()],
            ),
            nir_blind: keys
                .indexer()
                .compute(BlindKind::Nir, &[person.nir.as_bytes()]),
            name_blind: name_birth(
                keys,
                person.identity.nom.as_str(),
                person.identity.prenom.as_str(),
                person.identity.date_naissance,
            ),
            fingerprint,
            kek_version,
            dek_version: data_key.binding().dek_version,
            wrapped_dek,
            identity,
            contact,
            nir,
            status,
            retain_until: person.status.retain_until(),
        };
        Ok(match existing {
            Some(e) => Sealed::Update(sealed, e.fingerprint),
            None => Sealed::Insert(sealed),
        })
    }

    /// Reads a person, opening only `groups`.
    pub async fn read(&self, id: PersonId, groups: &[FieldGroup]) -> Result<Read, VaultError> {
        match self.store.read_person(id, groups).await? {
            Some(stored) => self.open(&stored, groups),
            None => Ok(Read::Missing),
        }
    }

    /// Opens the groups of `stored` that are in `groups`, and only those:
    /// the caller may have fetched more sealed groups than it may show.
    pub fn open(&self, stored: &StoredPerson, groups: &[FieldGroup]) -> Result<Read, VaultError> {
        let id = stored.id;
        let Some(wrapped) = stored.wrapped_dek.as_deref() else {
            return Ok(Read::Shredded);
        };
        let binding = Binding {
            person: id.get(),
            dek_version: stored.dek_version,
        };
        let mut keys = self.keys();
        if keys.kek(stored.kek_version).is_err() {
            // Rotated by another process since we loaded the ring.
            self.reload_keys()?;
            keys = self.keys();
        }
        let dk = keys
            .kek(stored.kek_version)?
            .unwrap_data_key(binding, wrapped)?;
        let mut view = PersonView {
            id,
            identity: None,
            contact: None,
            nir: None,
            status: None,
        };
        for (group, blob) in stored.groups.iter().filter(|(g, _)| groups.contains(g)) {
            let plain = dk.open(codec::group_code(*group), blob)?;
            codec::decode_into(&mut view, *group, &plain)?;
        }
        Ok(Read::Found(Box::new(view)))
    }

    /// The guard's digest of a client address's network (IPv4 /24, IPv6
    /// /48): keyed with the blind-index key, so the guard's store cannot be
    /// turned back into addresses, and the same on every instance.
    pub fn network_digest(&self, address: std::net::IpAddr) -> Blind {
        let mut prefix = [0u8; 6];
        let len = match address.to_canonical() {
            std::net::IpAddr::V4(v4) => {
                prefix[..3].copy_from_slice(&v4.octets()[..3]);
                3
            }
            std::net::IpAddr::V6(v6) => {
                prefix.copy_from_slice(&v6.octets()[..6]);
                6
            }
        };
        self.keys()
            .indexer()
            .compute(BlindKind::GuardNetwork, &[&prefix[..len]])
    }

    /// The login throttle's key for a source address, given as its
    /// counting key's bytes (`rempart_auth::lockout::AddressKey::bytes`):
    /// the same on every instance, and no address in the store.
    pub fn login_address_key(&self, address_key: &[u8]) -> Blind {
        self.keys()
            .indexer()
            .compute(BlindKind::LoginAddress, &[address_key])
    }

    /// The login throttle's key for a login that names no account, given
    /// folded (`rempart_auth::lockout::fold_login`).
    pub fn unknown_login_key(&self, folded_login: &str) -> Blind {
        self.keys()
            .indexer()
            .compute(BlindKind::UnknownLogin, &[folded_login.as_bytes()])
    }

    /// The pseudonymous token standing for `nir` in the files of the
    /// processor organisation `organisation_id`: stable for that processor,
    /// unlinkable across processors and to the stored blind index.
    pub fn nir_token(&self, organisation_id: OrganisationId, nir: &Nir) -> String {
        let org = organisation_id.get().to_be_bytes();
        let b = self
            .keys()
            .indexer()
            .compute(BlindKind::ProcessorToken, &[&org, nir.as_bytes()]);
        let mut out = String::with_capacity(4 + 2 * b.len());
        out.push_str("tok_");
        for byte in b {
            use std::fmt::Write;
            let _ = write!(out, "{byte:02x}");
        }
        out
    }

    /// Ids of persons with this NIR (normally one).
    pub async fn find_by_nir(&self, nir: &Nir) -> Result<Vec<PersonId>, VaultError> {
        Ok(self
            .store
            .find_persons(PersonIndex::Nir, self.blind_nir(nir))
            .await?)
    }

    /// Ids of persons with exactly this name and birth date (after normalisation).
    pub async fn find_by_name_birth(
        &self,
        nom: &str,
        prenom: &str,
        born: NaiveDate,
    ) -> Result<Vec<PersonId>, VaultError> {
        Ok(self
            .store
            .find_persons(
                PersonIndex::NameBirth,
                self.blind_name_birth(nom, prenom, born),
            )
            .await?)
    }

    /// Id of the person with this France Travail identifier.
    pub async fn find_by_ft(&self, id: &FtId) -> Result<Option<PersonId>, VaultError> {
        Ok(self
            .store
            .find_persons(PersonIndex::FtId, self.blind_ft(id))
            .await?
            .first()
            .copied())
    }

    /// The data key of a stored, unshredded person, or `None`.
    async fn data_key(&self, id: PersonId) -> Result<Option<DataKey>, VaultError> {
        let Some(stored) = self.store.read_person(id, &[]).await? else {
            return Ok(None);
        };
        let Some(wrapped) = stored.wrapped_dek.as_deref() else {
            return Ok(None);
        };
        let binding = Binding {
            person: id.get(),
            dek_version: stored.dek_version,
        };
        let mut keys = self.keys();
        if keys.kek(stored.kek_version).is_err() {
            self.reload_keys()?;
            keys = self.keys();
        }
        Ok(Some(
            keys.kek(stored.kek_version)?
                .unwrap_data_key(binding, wrapped)?,
        ))
    }

    /// Seals a break-glass reason under the person's data key, with a
    /// fresh salt, so that shredding the person erases it; `None` if the
    /// person is missing or shredded.
    pub async fn seal_reason(
        &self,
        person_id: PersonId,
        text: &str,
    ) -> Result<Option<SealedReason>, VaultError> {
        let Some(dk) = self.data_key(person_id).await? else {
            return Ok(None);
        };
        let salt = ReasonSalt::random();
        let mut plain = Vec::with_capacity(1 + SALT_LEN + text.len());
        plain.push(REASON_FORMAT);
        plain.extend_from_slice(salt.as_bytes());
        plain.extend_from_slice(text.as_bytes());
        let mut sealed = Vec::new();
        dk.seal(REASON_CODE, &plain, &mut sealed)?;
        Ok(Some(SealedReason {
            dek_version: dk.binding().dek_version,
            sealed,
            digest: salt.digest(text),
        }))
    }

    /// Opens a stored break-glass reason; `None` once the person is
    /// shredded (or the key it was sealed under is no longer theirs).
    pub async fn open_reason(
        &self,
        stored: &StoredBreakGlassReason,
    ) -> Result<Option<OpenedReason>, VaultError> {
        let Some(dk) = self.data_key(stored.person_id).await? else {
            return Ok(None);
        };
        if dk.binding().dek_version != stored.dek_version {
            return Ok(None);
        }
        let plain = dk.open(REASON_CODE, &stored.sealed)?;
        let bad = |reason: &'static str| VaultError::Reason {
            id: stored.id,
            reason,
        };
        let (format, rest) = plain.split_first().ok_or_else(|| bad("empty"))?;
        if *format != REASON_FORMAT || rest.len() < SALT_LEN {
            return Err(bad("unknown format"));
        }
        let (salt, text) = rest.split_at(SALT_LEN);
        let salt: [u8; SALT_LEN] = salt.try_into().map_err(|_| bad("short salt"))?;
        let text = std::str::from_utf8(text).map_err(|_| bad("not UTF-8"))?;
        Ok(Some(OpenedReason {
            text: text.to_owned(),
            digest: ReasonSalt::from_bytes(salt).digest(text),
        }))
    }

    /// Crypto-shreds one person: the data key and the blind indexes are
    /// destroyed; the sealed groups stay and can never be opened again.
    pub async fn shred(&self, id: PersonId) -> Result<bool, VaultError> {
        Ok(self.store.shred_person(id).await?)
    }
}

fn name_birth(keys: &KeyRing, nom: &str, prenom: &str, born: NaiveDate) -> Blind {
    let nom = rempart_domain::normalise_name(nom);
    let prenom = rempart_domain::normalise_name(prenom);
    let date = rempart_domain::iso_date(born);
    keys.indexer().compute(
        BlindKind::NameBirth,
        &[nom.as_bytes(), prenom.as_bytes(), &date],
    )
}

fn seal_groups(dk: &DataKey, encoded: &[Vec<u8>; 4]) -> Result<[Vec<u8>; 4], VaultError> {
    let mut out: [Vec<u8>; 4] = Default::default();
    for (i, g) in FieldGroup::ALL.iter().enumerate() {
        dk.seal(codec::group_code(*g), &encoded[i], &mut out[i])?;
    }
    Ok(out)
}
