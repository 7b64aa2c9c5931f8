//! Organisations, accounts, and who follows whom.
//!
//! Organisations are planned once the first pass has counted, per
//! département, how many people need each kind of mandate. Every kind of
//! organisation serves "areas": a département when it has enough people,
//! otherwise its region's, its zone's or France's largest one takes it in.
//! Within an area the k-th person needing a mandate of one kind (in person
//! order, over the whole run) goes to organisation and adviser
//! `k · n / total`, so caseloads come out even and inside their ranges
//! whatever the chunking.

use std::collections::HashSet;

use chrono::{Months, NaiveDate};
use rand::Rng;
use rempart_domain::{AccountState, OrganisationKind, Role};

use crate::data::{DEPTS, PROCESSOR_NAMES, TRAINING_BRANDS};
use crate::plan::{N_DEPTS, Stream, Tables, counter, mix, rng_for};

/// Caseload of one adviser: (minimum, target, maximum) current mandates.
pub type Range = (u64, u64, u64);
/// France Travail adviser.
pub const FT_CASELOAD: Range = (200, 300, 400);
/// Cap emploi adviser.
pub const CE_CASELOAD: Range = (100, 150, 200);
/// Mission Locale adviser (people aged 16–25).
pub const ML_CASELOAD: Range = (100, 200, 300);
/// Trainees in one training session.
pub const SESSION_SIZE: Range = (10, 17, 25);
/// Sessions one trainer runs over the two years the data covers.
const SESSIONS_PER_TRAINER: u64 = 4;
/// Documents per processing batch, and per processor agent over the period.
const DOCS_PER_BATCH: u64 = 150;
const DOCS_PER_PROCESSOR_AGENT: u64 = 2_500;

/// Which service each [`counter`] belongs to.
const SERVICE_OF: [usize; counter::COUNT] = [0, 0, 1, 1, 2, 2, 3, 4];

/// A planned organisation.
pub struct Org {
    pub code: String,
    pub kind: OrganisationKind,
    pub name: String,
    pub dept: Option<&'static str>,
    /// Accounts that carry a caseload (advisers, trainers, processor agents).
    pub agents: Vec<usize>,
    pub managers: Vec<usize>,
    /// Training providers: where each session ends among the provider's
    /// trainees (running sums of session sizes).
    pub session_ends: Vec<u64>,
    /// Number of caseload agents to create.
    want_agents: u64,
}

/// A planned account; `org`, `requested_by` and `approved_by` are indices.
pub struct Account {
    pub login: String,
    pub org: usize,
    pub role: Role,
    pub state: AccountState,
    pub requested_by: Option<usize>,
    pub approved_by: Option<usize>,
}

/// The areas one kind of organisation serves.
struct Service {
    area_of_dept: Vec<u16>,
    /// Organisations of each area.
    areas: Vec<Vec<usize>>,
}

/// Who holds one mandate, and when for dated ones.
pub enum Assignment {
    /// A follow-up mandate: the organisation, and the adviser if named.
    FollowUp { org: usize, account: Option<usize> },
    /// A training session; `from`/`to` as days from the common era.
    Session {
        org: usize,
        account: usize,
        from: i32,
        to: i32,
    },
    /// A batch of documents.
    Batch {
        org: usize,
        account: usize,
        number: u64,
        from: i32,
        to: i32,
    },
}

/// Every organisation and account, and the rules that assign mandates.
pub struct Directory {
    pub orgs: Vec<Org>,
    pub accounts: Vec<Account>,
    services: Vec<Service>,
    /// Mandates of each counter in each area of its service.
    totals: Vec<Vec<u64>>,
    processors: Vec<usize>,
    batches: u64,
    seed: u64,
    today_d: i32,
}

impl Directory {
    /// Plans organisations and accounts from the number of mandates of each
    /// kind per residence département.
    pub fn plan(t: &Tables, persons: u64, per_dept: &[[u64; N_DEPTS]; counter::COUNT]) -> Self {
        let mut p = Planner {
            orgs: Vec::new(),
            names: HashSet::new(),
            seed: t.seed,
        };
        // Organisations France would have for this many people: one France
        // Travail agency per 20,000, one Mission Locale per 25,000, one
        // training provider per 5,000.
        let n_orgs = |n: u64| Some((persons as f64 / n as f64).round().max(1.0) as u64);
        let ft = p.local_service(
            &per_dept[counter::FT_ASSIGNED],
            n_orgs(20_000),
            FT_CASELOAD,
            &|p, seat, j, m, size| {
                let code = numbered("FT", seat, j, m);
                let name = p.unique(format!("France Travail {}", label(seat, j, m)));
                p.org(code, OrganisationKind::FranceTravail, name, seat)
                    .want_agents = agents_for(size, FT_CASELOAD);
            },
        );
        // One Cap emploi per département, unless too few people for one adviser.
        let ce = p.local_service(
            &per_dept[counter::CE_ACTIVE],
            None,
            CE_CASELOAD,
            &|p, seat, _, _, size| {
                let code = format!("CE-{}", dept3(seat));
                let name = p.unique(format!("Cap emploi {}", DEPTS[seat].name));
                p.org(code, OrganisationKind::CapEmploi, name, seat)
                    .want_agents = agents_for(size, CE_CASELOAD);
            },
        );
        let ml = p.local_service(
            &per_dept[counter::ML_ACTIVE],
            n_orgs(25_000),
            ML_CASELOAD,
            &|p, seat, j, m, size| {
                let code = numbered("ML", seat, j, m);
                let name = p.unique(format!("Mission Locale {}", de(&label(seat, j, m))));
                p.org(code, OrganisationKind::MissionLocale, name, seat)
                    .want_agents = agents_for(size, ML_CASELOAD);
            },
        );
        let tr = p.local_service(
            &per_dept[counter::TRAINING],
            n_orgs(5_000),
            SESSION_SIZE,
            &|p, seat, j, m, size| {
                let code = format!("OF-{}-{:03}", dept3(seat), j + 1);
                let brand = TRAINING_BRANDS[(seat + j) % TRAINING_BRANDS.len()];
                let name = p.unique(format!("{brand} {}", label(seat, j, m)));
                let ends = session_ends(size, mix(p.seed ^ 0x7a1, p.orgs.len() as u64));
                let org = p.org(code, OrganisationKind::TrainingProvider, name, seat);
                org.want_agents = (ends.len() as u64).div_ceil(SESSIONS_PER_TRAINER).max(1);
                org.session_ends = ends;
            },
        );
        // Two or three national subcontractors digitise documents in batches.
        let docs: u64 = per_dept[counter::PROCESSING].iter().sum();
        let n_proc: u64 = if persons >= 200_000 { 3 } else { 2 };
        let per_agent = (docs / n_proc)
            .div_ceil(DOCS_PER_PROCESSOR_AGENT)
            .clamp(2, 8);
        let mut processors = Vec::new();
        for k in 0..n_proc as usize {
            let name = p.unique(PROCESSOR_NAMES[k % PROCESSOR_NAMES.len()].to_string());
            processors.push(p.orgs.len());
            p.orgs.push(Org {
                code: format!("PROC-DIGIT-{}", k + 1),
                kind: OrganisationKind::Processor,
                name,
                dept: None,
                agents: Vec::new(),
                managers: Vec::new(),
                session_ends: Vec::new(),
                want_agents: per_agent,
            });
        }
        let proc_service = Service {
            area_of_dept: vec![0; N_DEPTS],
            areas: vec![processors.clone()],
        };
        let services = vec![ft, ce, ml, tr, proc_service];
        let mut totals = Vec::with_capacity(counter::COUNT);
        for (c, counts) in per_dept.iter().enumerate() {
            let service = &services[SERVICE_OF[c]];
            let mut by_area = vec![0u64; service.areas.len()];
            for (d, n) in counts.iter().enumerate() {
                by_area[usize::from(service.area_of_dept[d])] += n;
            }
            totals.push(by_area);
        }
        let mut dir = Directory {
            orgs: p.orgs,
            accounts: Vec::new(),
            services,
            totals,
            processors,
            batches: (docs as f64 / DOCS_PER_BATCH as f64).round().max(1.0) as u64,
            seed: t.seed,
            today_d: t.today_d,
        };
        dir.plan_accounts(t.seed);
        dir
    }

    /// Area of the service of `counter` that serves département `dept`.
    pub fn area_of(&self, counter: usize, dept: u8) -> usize {
        let s = &self.services[SERVICE_OF[counter]];
        usize::from(s.area_of_dept.get(usize::from(dept)).copied().unwrap_or(0))
    }

    /// Number of areas of the service of `counter`.
    pub fn areas(&self, counter: usize) -> usize {
        self.services[SERVICE_OF[counter]].areas.len()
    }

    /// Who holds the `ordinal`-th mandate of kind `counter` in `area`.
    pub fn assign(&self, counter: usize, area: usize, ordinal: u64) -> Assignment {
        let total = self.totals[counter][area].max(ordinal + 1);
        if counter == counter::PROCESSING {
            let b = (u128::from(ordinal) * u128::from(self.batches) / u128::from(total)) as u64;
            let n_proc = self.processors.len().max(1) as u64;
            let org = self.processors[(b % n_proc) as usize];
            let agents = &self.orgs[org].agents;
            let account = agents[((b / n_proc) % agents.len() as u64) as usize];
            // Batches are spread over the last six months, oldest first.
            let from = self.today_d - 182 + (b * 182 / self.batches) as i32;
            let to = from + 14 + (mix(self.seed ^ 0xba7c, b) % 29) as i32;
            return Assignment::Batch {
                org,
                account,
                number: b + 1,
                from,
                to,
            };
        }
        let orgs = &self.services[SERVICE_OF[counter]].areas[area];
        let (j, local, size) = part(ordinal, total, orgs.len() as u64);
        let org = orgs[j as usize];
        let o = &self.orgs[org];
        match counter {
            counter::FT_AGENCY => Assignment::FollowUp { org, account: None },
            counter::TRAINING => {
                let s = o.session_ends.partition_point(|&end| end <= local) as u64;
                let trainers = o.agents.len() as u64;
                let account = o.agents[(s % trainers) as usize];
                // A trainer's sessions follow one another about every ten
                // months: the latest are under way or about to start, older
                // ones are over.
                let h = mix(self.seed ^ 0x5e55, ((org as u64) << 32) | s);
                let from = self.today_d + 45 - (s / trainers) as i32 * 300 - (h % 61) as i32;
                let months = 2 + ((h >> 8) % 8) as u32;
                let to = NaiveDate::from_num_days_from_ce_opt(from)
                    .and_then(|d| d.checked_add_months(Months::new(months)))
                    .map_or(from + 30 * months as i32, |d| {
                        chrono::Datelike::num_days_from_ce(&d)
                    });
                Assignment::Session {
                    org,
                    account,
                    from,
                    to,
                }
            }
            _ => {
                let agents = o.agents.len() as u64;
                let account = o.agents[(local * agents / size) as usize];
                Assignment::FollowUp {
                    org,
                    account: Some(account),
                }
            }
        }
    }

    /// Officers first (they approve everyone else), then the security and
    /// data protection officers, then each organisation's managers and agents.
    fn plan_accounts(&mut self, seed: u64) {
        let mut rng = rng_for(seed, Stream::Accounts, 0);
        let ft: Vec<usize> = (0..self.orgs.len())
            .filter(|&o| self.orgs[o].kind == OrganisationKind::FranceTravail)
            .collect();
        let n_officers = (ft.len() / 4).clamp(2, 12);
        let mut officers: Vec<usize> = Vec::new();
        for k in 0..n_officers {
            let org = ft[k % ft.len()];
            // The first officer is the bootstrap account; the others are
            // approved by an officer of another agency when there is one.
            let approver = officers
                .iter()
                .copied()
                .find(|&a| self.accounts[a].org != org)
                .or(officers.first().copied());
            let login = format!(
                "{}-of-{:04}",
                prefix(&self.orgs[org].code),
                k / ft.len() + 1
            );
            officers.push(self.push(
                login,
                org,
                Role::Officer,
                AccountState::Active,
                None,
                approver,
            ));
        }
        // Every service plans at least one organisation, so `ft` is not empty.
        let head = ft[0];
        for (role, tag) in [(Role::Security, "sec"), (Role::Dpo, "dpo")] {
            let approver = self.approver(&officers, head, &mut rng);
            let login = format!("{}-{tag}-0001", prefix(&self.orgs[head].code));
            self.push(login, head, role, AccountState::Active, None, approver);
        }
        for org in 0..self.orgs.len() {
            let p = prefix(&self.orgs[org].code);
            let want = self.orgs[org].want_agents;
            let n_managers = if want >= 8 { 2 } else { 1 };
            let mut managers = Vec::new();
            for n in 1..=n_managers {
                let approver = self.approver(&officers, org, &mut rng);
                let login = format!("{p}-mg-{n:04}");
                managers.push(self.push(
                    login,
                    org,
                    Role::Manager,
                    AccountState::Active,
                    None,
                    approver,
                ));
            }
            let mut agents = Vec::new();
            let mut n = 0;
            let mut agent = |dir: &mut Self, state, approved: bool, rng: &mut _| {
                n += 1;
                let requester = managers[rng_index(rng, managers.len())];
                let approver = if approved {
                    dir.approver(&officers, org, rng)
                } else {
                    None
                };
                let login = format!("{p}-ag-{n:04}");
                dir.push(login, org, Role::Agent, state, Some(requester), approver)
            };
            for _ in 0..want {
                let state = if rng.random_bool(0.03) {
                    AccountState::Suspended
                } else {
                    AccountState::Active
                };
                agents.push(agent(self, state, true, &mut rng));
            }
            // Some teams have a newcomer awaiting approval, or someone who left.
            if rng.random_bool(0.25) {
                agent(self, AccountState::Requested, false, &mut rng);
            }
            if rng.random_bool(0.2) {
                agent(self, AccountState::Disabled, true, &mut rng);
            }
            self.orgs[org].agents = agents;
            self.orgs[org].managers = managers;
        }
    }

    /// An officer of another organisation than `org`, if any exists.
    fn approver(
        &self,
        officers: &[usize],
        org: usize,
        rng: &mut rand_chacha::ChaCha8Rng,
    ) -> Option<usize> {
        let others: Vec<usize> = officers
            .iter()
            .copied()
            .filter(|&a| self.accounts[a].org != org)
            .collect();
        let pool = if others.is_empty() { officers } else { &others };
        if pool.is_empty() {
            return None;
        }
        Some(pool[rng_index(rng, pool.len())])
    }

    fn push(
        &mut self,
        login: String,
        org: usize,
        role: Role,
        state: AccountState,
        requested_by: Option<usize>,
        approved_by: Option<usize>,
    ) -> usize {
        self.accounts.push(Account {
            login,
            org,
            role,
            state,
            requested_by,
            approved_by,
        });
        self.accounts.len() - 1
    }
}

fn rng_index(rng: &mut rand_chacha::ChaCha8Rng, len: usize) -> usize {
    if len <= 1 {
        0
    } else {
        rng.random_range(0..len)
    }
}

/// Builds organisations while keeping their names unique.
struct Planner {
    orgs: Vec<Org>,
    names: HashSet<String>,
    seed: u64,
}

/// Creates organisation `j` of `m` in the area seated at a département,
/// given how many mandates of the primary kind it will hold.
type MakeOrg<'a> = &'a dyn Fn(&mut Planner, usize, usize, usize, u64);

impl Planner {
    fn org(&mut self, code: String, kind: OrganisationKind, name: String, seat: usize) -> &mut Org {
        self.orgs.push(Org {
            code,
            kind,
            name,
            dept: Some(DEPTS[seat].code),
            agents: Vec::new(),
            managers: Vec::new(),
            session_ends: Vec::new(),
            want_agents: 1,
        });
        let last = self.orgs.len() - 1;
        &mut self.orgs[last]
    }

    /// `name`, or `name 2`, `name 3`… if already taken.
    fn unique(&mut self, name: String) -> String {
        let mut candidate = name.clone();
        let mut n = 1;
        while self.names.contains(&candidate) {
            n += 1;
            candidate = format!("{name} {n}");
        }
        self.names.insert(candidate.clone());
        candidate
    }

    /// Plans the areas of one kind of organisation and the organisations in
    /// each. `n_orgs` is how many organisations France would have for this
    /// population (`None`: one per area); `range` bounds what one adviser
    /// (or session) holds, so no organisation is planned below `range.0`.
    fn local_service(
        &mut self,
        demand: &[u64; N_DEPTS],
        n_orgs: Option<u64>,
        range: Range,
        make: MakeOrg<'_>,
    ) -> Service {
        let sum: u64 = demand.iter().sum();
        // Mandates one organisation holds on average.
        let per_org = n_orgs.map_or(0.0, |n| sum as f64 / n.max(1) as f64);
        let threshold = (range.0 as f64).max(per_org / 2.0).ceil() as u64;
        let (area_of_dept, seats) = plan_areas(demand, threshold.max(1));
        let mut areas = Vec::with_capacity(seats.len());
        for (a, &seat) in seats.iter().enumerate() {
            let d_area: u64 = (0..N_DEPTS)
                .filter(|&d| usize::from(area_of_dept[d]) == a)
                .map(|d| demand[d])
                .sum();
            let m = if per_org > 0.0 {
                ((d_area as f64 / per_org).round() as u64).clamp(1, (d_area / range.0).max(1))
            } else {
                1
            };
            let mut orgs = Vec::with_capacity(m as usize);
            for j in 0..m {
                let size = (d_area * (j + 1)).div_ceil(m) - (d_area * j).div_ceil(m);
                orgs.push(self.orgs.len());
                make(self, seat, j as usize, m as usize, size);
            }
            areas.push(orgs);
        }
        Service {
            area_of_dept,
            areas,
        }
    }
}

/// Chooses the départements that seat an organisation and attaches every
/// other département to one. A département with `threshold` mandates is a
/// seat; a region, then a zone, without any seat but with enough in total
/// gets one at its largest département; if nothing qualifies, France's
/// largest is the only seat. The others join the largest seat of their
/// region, else of their zone, else of France. Returns the area of each
/// département and the seat of each area.
fn plan_areas(demand: &[u64; N_DEPTS], threshold: u64) -> (Vec<u16>, Vec<usize>) {
    let key = |d: &usize| (demand[*d], DEPTS[*d].pop_k, std::cmp::Reverse(*d));
    let region = |d: usize| DEPTS[d].region as usize;
    let zone = |d: usize| usize::from(DEPTS[d].region.zone());
    let mut seat = [false; N_DEPTS];
    for d in 0..N_DEPTS {
        seat[d] = demand[d] >= threshold;
    }
    for group in [&region as &dyn Fn(usize) -> usize, &zone] {
        let mut groups: Vec<usize> = (0..N_DEPTS).map(group).collect();
        groups.sort_unstable();
        groups.dedup();
        for g in groups {
            let members: Vec<usize> = (0..N_DEPTS).filter(|&d| group(d) == g).collect();
            let total: u64 = members.iter().map(|&d| demand[d]).sum();
            if total >= threshold
                && !members.iter().any(|&d| seat[d])
                && let Some(best) = members.iter().copied().max_by_key(key)
            {
                seat[best] = true;
            }
        }
    }
    if !seat.iter().any(|s| *s)
        && let Some(best) = (0..N_DEPTS).max_by_key(key)
    {
        seat[best] = true;
    }
    let seats: Vec<usize> = (0..N_DEPTS).filter(|&d| seat[d]).collect();
    let best_in =
        |same: &dyn Fn(usize) -> bool| seats.iter().copied().filter(|&s| same(s)).max_by_key(key);
    let area_of_dept = (0..N_DEPTS)
        .map(|d| {
            let host = if seat[d] {
                Some(d)
            } else {
                best_in(&|s| region(s) == region(d))
                    .or_else(|| best_in(&|s| zone(s) == zone(d)))
                    .or_else(|| best_in(&|_| true))
            };
            let host = host.unwrap_or(seats[0]);
            seats.iter().position(|&s| s == host).unwrap_or(0) as u16
        })
        .collect();
    (area_of_dept, seats)
}

/// Splits `total` items into `parts` even parts; returns the part of item
/// `o`, its index within the part, and the part's size.
pub fn part(o: u64, total: u64, parts: u64) -> (u64, u64, u64) {
    let (o, total, parts) = (u128::from(o), u128::from(total), u128::from(parts.max(1)));
    let j = o * parts / total;
    let start = (j * total).div_ceil(parts);
    let end = ((j + 1) * total).div_ceil(parts);
    (j as u64, (o - start) as u64, (end - start).max(1) as u64)
}

/// How many advisers (or sessions) share `size` items so that each holds
/// between `range.0` and `range.2`, close to `range.1`. Always at least one.
pub fn agents_for(size: u64, (min, target, max): Range) -> u64 {
    if size < min {
        return 1;
    }
    let ideal = (size as f64 / target as f64).round() as u64;
    ideal.clamp(size.div_ceil(max), size / min).max(1)
}

/// Splits `size` trainees into sessions of 10–25 (fewer only if there are
/// fewer than 10 trainees), of uneven sizes like real sessions, and returns
/// the running sums of their sizes.
pub fn session_ends(size: u64, h: u64) -> Vec<u64> {
    let (min, _, max) = SESSION_SIZE;
    let n = agents_for(size, SESSION_SIZE);
    let mut sizes: Vec<u64> = (0..n)
        .map(|j| (size * (j + 1)).div_ceil(n) - (size * j).div_ceil(n))
        .collect();
    // Move a few trainees between random pairs of sessions, within bounds.
    for r in 0..2 * n {
        let x = mix(h, r);
        let (a, b, delta) = ((x % n) as usize, ((x >> 20) % n) as usize, (x >> 40) % 7);
        if a != b && sizes[a] >= min + delta && sizes[b] + delta <= max {
            sizes[a] -= delta;
            sizes[b] += delta;
        }
    }
    let mut end = 0;
    sizes
        .into_iter()
        .map(|s| {
            end += s;
            end
        })
        .collect()
}

/// Département code on three characters, for organisation codes: 075, 02A, 974.
fn dept3(seat: usize) -> String {
    format!("{:0>3}", DEPTS[seat].code)
}

/// `FT-038` when the area has one organisation, `FT-038-1`, `FT-038-2`… otherwise.
fn numbered(kind: &str, seat: usize, j: usize, m: usize) -> String {
    if m == 1 {
        format!("{kind}-{}", dept3(seat))
    } else {
        format!("{kind}-{}-{}", dept3(seat), j + 1)
    }
}

/// Login prefix of an organisation: its code in lower case without the
/// first dash (`CE-038` → `ce038`), so logins name no person.
fn prefix(code: &str) -> String {
    code.to_ascii_lowercase().replacen('-', "", 1)
}

/// The place name of organisation `j` of `m` in a département: its main
/// town if alone, else its distinct communes in order, with Paris, Lyon and
/// Marseille by arrondissement.
fn label(seat: usize, j: usize, m: usize) -> String {
    let mut labels: Vec<String> = Vec::new();
    for (pc, name) in DEPTS[seat].communes {
        let l = match *name {
            "Paris" | "Lyon" | "Marseille" if m > 1 => {
                let n: u32 = pc[3..].parse().unwrap_or(1);
                if n == 1 {
                    format!("{name} 1er")
                } else {
                    format!("{name} {n}e")
                }
            }
            _ => (*name).to_string(),
        };
        if !labels.contains(&l) {
            labels.push(l);
        }
    }
    labels
        .get(j % labels.len().max(1))
        .cloned()
        .unwrap_or_else(|| DEPTS[seat].name.to_string())
}

/// "de Grenoble", "d'Angers", "du Mans", "des Abymes".
fn de(place: &str) -> String {
    if let Some(rest) = place.strip_prefix("Le ") {
        format!("du {rest}")
    } else if let Some(rest) = place.strip_prefix("Les ") {
        format!("des {rest}")
    } else if place.starts_with(['A', 'E', 'I', 'O', 'U', 'Y', 'É', 'È', 'Â', 'Î']) {
        format!("d'{place}")
    } else {
        format!("de {place}")
    }
}
