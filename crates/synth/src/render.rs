//! Turns a chunk of planned persons into `persons.csv` and `mandates.csv`
//! rows, drawing the details (names, contact, dates) from the chunk's own
//! stream.

use std::fmt::Write as _;

use chrono::{Datelike, NaiveDate};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rempart_domain::{FtId, Nir, Purpose, Statut};

use crate::SynthError;
use crate::data::{
    COUNTRIES, DEPTS, EMAIL_DOMAINS, FAMILY_NAMES, FEMALE_FIRST_NAMES, MALE_FIRST_NAMES,
    STREET_NAMES, STREET_TYPES,
};
use crate::orgs::{Assignment, Directory};
use crate::plan::{N_DEPTS, Plan, Stream, Tables, counter, mix, pick, rng_for};

/// Where a chunk starts: its first person, first mandate number, and for
/// each counter and area the ordinal of its first mandate of that kind.
pub struct ChunkStart {
    pub person: u64,
    pub mandate: u64,
    pub ordinals: Vec<Vec<u64>>,
}

/// The CSV rows of one chunk, without headers.
pub struct ChunkOut {
    pub persons: Vec<u8>,
    pub mandates: Vec<u8>,
}

/// Most frequent family names (the head of [`FAMILY_NAMES`]).
const FREQUENT_FAMILY: usize = 60;
/// Names per generation in the first-name lists.
const GENERATION: usize = 50;

/// Renders the rows of one chunk. `nir_ordinals[k]` is the rank of person
/// `k` among everyone in the same NIR cell, computed in person order.
pub fn render_chunk(
    t: &Tables,
    dir: &Directory,
    chunk: u64,
    start: ChunkStart,
    plans: &[Plan],
    nir_ordinals: &[u32],
) -> Result<ChunkOut, SynthError> {
    let mut rng = rng_for(t.seed, Stream::Detail, chunk);
    let mut persons = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::with_capacity(plans.len() * 200));
    let mut mandates = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::with_capacity(plans.len() * 40));
    let mut ordinals = start.ordinals;
    let mut mandate_no = start.mandate;
    let mut s = Scratch::default();
    for (k, plan) in plans.iter().enumerate() {
        let index = start.person + k as u64;
        let ft_id = u32::try_from(index)
            .ok()
            .and_then(FtId::from_ordinal)
            .ok_or(SynthError::Options(
                "too many persons for France Travail identifiers",
            ))?;
        let born = day(plan.birth);
        s.clear();

        // Names: a first name of the person's generation most of the time.
        let generation = match born.year() {
            ..1970 => 0,
            1970..1990 => 1,
            _ => 2,
        };
        let fi = if rng.random_bool(0.7) {
            generation * GENERATION + rng.random_range(0..GENERATION)
        } else {
            rng.random_range(0..MALE_FIRST_NAMES.len())
        };
        let (prenom, prenom_mail) = if plan.male {
            (MALE_FIRST_NAMES[fi], &t.male_mail[fi])
        } else {
            (FEMALE_FIRST_NAMES[fi], &t.female_mail[fi])
        };
        let a = family_index(&mut rng);
        s.nom.push_str(FAMILY_NAMES[a]);
        s.nom_mail.push_str(&t.family_mail[a]);
        if rng.random_bool(0.02) {
            let b = family_index(&mut rng);
            if b != a {
                let _ = write!(s.nom, "-{}", FAMILY_NAMES[b]);
                let _ = write!(s.nom_mail, "-{}", t.family_mail[b]);
            }
        }

        let nir = nir(t, plan, nir_ordinals.get(k).copied().unwrap_or(0), &mut rng)?;
        if rng.random_bool(0.85) {
            email(t, &mut rng, index, prenom_mail, &s.nom_mail, &mut s.email);
        }
        if rng.random_bool(0.9) {
            phone(&mut rng, plan.dept, &mut s.phone);
        }
        address(t, &mut rng, &mut s.address);
        let (postcode, commune) = t
            .communes
            .get(usize::from(plan.commune))
            .copied()
            .unwrap_or(("75001", "Paris"));

        // Registration: current ones started within three years; past ones
        // within fifteen, and lasted from a month to about two and a half years.
        let span = (t.today_d - t.first_registration(plan.birth)).max(0);
        let (registered, ended) = if plan.statut == Statut::Inscrit {
            (t.today_d - rng.random_range(0..=span.min(1095)), None)
        } else {
            let back = rng.random_range(1..=span.clamp(1, 5479));
            let length = if back <= 30 {
                rng.random_range(1..=back)
            } else {
                rng.random_range(30..=back.min(900))
            };
            let from = t.today_d - back;
            (from, Some(from + length))
        };
        date(&mut s.born, plan.birth);
        date(&mut s.registered, registered);
        if let Some(end) = ended {
            date(&mut s.ended, end);
        }
        persons.write_record([
            ft_id.as_str(),
            nir.as_str(),
            &s.nom,
            prenom,
            &s.born,
            &s.email,
            &s.phone,
            &s.address,
            postcode,
            commune,
            plan.statut.as_str(),
            &s.registered,
            &s.ended,
        ])?;

        for (c, by_area) in ordinals.iter_mut().enumerate() {
            if !plan.has(c) {
                continue;
            }
            let area = dir.area_of(c, plan.dept);
            let slot = &mut by_area[area];
            let ordinal = *slot;
            *slot += 1;
            mandate_no += 1;
            let (org, account, from, to) = match dir.assign(c, area, ordinal) {
                Assignment::FollowUp { org, account } => {
                    let (from, to) = match (c, ended) {
                        (counter::FT_ASSIGNED | counter::FT_AGENCY, _) => (registered, None),
                        // A partner took over during the registration and
                        // stopped when it ended.
                        (_, Some(end)) => (
                            registered + rng.random_range(0..end - registered),
                            Some(end),
                        ),
                        (_, None) => (
                            registered + rng.random_range(0..=t.today_d - registered),
                            None,
                        ),
                    };
                    s.source.push_str(match c {
                        counter::FT_ASSIGNED | counter::FT_AGENCY => "inscription",
                        _ => "orientation",
                    });
                    (org, account, from, to)
                }
                Assignment::Session {
                    org,
                    account,
                    from,
                    to,
                } => {
                    s.source.push_str("prescription");
                    (org, Some(account), from, Some(to))
                }
                Assignment::Batch {
                    org,
                    account,
                    number,
                    from,
                    to,
                } => {
                    let d = day(from);
                    let _ = write!(s.source, "lot-{}-{:02}-{number:04}", d.year(), d.month());
                    (org, Some(account), from, Some(to))
                }
            };
            let purpose = match c {
                counter::TRAINING => Purpose::Training,
                counter::PROCESSING => Purpose::DocumentProcessing,
                _ => Purpose::FollowUp,
            };
            let _ = write!(s.reference, "M-{mandate_no:09}");
            date(&mut s.from, from);
            if let Some(to) = to {
                date(&mut s.to, to);
            }
            let login = account.map_or("", |a| dir.accounts[a].login.as_str());
            mandates.write_record([
                s.reference.as_str(),
                &dir.orgs[org].code,
                login,
                ft_id.as_str(),
                purpose.as_str(),
                &s.from,
                &s.to,
                &s.source,
            ])?;
            s.reference.clear();
            s.from.clear();
            s.to.clear();
            s.source.clear();
        }
    }
    let into = |w: csv::Writer<Vec<u8>>| {
        w.into_inner()
            .map_err(|e| SynthError::Internal(format!("cannot finish a chunk: {}", e.error())))
    };
    Ok(ChunkOut {
        persons: into(persons)?,
        mandates: into(mandates)?,
    })
}

/// Reused buffers for one person's formatted fields.
#[derive(Default)]
struct Scratch {
    nom: String,
    nom_mail: String,
    email: String,
    phone: String,
    address: String,
    born: String,
    registered: String,
    ended: String,
    reference: String,
    from: String,
    to: String,
    source: String,
}

impl Scratch {
    fn clear(&mut self) {
        for b in [
            &mut self.nom,
            &mut self.nom_mail,
            &mut self.email,
            &mut self.phone,
            &mut self.address,
            &mut self.born,
            &mut self.registered,
            &mut self.ended,
        ] {
            b.clear();
        }
    }
}

fn day(days: i32) -> NaiveDate {
    NaiveDate::from_num_days_from_ce_opt(days).unwrap_or(NaiveDate::MIN)
}

/// Appends a `YYYY-MM-DD` date.
fn date(out: &mut String, days: i32) {
    let d = day(days);
    let _ = write!(out, "{:04}-{:02}-{:02}", d.year(), d.month(), d.day());
}

/// Half of the people carry one of the 60 most frequent names.
fn family_index(rng: &mut ChaCha8Rng) -> usize {
    if rng.random_bool(0.5) {
        rng.random_range(0..FREQUENT_FAMILY)
    } else {
        rng.random_range(0..FAMILY_NAMES.len())
    }
}

/// INSEE pseudo-months (20–42, 50–99), used when more than 999 people share
/// a sex, birth month and birth place, so NIRs stay unique.
fn pseudo_month(month0: u32, block: u32) -> u32 {
    let n = month0 * 6 + (block - 1) % 6;
    if n < 23 { 20 + n } else { 50 + n - 23 }
}

/// Builds the NIR: sex (1/2, or 7/8 if provisional), birth year and month,
/// birth place, commune, and an order number that is distinct for the
/// first 999 people of a cell (`ordinal` is the rank in the cell).
pub fn nir(t: &Tables, plan: &Plan, ordinal: u32, rng: &mut ChaCha8Rng) -> Result<Nir, SynthError> {
    let born = day(plan.birth);
    let mut b = [b'0'; 13];
    b[0] = match (plan.male, plan.provisional) {
        (true, false) => b'1',
        (false, false) => b'2',
        (true, true) => b'7',
        (false, true) => b'8',
    };
    let block = ordinal / 999;
    let month = if block == 0 {
        born.month()
    } else {
        pseudo_month(born.month0(), block)
    };
    digits(&mut b[1..3], (born.year() % 100) as u32);
    digits(&mut b[3..5], month);
    let place = usize::from(plan.place);
    if place < N_DEPTS {
        let code = DEPTS[place].code.as_bytes();
        if code.len() == 3 {
            // Overseas: three-digit département, two-digit commune.
            b[5..8].copy_from_slice(code);
            digits(&mut b[8..10], rng.random_range(1..=34));
        } else {
            b[5..7].copy_from_slice(code);
            let max = if code[0] == b'2' && code[1].is_ascii_alphabetic() {
                366
            } else {
                800
            };
            digits(&mut b[7..10], rng.random_range(1..=max));
        }
    } else {
        b[5..7].copy_from_slice(b"99");
        let country = COUNTRIES[(place - N_DEPTS) % COUNTRIES.len()].0;
        b[7..10].copy_from_slice(country.as_bytes());
    }
    // 382 is prime to 999, so the first 999 ranks of a cell get 999
    // different order numbers, starting at a per-cell offset.
    let offset = mix(t.seed ^ 0x41e, u64::from(plan.cell)) % 999;
    let order = 1 + (offset + u64::from(ordinal % 999) * 382) % 999;
    digits(&mut b[10..13], order as u32);
    Nir::with_key(&b).map_err(|e| SynthError::Internal(format!("generated an invalid NIR: {e}")))
}

/// Writes `n` as zero-padded decimal digits filling `out`.
fn digits(out: &mut [u8], mut n: u32) {
    for c in out.iter_mut().rev() {
        *c = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// An address an e-mail provider would accept, unique thanks to a number
/// derived one-to-one from the person's index.
fn email(
    t: &Tables,
    rng: &mut ChaCha8Rng,
    index: u64,
    first: &str,
    family: &str,
    out: &mut String,
) {
    // Odd and not a multiple of 5, hence invertible modulo any power of ten.
    const MUL: u128 = 7_777_777_777;
    let n = (u128::from(index) * MUL + u128::from(t.email_add)) % u128::from(t.email_mod);
    let domain = EMAIL_DOMAINS[pick(rng, &t.domain_cum)].0;
    let initial = first.chars().next().unwrap_or('x');
    let _ = match rng.random_range(0..20) {
        0..9 => write!(out, "{first}.{family}{n}@{domain}"),
        9..13 => write!(out, "{family}.{first}{n}@{domain}"),
        13..16 => write!(out, "{initial}{family}{n}@{domain}"),
        16..18 => write!(out, "{first}_{family}{n}@{domain}"),
        _ => write!(out, "{first}{n}@{domain}"),
    };
}

/// A mobile (80 %) or landline number of the person's département, written
/// the various ways people type them.
fn phone(rng: &mut ChaCha8Rng, dept: u8, out: &mut String) {
    let p = &DEPTS[usize::from(dept)].phone;
    let prefix = if rng.random_bool(0.8) && !p.mobiles.is_empty() {
        p.mobiles[rng.random_range(0..p.mobiles.len())]
    } else {
        p.landline
    };
    let mut number = [b'0'; 10];
    number[..prefix.len()].copy_from_slice(prefix.as_bytes());
    for d in number.iter_mut().skip(prefix.len()) {
        *d = b'0' + rng.random_range(0..10u8);
    }
    let pairs = |out: &mut String, sep: char| {
        for (i, pair) in number.chunks(2).enumerate() {
            if i > 0 {
                out.push(sep);
            }
            out.extend(pair.iter().map(|&c| char::from(c)));
        }
    };
    let overseas = prefix.len() > 2;
    match rng.random_range(0..20) {
        0..10 => pairs(out, ' '),
        10..15 => out.extend(number.iter().map(|&c| char::from(c))),
        15..18 if !overseas => {
            out.push_str("+33 ");
            out.push(char::from(number[1]));
            for pair in number[2..].chunks(2) {
                out.push(' ');
                out.extend(pair.iter().map(|&c| char::from(c)));
            }
        }
        _ => pairs(out, '.'),
    }
}

/// "12 rue Victor Hugo", "3 bis allée des Lilas", "Appt 14, 7 avenue Jean Jaurès".
fn address(t: &Tables, rng: &mut ChaCha8Rng, out: &mut String) {
    let u: f64 = rng.random();
    if u < 0.05 {
        let _ = write!(out, "Appt {}, ", rng.random_range(2..=80));
    } else if u < 0.08 {
        let _ = write!(
            out,
            "Bât. {}, ",
            char::from(b'A' + rng.random_range(0..6u8))
        );
    }
    let number = if rng.random_bool(0.5) {
        rng.random_range(1..=30)
    } else {
        rng.random_range(1..=180)
    };
    let _ = write!(out, "{number}");
    let u: f64 = rng.random();
    if u < 0.04 {
        out.push_str(" bis");
    } else if u < 0.05 {
        out.push_str(" ter");
    }
    let kind = STREET_TYPES[pick(rng, &t.street_cum)].0;
    let name = STREET_NAMES[rng.random_range(0..STREET_NAMES.len())];
    let _ = write!(out, " {kind} {name}");
}
