//! The cheap part of a person, drawn first: where they live, sex, birth date,
//! birth place, status and which mandates they get.
//!
//! It is drawn twice from its own random stream: once to count mandates per
//! département (so organisations and caseloads can be sized exactly before
//! anything is written), once again while writing the rows. Everything
//! else about a person (names, contact, exact dates) comes from a second
//! stream, so the two passes always agree.

use chrono::{Datelike, Months, NaiveDate};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use rempart_domain::{Statut, normalise_name};

use crate::SynthError;
use crate::data::{
    COUNTRIES, DEPTS, EMAIL_DOMAINS, FAMILY_NAMES, FEMALE_FIRST_NAMES, MALE_FIRST_NAMES, Region,
    STREET_TYPES,
};

/// Number of départements in [`DEPTS`].
pub const N_DEPTS: usize = DEPTS.len();
/// Birth places: every département, then every country of [`COUNTRIES`].
pub const N_PLACES: usize = N_DEPTS + COUNTRIES.len();
/// NIR cells: (sex digit 1/2/7/8) × (two-digit year) × month × birth place.
pub const N_CELLS: usize = 4 * 100 * 12 * N_PLACES;

/// One mandate a person gets; a person has at most one of each.
/// The order is the order of their rows in `mandates.csv`.
pub mod counter {
    /// France Travail follow-up assigned to an adviser.
    pub const FT_ASSIGNED: usize = 0;
    /// France Travail follow-up held by the whole agency.
    pub const FT_AGENCY: usize = 1;
    /// Cap emploi follow-up, current (the person is registered).
    pub const CE_ACTIVE: usize = 2;
    /// Cap emploi follow-up that ended with the registration.
    pub const CE_ENDED: usize = 3;
    /// Mission Locale follow-up, current.
    pub const ML_ACTIVE: usize = 4;
    /// Mission Locale follow-up that ended with the registration.
    pub const ML_ENDED: usize = 5;
    /// A training session.
    pub const TRAINING: usize = 6;
    /// A batch of documents processed by a subcontractor.
    pub const PROCESSING: usize = 7;
    pub const COUNT: usize = 8;
}

// Proportions. Job seekers: 35 % registered now, 55 % left, 10 % struck off.
const P_INSCRIT: f64 = 0.35;
const P_SORTI: f64 = 0.55;
/// Share of registered people with a named adviser (the rest are followed
/// by the agency as a whole).
const P_FT_ASSIGNED: f64 = 0.75;
const P_CAP_EMPLOI: f64 = 0.06;
/// Share of 16–25 year olds followed by a Mission Locale.
const P_MISSION_LOCALE: f64 = 0.15;
/// Training and document processing concern registered people only; these
/// give 5 % and 3 % of all persons.
const P_TRAINING: f64 = 0.05 / P_INSCRIT;
const P_PROCESSING: f64 = 0.03 / P_INSCRIT;

/// Lookup tables and date bounds shared by every chunk.
pub struct Tables {
    pub seed: u64,
    pub today: NaiveDate,
    pub today_d: i32,
    pub birth_min: i32,
    pub birth_max: i32,
    /// People born after this day are at most 25 today.
    pub young_after: i32,
    earliest_event: i32,
    pub commune_dept: Vec<u8>,
    /// (postcode, commune name), flattened over [`DEPTS`].
    pub communes: Vec<(&'static str, &'static str)>,
    commune_cum: Vec<u32>,
    metro_cum: Vec<u32>,
    metro_idx: Vec<u8>,
    overseas_cum: Vec<u32>,
    overseas_idx: Vec<u8>,
    corsica_cum: Vec<u32>,
    corsica_idx: Vec<u8>,
    country_cum: Vec<u32>,
    pub street_cum: Vec<u32>,
    pub domain_cum: Vec<u32>,
    /// Accent-free, lower-case forms for e-mail addresses.
    pub male_mail: Vec<String>,
    pub female_mail: Vec<String>,
    pub family_mail: Vec<String>,
    /// Affine bijection on `0..email_mod` that turns a person index into the
    /// number in their e-mail address: unique, but not visibly sequential.
    pub email_mod: u64,
    pub email_add: u64,
}

impl Tables {
    pub fn new(seed: u64, today: NaiveDate, persons: u64) -> Result<Self, SynthError> {
        let date = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).map(|d| d.num_days_from_ce());
        let years_before = |n: u32| {
            today
                .checked_sub_months(Months::new(12 * n))
                .map(|d| d.num_days_from_ce())
        };
        let invalid = || SynthError::Options("today must be between 1966-01-01 and 2098-12-31");
        let (Some(first_birth), Some(last_birth), Some(sixteen), Some(twenty_six)) = (
            date(1950, 1, 1),
            date(2009, 12, 31),
            years_before(16),
            years_before(26),
        ) else {
            return Err(invalid());
        };
        let today_d = today.num_days_from_ce();
        let latest = date(2098, 12, 31).ok_or_else(invalid)?;
        // Everyone must be at least 16 today, so that they can have registered.
        let birth_max = last_birth.min(sixteen);
        if birth_max < first_birth || today_d > latest {
            return Err(invalid());
        }
        let mut commune_dept = Vec::new();
        let mut communes = Vec::new();
        let mut commune_cum = Vec::new();
        let mut total = 0u32;
        for (d, dept) in DEPTS.iter().enumerate() {
            // A département's population is shared among its listed communes.
            let w = dept.pop_k * 1000 / dept.communes.len() as u32;
            for c in dept.communes {
                communes.push(*c);
                total += w;
                commune_dept.push(d as u8);
                commune_cum.push(total);
            }
        }
        let subset = |keep: &dyn Fn(Region) -> bool| {
            let mut cum = Vec::new();
            let mut idx = Vec::new();
            let mut t = 0;
            for (d, dept) in DEPTS.iter().enumerate() {
                if keep(dept.region) {
                    t += dept.pop_k;
                    cum.push(t);
                    idx.push(d as u8);
                }
            }
            (cum, idx)
        };
        let (metro_cum, metro_idx) = subset(&|r| r.zone() <= 4 && r != Region::Corse);
        let (overseas_cum, overseas_idx) = subset(&|r| r.zone() > 4);
        let (corsica_cum, corsica_idx) = subset(&|r| r == Region::Corse);
        let mail = |names: &[&str]| -> Vec<String> {
            names
                .iter()
                .map(|n| normalise_name(n).replace(' ', "-"))
                .collect()
        };
        let mut email_mod = 1000u64;
        while email_mod < persons {
            email_mod *= 10;
        }
        Ok(Tables {
            seed,
            today,
            today_d,
            birth_min: first_birth,
            birth_max,
            young_after: twenty_six,
            earliest_event: date(1958, 1, 1).ok_or_else(invalid)?,
            commune_dept,
            communes,
            commune_cum,
            metro_cum,
            metro_idx,
            overseas_cum,
            overseas_idx,
            corsica_cum,
            corsica_idx,
            country_cum: cumulative(COUNTRIES.iter().map(|c| c.2)),
            street_cum: cumulative(STREET_TYPES.iter().map(|s| s.1)),
            domain_cum: cumulative(EMAIL_DOMAINS.iter().map(|s| s.1)),
            male_mail: mail(&MALE_FIRST_NAMES),
            female_mail: mail(&FEMALE_FIRST_NAMES),
            family_mail: FAMILY_NAMES
                .iter()
                .map(|n| normalise_name(n).replace(' ', ""))
                .collect(),
            email_mod,
            email_add: mix(seed, 0xe4a1) % email_mod,
        })
    }

    /// First day a person born on `birth` can have registered: their 16th
    /// birthday, and not before unemployment insurance existed (1958).
    pub fn first_registration(&self, birth: i32) -> i32 {
        let sixteen = NaiveDate::from_num_days_from_ce_opt(birth)
            .and_then(|d| d.checked_add_months(Months::new(16 * 12)))
            .map_or(birth + 5844, |d| d.num_days_from_ce());
        sixteen.max(self.earliest_event)
    }
}

/// Running sums of weights, for [`pick`].
pub fn cumulative(weights: impl Iterator<Item = u32>) -> Vec<u32> {
    let mut t = 0;
    weights
        .map(|w| {
            t += w;
            t
        })
        .collect()
}

/// Draws an index with probability proportional to its weight.
pub fn pick(rng: &mut ChaCha8Rng, cum: &[u32]) -> usize {
    let total = cum.last().copied().unwrap_or(0);
    if total == 0 {
        return 0;
    }
    let r = rng.random_range(0..total);
    cum.partition_point(|&c| c <= r)
}

/// SplitMix64 finaliser: a cheap, well-mixed hash for values derived from
/// the seed (session dates, offsets) that need no stream of their own.
pub fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What a random stream is for; part of its key so streams never overlap.
#[derive(Clone, Copy)]
pub enum Stream {
    Plan = 1,
    Detail = 2,
    Accounts = 3,
}

/// A ChaCha8 generator keyed by (seed, purpose, index): chunk `i` gets the
/// same numbers whichever thread generates it and whenever.
pub fn rng_for(seed: u64, stream: Stream, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(stream as u64).to_le_bytes());
    key[16..24].copy_from_slice(&index.to_le_bytes());
    key[24..].copy_from_slice(b"rempart!");
    ChaCha8Rng::from_seed(key)
}

/// The planned part of one person.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Index into the flattened communes of [`DEPTS`].
    pub commune: u16,
    /// Residence département (index into [`DEPTS`]).
    pub dept: u8,
    pub male: bool,
    pub statut: Statut,
    /// Birth date, as days from the common era.
    pub birth: i32,
    /// Birth place: a département index, or `N_DEPTS + country index`.
    pub place: u16,
    /// Provisional NIR (sex digit 7/8), for some people born abroad.
    pub provisional: bool,
    /// One bit per [`counter`]: the mandates this person gets.
    pub mandates: u8,
    /// NIR cell (sex digit, year, month, place); people in one cell get
    /// distinct order numbers.
    pub cell: u32,
}

impl Plan {
    pub fn has(&self, counter: usize) -> bool {
        self.mandates & (1 << counter) != 0
    }
}

/// Draws the plan of the next person.
pub fn plan_person(t: &Tables, rng: &mut ChaCha8Rng) -> Plan {
    let commune = pick(rng, &t.commune_cum);
    let dept = t.commune_dept.get(commune).copied().unwrap_or(0);
    let male = rng.random_bool(0.5);
    let birth = rng.random_range(t.birth_min..=t.birth_max);
    // Someone who turns 16 today can only have just registered.
    let can_have_left = t.today_d - t.first_registration(birth) >= 1;
    let u: f64 = rng.random();
    let statut = if !can_have_left || u < P_INSCRIT {
        Statut::Inscrit
    } else if u < P_INSCRIT + P_SORTI {
        Statut::Sorti
    } else {
        Statut::Radie
    };
    let inscrit = statut == Statut::Inscrit;
    let mut mandates = 0u8;
    let mut set = |c: usize| mandates |= 1 << c;
    if inscrit {
        set(if rng.random_bool(P_FT_ASSIGNED) {
            counter::FT_ASSIGNED
        } else {
            counter::FT_AGENCY
        });
    }
    if rng.random_bool(P_CAP_EMPLOI) {
        set(if inscrit {
            counter::CE_ACTIVE
        } else {
            counter::CE_ENDED
        });
    }
    if birth > t.young_after && rng.random_bool(P_MISSION_LOCALE) {
        set(if inscrit {
            counter::ML_ACTIVE
        } else {
            counter::ML_ENDED
        });
    }
    if inscrit && rng.random_bool(P_TRAINING) {
        set(counter::TRAINING);
    }
    if inscrit && rng.random_bool(P_PROCESSING) {
        set(counter::PROCESSING);
    }
    let (place, provisional) = birth_place(t, rng, dept);
    let date = NaiveDate::from_num_days_from_ce_opt(birth).unwrap_or(t.today);
    let sex = usize::from(!male) + if provisional { 2 } else { 0 };
    let year = (date.year() % 100) as usize;
    let month = date.month0() as usize;
    let cell = ((sex * 100 + year) * 12 + month) * N_PLACES + usize::from(place);
    Plan {
        commune: commune as u16,
        dept,
        male,
        statut,
        birth,
        place,
        provisional,
        mandates,
        cell: cell as u32,
    }
}

/// Birth place: about 10 % abroad, 3 % overseas, 2 % Corsica, the rest in
/// mainland France, half of them in the département they live in.
fn birth_place(t: &Tables, rng: &mut ChaCha8Rng, residence: u8) -> (u16, bool) {
    let region = DEPTS[usize::from(residence)].region;
    // People living overseas were mostly born there.
    if region.zone() > 4 && rng.random_bool(0.7) {
        return (u16::from(residence), false);
    }
    let u: f64 = rng.random();
    if u < 0.10 {
        let country = pick(rng, &t.country_cum);
        // Provisional numbers (NIA) go to some people born abroad.
        let provisional = rng.random_bool(0.1);
        return ((N_DEPTS + country) as u16, provisional);
    }
    let from = |cum: &[u32], idx: &[u8], rng: &mut ChaCha8Rng| {
        u16::from(idx.get(pick(rng, cum)).copied().unwrap_or(0))
    };
    let place = if u < 0.11 {
        from(&t.overseas_cum, &t.overseas_idx, rng)
    } else if u < 0.13 {
        from(&t.corsica_cum, &t.corsica_idx, rng)
    } else if region.zone() <= 4 && rng.random_bool(0.5) {
        u16::from(residence)
    } else {
        from(&t.metro_cum, &t.metro_idx, rng)
    };
    (place, false)
}

/// Plans every person of one chunk.
pub fn plan_chunk(t: &Tables, chunk: u64, len: u64) -> Vec<Plan> {
    let mut rng = rng_for(t.seed, Stream::Plan, chunk);
    (0..len).map(|_| plan_person(t, &mut rng)).collect()
}
