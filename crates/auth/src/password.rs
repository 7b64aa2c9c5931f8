//! Passwords: the policy a new password must meet, and argon2id hashing.
//!
//! A password is only ever the fallback factor (passkeys come first) and is
//! always followed by a TOTP code, but it is still the first thing an
//! attacker tries, so it is held to the CNIL recommendation on passwords
//! (délibération n° 2022-100 du 21 juillet 2022) and stored with argon2id.
//!
//! # The rule ([`PasswordPolicy`])
//!
//! At least **12 characters** drawn from at least **3 of the 4 classes**
//! lower-case letter, upper-case letter, digit, other ("special": any
//! character that is neither a cased letter nor a digit, spaces included).
//! At most **128 characters**: argon2id's cost hardly depends on the length,
//! but a bound keeps every request's work and memory small and known.
//!
//! Why this rule: the CNIL asks for 80 bits of entropy when the password is
//! the only protection (its example: 12 characters of all 4 classes) and
//! 50 bits when access to the account is also restricted (delays after
//! failures, a bounded number of attempts; its example: 8 characters of 3
//! classes). Here the
//! password is never alone: a second factor is always required and
//! [`crate::lockout`] throttles and locks. 12 characters of 3 classes
//! (≈ 71 bits by the CNIL's own formula over 62 symbols) is far above the
//! 50-bit case and close to the 80-bit one, without the "all 4 classes"
//! rule that mostly makes people append `!`.
//!
//! On top of the composition rule, a password is refused when it is a
//! common password, or contains the login or a part of the person's name;
//! see [`PasswordPolicy::check`] for how these are compared.
//!
//! # Hashing ([`PasswordHasher`])
//!
//! argon2id, version 0x13, 16-byte random salt, 32-byte output, stored as a
//! PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`) so the parameters
//! travel with each hash and can be raised later ([`PasswordHasher::needs_rehash`]).
//! The parameters are justified on [`HashParams::RECOMMENDED`].

use std::collections::HashSet;
use std::fmt;
use std::hint::black_box;
use std::sync::OnceLock;

use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, PasswordVerifier as _, Version};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;
use zeroize::Zeroizing;

/// Fewest characters a new password may have (CNIL 2022-100, see the module doc).
pub const MIN_CHARS: usize = 12;

/// Most characters a password may have, new or presented at login.
pub const MAX_CHARS: usize = 128;

/// Longest input read before normalisation: [`MAX_CHARS`] characters of at
/// most 4 UTF-8 bytes each. Longer input is refused before any work.
const MAX_INPUT_BYTES: usize = MAX_CHARS * 4;

/// Name parts shorter than this are not looked for in a password: two
/// letters ("Li", "Ba") occur in too many good passwords to refuse them.
const MIN_NAME_PART_CHARS: usize = 3;

/// Name particles that are not really names, so not looked for.
const NAME_PARTICLES: [&str; 9] = [
    "des", "les", "del", "der", "den", "van", "von", "dos", "das",
];

/// The common-password list, embedded at build time.
///
/// Source and licence (also in the file's header): the 20,000 common
/// passwords shipped by Django 5.2.19 (PyPI package `django`, file
/// `django/contrib/auth/common-passwords.txt.gz`, compiled by Royce
/// Williams), used under Django's BSD 3-Clause licence whose text the
/// header reproduces; plus a short supplement of French words and service
/// names written for Rempart. 19,727 entries, NFKC-normalised, lower-case,
/// deduplicated, sorted.
const COMMON_PASSWORDS_FILE: &str = include_str!("../data/common-passwords.txt");

/// Why a password cannot be accepted. Never carries the password itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// Nothing was typed.
    #[error("password: is required")]
    Empty,
    /// Longer than [`MAX_CHARS`] characters.
    #[error("password: is longer than {max_chars} characters")]
    TooLong {
        /// The limit, [`MAX_CHARS`].
        max_chars: usize,
    },
    /// A new password that breaks the policy; every reason found is listed.
    #[error("password: {0}")]
    Weak(Weaknesses),
}

/// One reason a new password is refused by [`PasswordPolicy::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Weakness {
    /// Fewer characters than the policy's minimum.
    TooShort {
        /// The minimum.
        min_chars: usize,
    },
    /// Characters from too few of the four classes.
    TooFewClasses {
        /// How many classes are required.
        required: u8,
    },
    /// A common password, possibly with digits or symbols around it.
    Common,
    /// Contains the account's login.
    ContainsLogin,
    /// Contains (a part of) the person's name.
    ContainsName,
}

impl fmt::Display for Weakness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Weakness::TooShort { min_chars } => {
                write!(f, "has fewer than {min_chars} characters")
            }
            Weakness::TooFewClasses { required } => write!(
                f,
                "uses fewer than {required} of the classes lower-case, upper-case, digit, special"
            ),
            Weakness::Common => f.write_str("is a common password"),
            Weakness::ContainsLogin => f.write_str("contains the login"),
            Weakness::ContainsName => f.write_str("contains the person's name"),
        }
    }
}

impl Weakness {
    /// The reason as shown to the person choosing the password, in French.
    pub fn message_fr(&self) -> String {
        match self {
            Weakness::TooShort { min_chars } => {
                format!("Le mot de passe doit contenir au moins {min_chars} caractères.")
            }
            Weakness::TooFewClasses { required } => format!(
                "Le mot de passe doit mélanger au moins {required} types de caractères parmi : \
                 minuscules, majuscules, chiffres, caractères spéciaux."
            ),
            Weakness::Common => {
                "Ce mot de passe est trop courant : choisissez-en un autre.".to_owned()
            }
            Weakness::ContainsLogin => {
                "Le mot de passe ne doit pas contenir votre identifiant.".to_owned()
            }
            Weakness::ContainsName => {
                "Le mot de passe ne doit pas contenir votre nom ou votre prénom.".to_owned()
            }
        }
    }
}

/// Every weakness found in one password, in the order they were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weaknesses(Vec<Weakness>);

impl Weaknesses {
    /// The weaknesses, never empty.
    pub fn as_slice(&self) -> &[Weakness] {
        &self.0
    }
}

impl fmt::Display for Weaknesses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, weakness) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            weakness.fmt(f)?;
        }
        Ok(())
    }
}

/// A password as typed, NFKC-normalised, wiped from memory when dropped.
///
/// Normalisation (as NIST SP 800-63B asks) makes the same password typed on
/// two systems (composed or decomposed accents, full-width digits) hash the
/// same. The buffers are zeroized on a best-effort basis: the caller's
/// `String` is wiped here, but copies made before (request buffers) are not
/// ours to clear.
pub struct Password(Zeroizing<String>);

impl Password {
    /// Takes a typed password. Refuses only empty and over-long input: the
    /// policy applies to new passwords ([`PasswordPolicy::check`]), not to
    /// the ones presented at login.
    pub fn new(input: String) -> Result<Self, PasswordError> {
        let input = Zeroizing::new(input);
        if input.is_empty() {
            return Err(PasswordError::Empty);
        }
        if input.len() > MAX_INPUT_BYTES {
            return Err(PasswordError::TooLong {
                max_chars: MAX_CHARS,
            });
        }
        // Reserved up front so that growing the string rarely leaves an
        // unwiped copy behind.
        let mut normalised = Zeroizing::new(String::with_capacity(input.len() * 3));
        normalised.extend(input.nfkc());
        if normalised.chars().count() > MAX_CHARS {
            return Err(PasswordError::TooLong {
                max_chars: MAX_CHARS,
            });
        }
        Ok(Password(normalised))
    }

    /// The normalised password, for hashing.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Length in characters (Unicode scalar values) after normalisation.
    pub fn char_count(&self) -> usize {
        self.0.chars().count()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// What is known about the person choosing a password, to refuse passwords
/// built from it.
#[derive(Debug, Clone, Copy, Default)]
pub struct PersonalContext<'a> {
    /// The account's login.
    pub login: Option<&'a str>,
    /// Name fields (first names, family name, usage name), as stored.
    pub names: &'a [&'a str],
}

/// Errors in a [`PasswordPolicy`] configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The minimum length is below the CNIL-derived floor or above the maximum.
    #[error("min_chars: must be between {MIN_CHARS} and {MAX_CHARS}, found {found}")]
    MinChars {
        /// The value given.
        found: usize,
    },
    /// The class count is not 3 or 4.
    #[error("required_classes: must be 3 or 4, found {found}")]
    RequiredClasses {
        /// The value given.
        found: u8,
    },
}

/// The rule a new password must meet (see the module doc for the reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordPolicy {
    min_chars: usize,
    required_classes: u8,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self::CNIL
    }
}

impl PasswordPolicy {
    /// 12 characters, 3 of 4 classes.
    pub const CNIL: PasswordPolicy = PasswordPolicy {
        min_chars: MIN_CHARS,
        required_classes: 3,
    };

    /// A stricter policy. It can only be stricter than [`Self::CNIL`].
    pub fn new(min_chars: usize, required_classes: u8) -> Result<Self, PolicyError> {
        if !(MIN_CHARS..=MAX_CHARS).contains(&min_chars) {
            return Err(PolicyError::MinChars { found: min_chars });
        }
        if !(3..=4).contains(&required_classes) {
            return Err(PolicyError::RequiredClasses {
                found: required_classes,
            });
        }
        Ok(PasswordPolicy {
            min_chars,
            required_classes,
        })
    }

    /// Fewest characters.
    pub fn min_chars(&self) -> usize {
        self.min_chars
    }

    /// Fewest character classes.
    pub fn required_classes(&self) -> u8 {
        self.required_classes
    }

    /// Checks a new password; on refusal, lists every weakness found.
    ///
    /// * Length counts characters after NFKC normalisation.
    /// * Classes: lower-case and upper-case letters (Unicode case, so `é`
    ///   is lower-case), digits (Unicode numeric), and "special" for
    ///   everything else, spaces and uncased letters included.
    /// * Common: the password is lower-cased, then looked up in the list
    ///   both as a whole and with every digit and symbol at its start and
    ///   end stripped. Composition rules push people to decorate a common
    ///   word (`Marseille2024!`, `!Azerty123`): the decoration adds length
    ///   and classes but almost no guessing work, since cracking tools try
    ///   exactly those suffixes and prefixes first.
    /// * Login and name: compared without case and accents; the login as a
    ///   whole, the names split into parts at anything not a letter or
    ///   digit, each part of at least 3 characters (particles such as
    ///   "des" or "van" aside).
    pub fn check(
        &self,
        password: &Password,
        personal: &PersonalContext<'_>,
    ) -> Result<(), PasswordError> {
        let mut found = Vec::new();
        if password.char_count() < self.min_chars {
            found.push(Weakness::TooShort {
                min_chars: self.min_chars,
            });
        }
        if class_count(password.expose()) < self.required_classes {
            found.push(Weakness::TooFewClasses {
                required: self.required_classes,
            });
        }
        if is_common(password.expose()) {
            found.push(Weakness::Common);
        }
        let folded = fold(password.expose());
        if let Some(login) = personal.login {
            let login = fold(login);
            if login.chars().count() >= MIN_NAME_PART_CHARS && folded.contains(login.as_str()) {
                found.push(Weakness::ContainsLogin);
            }
        }
        if personal
            .names
            .iter()
            .any(|name| contains_name_part(&folded, name))
        {
            found.push(Weakness::ContainsName);
        }
        if found.is_empty() {
            Ok(())
        } else {
            Err(PasswordError::Weak(Weaknesses(found)))
        }
    }
}

/// How many of the four classes occur in `s`.
fn class_count(s: &str) -> u8 {
    let (mut lower, mut upper, mut digit, mut special) = (false, false, false, false);
    for c in s.chars() {
        if c.is_lowercase() {
            lower = true;
        } else if c.is_uppercase() {
            upper = true;
        } else if c.is_numeric() {
            digit = true;
        } else {
            special = true;
        }
    }
    [lower, upper, digit, special]
        .into_iter()
        .map(u8::from)
        .sum()
}

/// Lower-case, accents removed: for comparing with logins and names.
fn fold(s: &str) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(s.len()));
    for c in s.nfkd().filter(|c| !is_combining_mark(*c)) {
        out.extend(c.to_lowercase());
    }
    out
}

fn contains_name_part(folded_password: &str, name: &str) -> bool {
    let name = fold(name);
    name.split(|c: char| !c.is_alphanumeric())
        .filter(|part| part.chars().count() >= MIN_NAME_PART_CHARS)
        .filter(|part| !NAME_PARTICLES.contains(part))
        .any(|part| folded_password.contains(part))
}

/// The embedded list, parsed once. A `HashSet` rather than a sorted slice:
/// the file is read once per process and every lookup is then O(1).
fn common_passwords() -> &'static HashSet<&'static str> {
    static LIST: OnceLock<HashSet<&'static str>> = OnceLock::new();
    LIST.get_or_init(|| common_password_entries().collect())
}

/// Entries of the embedded file: the lines after the header, which ends at
/// the first empty line.
fn common_password_entries() -> impl Iterator<Item = &'static str> {
    let body = COMMON_PASSWORDS_FILE
        .split_once("\n\n")
        .map_or("", |(_header, body)| body);
    body.lines().filter(|line| !line.is_empty())
}

/// Whether `password` is a common password, whole or once the digits and
/// symbols around it are stripped (see [`PasswordPolicy::check`]).
pub fn is_common(password: &str) -> bool {
    let list = common_passwords();
    let lower = Zeroizing::new(password.to_lowercase());
    if list.contains(lower.as_str()) {
        return true;
    }
    let core = lower.trim_matches(|c: char| !c.is_alphabetic());
    !core.is_empty() && list.contains(core)
}

/// Errors while hashing. None of them carries the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    /// The parameters are outside what argon2 or this module accepts.
    #[error("argon2 parameters: {0}")]
    Params(&'static str),
    /// The operating system's random source failed (salt or dummy).
    #[error("salt: the operating system's random source failed")]
    Random,
    /// argon2 itself failed.
    #[error("argon2: hashing failed")]
    Argon2,
}

/// Errors reading a stored hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashFormatError {
    /// Not a PHC string.
    #[error("password_hash: is not a PHC string")]
    NotPhc,
    /// A PHC string for another algorithm than argon2id.
    #[error("password_hash: algorithm must be argon2id")]
    Algorithm,
    /// No salt or no hash value.
    #[error("password_hash: salt or hash value missing")]
    Incomplete,
    /// Parameters unreadable, or so large that verifying would exhaust the
    /// server (a corrupted or planted row must not be a denial of service).
    #[error("password_hash: parameters out of range (m ≤ {max_m} KiB, t ≤ {max_t}, p ≤ {max_p})", max_m = HashParams::MAX_M_COST_KIB, max_t = HashParams::MAX_T_COST, max_p = HashParams::MAX_P_COST)]
    Params,
}

/// argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Passes over the memory.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl HashParams {
    /// m = 19 MiB, t = 2, p = 1: the first of OWASP's argon2id settings
    /// (Password Storage Cheat Sheet), also the `argon2` crate's default.
    ///
    /// Why not RFC 9106's second recommended option (m = 64 MiB, t = 3,
    /// p = 4): this server has 2 cores, and without the crate's `parallel`
    /// feature the 4 lanes run one after the other. Measured on a busy
    /// 2-core machine (release build): 64 MiB/t=3/p=4 took a median
    /// 364 ms to hash and 384 ms to verify, against 38 ms and 42 ms for
    /// this setting: ten times the CPU and 3.4 times the memory per login,
    /// with each concurrent login holding its memory, which makes a burst
    /// of logins an easy denial of service.
    ///
    /// A password here is never alone (second factor always, per-account
    /// and per-address lockout), so the hash only has to make offline
    /// cracking of a stolen table expensive: every guess needs 19 MiB of
    /// memory filled twice, which caps how many guesses a GPU can run at
    /// once. Hashes carry their parameters, so raising them later is a
    /// configuration change followed by rehash-on-login.
    pub const RECOMMENDED: HashParams = HashParams {
        m_cost_kib: 19 * 1024,
        t_cost: 2,
        p_cost: 1,
    };

    /// Largest memory accepted from a stored hash or a configuration: 1 GiB.
    pub const MAX_M_COST_KIB: u32 = 1024 * 1024;
    /// Most passes accepted.
    pub const MAX_T_COST: u32 = 16;
    /// Most lanes accepted.
    pub const MAX_P_COST: u32 = 16;

    fn to_argon2(self) -> Result<Params, HashError> {
        if self.m_cost_kib > Self::MAX_M_COST_KIB {
            return Err(HashError::Params("m_cost_kib above 1 GiB"));
        }
        if self.t_cost > Self::MAX_T_COST {
            return Err(HashError::Params("t_cost above 16"));
        }
        if self.p_cost > Self::MAX_P_COST {
            return Err(HashError::Params("p_cost above 16"));
        }
        Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(OUTPUT_LEN))
            .map_err(|_| HashError::Params("rejected by argon2 (m ≥ 8 × p, t ≥ 1, p ≥ 1)"))
    }
}

impl Default for HashParams {
    fn default() -> Self {
        Self::RECOMMENDED
    }
}

/// Bytes of argon2 output kept in the hash.
const OUTPUT_LEN: usize = 32;
/// Bytes of random salt (RFC 9106 recommends 16).
const SALT_LEN: usize = 16;

/// A stored argon2id hash (PHC string), validated when read.
///
/// `Debug` shows the parameters only: the salt and hash value are what an
/// offline attacker needs, so they stay out of logs.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    phc: argon2::PasswordHash,
    params: HashParams,
}

impl PasswordHash {
    /// Reads a PHC string as stored.
    pub fn parse(s: &str) -> Result<Self, HashFormatError> {
        let phc = argon2::PasswordHash::new(s).map_err(|_| HashFormatError::NotPhc)?;
        if phc.algorithm.as_str() != "argon2id" {
            return Err(HashFormatError::Algorithm);
        }
        if phc.salt.is_none() || phc.hash.is_none() {
            return Err(HashFormatError::Incomplete);
        }
        let argon_params = Params::try_from(&phc).map_err(|_| HashFormatError::Params)?;
        let params = HashParams {
            m_cost_kib: argon_params.m_cost(),
            t_cost: argon_params.t_cost(),
            p_cost: argon_params.p_cost(),
        };
        if params.m_cost_kib > HashParams::MAX_M_COST_KIB
            || params.t_cost > HashParams::MAX_T_COST
            || params.p_cost > HashParams::MAX_P_COST
        {
            return Err(HashFormatError::Params);
        }
        Ok(PasswordHash { phc, params })
    }

    /// The PHC string to store.
    pub fn to_phc_string(&self) -> String {
        self.phc.to_string()
    }

    /// The parameters this hash was made with.
    pub fn params(&self) -> HashParams {
        self.params
    }

    fn output_len(&self) -> Option<usize> {
        self.phc.hash.as_ref().map(|h| h.len())
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordHash")
            .field("params", &self.params)
            .field("salt_and_hash", &"<redacted>")
            .finish()
    }
}

impl Serialize for PasswordHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_phc_string())
    }
}

impl<'de> Deserialize<'de> for PasswordHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        PasswordHash::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Hashes and verifies passwords with one set of parameters, and holds the
/// dummy hash that makes unknown accounts cost the same as known ones.
pub struct PasswordHasher {
    params: HashParams,
    argon2: Argon2<'static>,
    dummy: PasswordHash,
}

impl fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl PasswordHasher {
    /// A hasher for `params`. Computes the dummy hash once (one full
    /// argon2id run): a random password under a random salt, both
    /// forgotten, so nothing can ever verify against it.
    pub fn new(params: HashParams) -> Result<Self, HashError> {
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.to_argon2()?);
        let mut secret = Zeroizing::new([0u8; 32]);
        getrandom::fill(secret.as_mut()).map_err(|_| HashError::Random)?;
        let dummy = hash_with(&argon2, secret.as_ref(), params)?;
        Ok(PasswordHasher {
            params,
            argon2,
            dummy,
        })
    }

    /// The parameters new hashes get.
    pub fn params(&self) -> HashParams {
        self.params
    }

    /// Hashes a password under a fresh random salt.
    pub fn hash(&self, password: &Password) -> Result<PasswordHash, HashError> {
        hash_with(&self.argon2, password.expose().as_bytes(), self.params)
    }

    /// Whether `candidate` matches `hash`, under the parameters stored in
    /// `hash`. Any internal error counts as a mismatch (fail closed). The
    /// final comparison is constant-time (the `phc` crate's `Output`).
    pub fn verify(&self, hash: &PasswordHash, candidate: &Password) -> bool {
        self.argon2
            .verify_password(candidate.expose().as_bytes(), &hash.phc)
            .is_ok()
    }

    /// Login-time verification that does not reveal whether the account
    /// exists: with `None` (no such account) a full argon2id verification
    /// still runs, against the dummy hash made with the same parameters,
    /// and the answer is always `false`.
    ///
    /// The time is the same for a known account whose hash has the current
    /// parameters; a hash with older parameters takes their time until it is
    /// rehashed on the next successful login ([`Self::needs_rehash`]).
    pub fn verify_or_dummy(&self, hash: Option<&PasswordHash>, candidate: &Password) -> bool {
        match hash {
            Some(hash) => self.verify(hash, candidate),
            None => {
                // black_box: the result is unused, the work must still happen.
                black_box(self.verify(black_box(&self.dummy), candidate));
                false
            }
        }
    }

    /// Whether `hash` was made with other parameters than this hasher's
    /// (or another version or output length): after a successful login the
    /// caller hashes the password again and stores the new hash.
    pub fn needs_rehash(&self, hash: &PasswordHash) -> bool {
        hash.params != self.params
            || hash.phc.version != Some(u32::from(Version::V0x13))
            || hash.output_len() != Some(OUTPUT_LEN)
    }
}

fn hash_with(
    argon2: &Argon2<'_>,
    password: &[u8],
    params: HashParams,
) -> Result<PasswordHash, HashError> {
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt).map_err(|_| HashError::Random)?;
    let phc = argon2
        .hash_password_with_salt(password, &salt)
        .map_err(|_| HashError::Argon2)?;
    Ok(PasswordHash { phc, params })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Small parameters so the tests stay fast; the rules do not depend on them.
    const TEST_PARAMS: HashParams = HashParams {
        m_cost_kib: 64,
        t_cost: 1,
        p_cost: 1,
    };

    fn pw(s: &str) -> Password {
        Password::new(s.to_owned()).unwrap()
    }

    fn weaknesses(s: &str, personal: &PersonalContext<'_>) -> Vec<Weakness> {
        match PasswordPolicy::CNIL.check(&pw(s), personal) {
            Ok(()) => Vec::new(),
            Err(PasswordError::Weak(w)) => w.as_slice().to_vec(),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    fn none() -> PersonalContext<'static> {
        PersonalContext::default()
    }

    #[test]
    fn list_is_large_normalised_and_sorted() {
        let entries: Vec<&str> = common_password_entries().collect();
        assert!(entries.len() >= 10_000, "only {} entries", entries.len());
        assert_eq!(
            common_passwords().len(),
            entries.len(),
            "duplicates in the list"
        );
        for pair in entries.windows(2) {
            assert!(pair[0] < pair[1], "not sorted at {:?}", pair);
        }
        for entry in &entries {
            let normalised: String = entry.nfkc().collect::<String>().to_lowercase();
            assert_eq!(*entry, normalised, "entry not normalised");
        }
        assert!(
            !entries.iter().any(|e| e.starts_with("# Common")),
            "header leaked into entries"
        );
    }

    #[test]
    fn a_good_password_passes() {
        assert_eq!(weaknesses("Tramway-Vélo-42", &none()), vec![]);
        // Three classes are enough: lower, upper, digit.
        assert_eq!(weaknesses("Kq7mPz2wLx9v", &none()), vec![]);
        // Lower, digit, special (space).
        assert_eq!(weaknesses("ornithorynque 7 galets", &none()), vec![]);
    }

    #[test]
    fn too_short_is_refused_at_11_and_accepted_at_12() {
        assert_eq!(
            weaknesses("Kq7mPz2wLx9", &none()),
            vec![Weakness::TooShort { min_chars: 12 }]
        );
        assert_eq!(weaknesses("Kq7mPz2wLx9v", &none()), vec![]);
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        // 12 characters, 14 bytes.
        assert_eq!(weaknesses("Éléphant-r0s", &none()), vec![]);
    }

    #[test]
    fn two_classes_are_refused() {
        assert_eq!(
            weaknesses("kqmpzwlxvbtrhd", &none()),
            vec![Weakness::TooFewClasses { required: 3 }]
        );
        assert_eq!(
            weaknesses("kqmpzwlx12345", &none()),
            vec![Weakness::TooFewClasses { required: 3 }]
        );
        let strict = PasswordPolicy::new(14, 4).unwrap();
        let err = strict.check(&pw("Kq7mPz2wLx9vBn"), &none()).unwrap_err();
        assert_eq!(
            err,
            PasswordError::Weak(Weaknesses(vec![Weakness::TooFewClasses { required: 4 }]))
        );
    }

    #[test]
    fn common_passwords_are_refused_even_decorated() {
        // In the list as is (upper-case folded).
        assert!(is_common("Password"));
        assert!(is_common("AZERTY"));
        // Decorated with digits and symbols to pass the composition rule.
        assert!(weaknesses("Marseille2024!", &none()).contains(&Weakness::Common));
        assert!(weaknesses("!!Azertyuiop123", &none()).contains(&Weakness::Common));
        assert!(weaknesses("Motdepasse#2026", &none()).contains(&Weakness::Common));
        assert!(weaknesses("Francetravail1!", &none()).contains(&Weakness::Common));
        // Not common: the core is not in the list.
        assert!(!is_common("Tramway-Vélo-42"));
        // Digits only strip to nothing, which is not "common" by itself.
        assert!(!is_common("!!!!"));
    }

    #[test]
    fn login_and_names_are_refused_without_case_or_accents() {
        let names = ["Hélène", "Dupont-Lefèvre"];
        let personal = PersonalContext {
            login: Some("hdupont"),
            names: &names,
        };
        assert_eq!(
            weaknesses("Xx-HDupont-2031", &personal),
            vec![Weakness::ContainsLogin, Weakness::ContainsName]
        );
        assert_eq!(
            weaknesses("Helene&Kiwi-77", &personal),
            vec![Weakness::ContainsName]
        );
        assert_eq!(
            weaknesses("lefevre+Kiwi-77", &personal),
            vec![Weakness::ContainsName]
        );
        assert_eq!(weaknesses("Tramway-Vélo-42", &personal), vec![]);
        // Particles and two-letter parts are not looked for.
        let names = ["Li", "des Essarts"];
        let personal = PersonalContext {
            login: None,
            names: &names,
        };
        assert_eq!(weaknesses("Lilas des prés 9", &personal), vec![]);
        assert_eq!(
            weaknesses("Essarts-Kiwi-77", &personal),
            vec![Weakness::ContainsName]
        );
    }

    #[test]
    fn every_weakness_is_listed_and_none_echoes_the_password() {
        let names = ["Azerty"];
        let personal = PersonalContext {
            login: Some("azerty"),
            names: &names,
        };
        let err = PasswordPolicy::CNIL
            .check(&pw("azerty"), &personal)
            .unwrap_err();
        let PasswordError::Weak(w) = &err else {
            panic!()
        };
        assert_eq!(
            w.as_slice(),
            &[
                Weakness::TooShort { min_chars: 12 },
                Weakness::TooFewClasses { required: 3 },
                Weakness::Common,
                Weakness::ContainsLogin,
                Weakness::ContainsName,
            ]
        );
        let secret = "Zq9!secretvalue";
        let err = PasswordPolicy::CNIL
            .check(
                &pw(secret),
                &PersonalContext {
                    login: Some("secretvalue"),
                    names: &[],
                },
            )
            .unwrap_err();
        assert!(!err.to_string().contains("secretvalue"));
        assert!(!format!("{err:?}").contains("secretvalue"));
        assert!(err.to_string().starts_with("password: "));
        for weakness in w.as_slice() {
            assert!(!weakness.message_fr().is_empty());
        }
    }

    #[test]
    fn password_bounds_and_redaction() {
        assert_eq!(
            Password::new(String::new()).unwrap_err(),
            PasswordError::Empty
        );
        assert!(Password::new("a".repeat(MAX_CHARS)).is_ok());
        assert_eq!(
            Password::new("a".repeat(MAX_CHARS + 1)).unwrap_err(),
            PasswordError::TooLong {
                max_chars: MAX_CHARS
            }
        );
        // Refused before normalisation when the bytes alone are too many.
        assert!(matches!(
            Password::new("é".repeat(MAX_INPUT_BYTES)),
            Err(PasswordError::TooLong { .. })
        ));
        let p = pw("Kq7mPz2wLx9v");
        assert_eq!(format!("{p:?}"), "Password(<redacted>)");
    }

    #[test]
    fn normalisation_makes_composed_and_decomposed_equal() {
        let composed = pw("Caf\u{e9}-Kiwi-2031");
        let decomposed = pw("Cafe\u{301}-Kiwi-2031");
        assert_eq!(composed.expose(), decomposed.expose());
        let hasher = PasswordHasher::new(TEST_PARAMS).unwrap();
        let hash = hasher.hash(&composed).unwrap();
        assert!(hasher.verify(&hash, &decomposed));
    }

    #[test]
    fn hash_then_verify() {
        let hasher = PasswordHasher::new(TEST_PARAMS).unwrap();
        let hash = hasher.hash(&pw("Tramway-Vélo-42")).unwrap();
        assert!(hasher.verify(&hash, &pw("Tramway-Vélo-42")));
        assert!(!hasher.verify(&hash, &pw("Tramway-Vélo-43")));
        assert!(hasher.verify_or_dummy(Some(&hash), &pw("Tramway-Vélo-42")));
        assert!(!hasher.verify_or_dummy(Some(&hash), &pw("tramway-vélo-42")));
        // Two hashes of one password differ (fresh salt).
        let again = hasher.hash(&pw("Tramway-Vélo-42")).unwrap();
        assert_ne!(hash.to_phc_string(), again.to_phc_string());
    }

    #[test]
    fn unknown_account_is_always_false_even_with_the_dummy_params() {
        let hasher = PasswordHasher::new(TEST_PARAMS).unwrap();
        assert!(!hasher.verify_or_dummy(None, &pw("Tramway-Vélo-42")));
        assert_eq!(hasher.dummy.params(), TEST_PARAMS);
        assert!(!hasher.needs_rehash(&hasher.dummy));
    }

    #[test]
    fn phc_string_carries_the_parameters_and_round_trips() {
        let hasher = PasswordHasher::new(TEST_PARAMS).unwrap();
        let hash = hasher.hash(&pw("Tramway-Vélo-42")).unwrap();
        let s = hash.to_phc_string();
        assert!(s.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{s}");
        let back = PasswordHash::parse(&s).unwrap();
        assert_eq!(back, hash);
        assert!(hasher.verify(&back, &pw("Tramway-Vélo-42")));
        let json = serde_json::to_string(&hash).unwrap();
        let from_json: PasswordHash = serde_json::from_str(&json).unwrap();
        assert_eq!(from_json, hash);
        // Debug keeps salt and hash out.
        let debug = format!("{hash:?}");
        let salt_and_hash = s.rsplitn(3, '$').take(2).collect::<Vec<_>>();
        for part in salt_and_hash {
            assert!(!debug.contains(part), "{debug}");
        }
    }

    #[test]
    fn rehash_needed_when_parameters_change() {
        let old = PasswordHasher::new(TEST_PARAMS).unwrap();
        let hash = old.hash(&pw("Tramway-Vélo-42")).unwrap();
        let new = PasswordHasher::new(HashParams {
            m_cost_kib: 128,
            ..TEST_PARAMS
        })
        .unwrap();
        assert!(!old.needs_rehash(&hash));
        assert!(new.needs_rehash(&hash));
        // The old hash still verifies under the new hasher: its own
        // parameters are used.
        assert!(new.verify(&hash, &pw("Tramway-Vélo-42")));
    }

    #[test]
    fn stored_hashes_are_validated() {
        assert_eq!(
            PasswordHash::parse("").unwrap_err(),
            HashFormatError::NotPhc
        );
        assert_eq!(
            PasswordHash::parse("plaintext").unwrap_err(),
            HashFormatError::NotPhc
        );
        assert_eq!(
            PasswordHash::parse("$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g")
                .unwrap_err(),
            HashFormatError::Algorithm
        );
        assert_eq!(
            PasswordHash::parse("$argon2id$v=19$m=64,t=1,p=1").unwrap_err(),
            HashFormatError::Incomplete
        );
        // 4 GiB of memory would be a denial of service on the first login.
        assert_eq!(
            PasswordHash::parse("$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g")
                .unwrap_err(),
            HashFormatError::Params
        );
    }

    #[test]
    fn hasher_refuses_unreasonable_params() {
        for params in [
            HashParams {
                m_cost_kib: 4,
                t_cost: 1,
                p_cost: 1,
            },
            HashParams {
                m_cost_kib: 64,
                t_cost: 0,
                p_cost: 1,
            },
            HashParams {
                m_cost_kib: 64,
                t_cost: 1,
                p_cost: 0,
            },
            HashParams {
                m_cost_kib: HashParams::MAX_M_COST_KIB + 1,
                t_cost: 1,
                p_cost: 1,
            },
            HashParams {
                m_cost_kib: 64,
                t_cost: 17,
                p_cost: 1,
            },
        ] {
            assert!(
                matches!(PasswordHasher::new(params), Err(HashError::Params(_))),
                "{params:?}"
            );
        }
    }

    #[test]
    fn policy_configuration_can_only_be_stricter() {
        assert_eq!(
            PasswordPolicy::new(11, 3),
            Err(PolicyError::MinChars { found: 11 })
        );
        assert_eq!(
            PasswordPolicy::new(129, 3),
            Err(PolicyError::MinChars { found: 129 })
        );
        assert_eq!(
            PasswordPolicy::new(12, 2),
            Err(PolicyError::RequiredClasses { found: 2 })
        );
        assert_eq!(PasswordPolicy::new(12, 3), Ok(PasswordPolicy::CNIL));
    }

    proptest! {
        #[test]
        fn policy_never_panics(s in any::<String>(), login in any::<String>(), name in any::<String>()) {
            if let Ok(p) = Password::new(s) {
                let names = [name.as_str()];
                let _ = PasswordPolicy::CNIL.check(&p, &PersonalContext { login: Some(&login), names: &names });
            }
        }

        #[test]
        fn stored_hash_parser_never_panics(s in any::<String>()) {
            let _ = PasswordHash::parse(&s);
        }

        #[test]
        fn stored_hash_parser_never_panics_on_near_phc(
            alg in "argon2(id|i|d)?",
            m in 0u64..5_000_000_000,
            t in 0u64..40,
            p in 0u64..40,
            tail in "[A-Za-z0-9+/$=,]{0,80}",
        ) {
            let _ = PasswordHash::parse(&format!("${alg}$v=19$m={m},t={t},p={p}${tail}"));
        }
    }
}
