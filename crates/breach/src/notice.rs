//! The communication to each person concerned (GDPR Art. 34): one notice
//! per person, in French and in plain language, saying what was seen of
//! *their* data (which field groups, when, by which kind of organisation),
//! what they should do, and how to reach the DPO. Rendering is a pure
//! function of the person's exposure and of the incident's notice
//! context, so a notice can be rendered again, identical, whenever it is
//! sent or shown, and its digest proves which text the person received.
//!
//! The notice names no one: it is addressed "Madame, Monsieur". The letter
//! ([`letter_pdf`]) adds the recipient's name and postal address, which
//! only the dispatcher holds, for the envelope window.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str};
use rempart_domain::incident::IncidentId;
use rempart_domain::{FieldGroup, OrganisationKind};
use sha2::{Digest, Sha256};

use crate::report::{Controller, group_label, kind_label};
use crate::scope::{Exposure, NirSeen};

/// The version of the notice's wording. Stored with each queued notice:
/// a notice is only ever rendered again with the wording it was queued
/// with.
pub const WORDING: i64 = 1;

/// What one person's notice says of their exposure: what the ledger
/// recorded, nothing of the data itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeFacts {
    /// The incident.
    pub incident: IncidentId,
    /// The field groups shown (the NIR whatever its view).
    pub groups: Vec<FieldGroup>,
    /// How the NIR was shown, if it was.
    pub nir: Option<NirSeen>,
    /// How many consultations revealed their data.
    pub reads: u64,
    /// The first of them.
    pub first: DateTime<Utc>,
    /// The last of them.
    pub last: DateTime<Utc>,
    /// The kinds of organisation whose accounts were shown it.
    pub kinds: Vec<OrganisationKind>,
}

/// What the notices of one incident share: who sends them, and what was
/// done. Fixed when the notices are queued, so every later rendering is
/// the same text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeContext {
    /// The controller and its DPO's contact.
    pub controller: Controller,
    /// What was done to stop the breach, in a sentence for the persons.
    pub measures: String,
}

/// A rendered notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeText {
    /// The subject line (e-mail) or heading (letter, person's space).
    pub subject: String,
    /// The body, plain text, lines of at most [`LINE`] characters.
    pub body: String,
}

/// The longest line of a notice's body: readable in any mail client and
/// fits the letter's width.
pub const LINE: usize = 88;

impl NoticeFacts {
    /// The facts of a person's exposure, with the kinds of the
    /// organisations it names.
    pub fn of(
        incident: IncidentId,
        exposure: &Exposure,
        kinds: impl IntoIterator<Item = OrganisationKind>,
    ) -> Self {
        let mut kinds: Vec<OrganisationKind> = kinds.into_iter().collect();
        kinds.sort();
        kinds.dedup();
        NoticeFacts {
            incident,
            groups: exposure.groups.iter().collect(),
            nir: exposure.nir,
            reads: exposure.reads,
            first: exposure
                .first
                .0
                .to_datetime()
                .unwrap_or(DateTime::UNIX_EPOCH),
            last: exposure
                .last
                .0
                .to_datetime()
                .unwrap_or(DateTime::UNIX_EPOCH),
            kinds,
        }
    }

    /// The groups and the NIR's view in one integer, for storage: bit
    /// per group (identity 1, contact 2, NIR 4, status 8) and the view in
    /// bits 4-6 (1 token, 2 masked, 3 clear, 4 not recorded).
    pub fn groups_code(&self) -> i64 {
        let mut code = 0i64;
        for g in &self.groups {
            code |= group_bit(*g);
        }
        let view = match self.nir {
            None => 0,
            Some(NirSeen::Token) => 1,
            Some(NirSeen::Masked) => 2,
            Some(NirSeen::Clear) => 3,
            Some(NirSeen::NotRecorded) => 4,
        };
        code | (view << 4)
    }

    /// The kinds in one integer, a bit per kind in [`OrganisationKind::ALL`]
    /// order.
    pub fn kinds_code(&self) -> i64 {
        self.kinds
            .iter()
            .map(|k| {
                let i = OrganisationKind::ALL
                    .iter()
                    .position(|x| x == k)
                    .unwrap_or(0);
                1i64 << i
            })
            .fold(0, |a, b| a | b)
    }

    /// Facts back from their stored codes; `None` if a code is not one
    /// this version writes.
    pub fn from_codes(
        incident: IncidentId,
        groups: i64,
        kinds: i64,
        reads: u64,
        first: DateTime<Utc>,
        last: DateTime<Utc>,
    ) -> Option<Self> {
        if groups & !0x7f != 0 || kinds >> OrganisationKind::ALL.len() != 0 || kinds < 0 {
            return None;
        }
        let nir = match groups >> 4 {
            0 => None,
            1 => Some(NirSeen::Token),
            2 => Some(NirSeen::Masked),
            3 => Some(NirSeen::Clear),
            4 => Some(NirSeen::NotRecorded),
            _ => return None,
        };
        let groups_list: Vec<FieldGroup> = FieldGroup::ALL
            .iter()
            .copied()
            .filter(|g| groups & group_bit(*g) != 0)
            .collect();
        if groups_list.contains(&FieldGroup::Nir) != nir.is_some() {
            return None;
        }
        let kinds = OrganisationKind::ALL
            .iter()
            .enumerate()
            .filter(|(i, _)| kinds & (1 << i) != 0)
            .map(|(_, k)| *k)
            .collect();
        Some(NoticeFacts {
            incident,
            groups: groups_list,
            nir,
            reads,
            first,
            last,
            kinds,
        })
    }
}

/// A field group as the person's own, with its possessive.
fn your(g: FieldGroup) -> String {
    let possessive = match g {
        FieldGroup::Contact => "vos",
        FieldGroup::Identity | FieldGroup::Nir | FieldGroup::Status => "votre",
    };
    format!("{possessive} {}", group_label(g))
}

fn group_bit(g: FieldGroup) -> i64 {
    match g {
        FieldGroup::Identity => 1,
        FieldGroup::Contact => 2,
        FieldGroup::Nir => 4,
        FieldGroup::Status => 8,
    }
}

/// Appends `text` to `out`, wrapped at [`LINE`] characters, then a
/// newline; `indent` starts the continuation lines.
fn wrap(out: &mut String, text: &str, indent: &str) {
    let mut line = String::new();
    // Whether the line holds nothing but its indent.
    let mut fresh = true;
    for word in text.split_whitespace() {
        if !fresh && line.chars().count() + 1 + word.chars().count() > LINE {
            out.push_str(&line);
            out.push('\n');
            line = indent.to_string();
            fresh = true;
        }
        if !fresh {
            line.push(' ');
        }
        line.push_str(word);
        fresh = false;
    }
    out.push_str(&line);
    out.push('\n');
}

/// The notice for one person.
pub fn render(facts: &NoticeFacts, context: &NoticeContext) -> NoticeText {
    let mut body = String::new();
    let c = &context.controller;
    let kinds: Vec<&str> = facts.kinds.iter().map(|k| kind_label(*k)).collect();
    let by = match kinds.as_slice() {
        [] => "un organisme partenaire".to_string(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} et {last}", init.join(", ")),
    };
    body.push_str("Madame, Monsieur,\n\n");
    let period = if facts.first.date_naive() == facts.last.date_naive() {
        format!("le {}", facts.first.format("%d/%m/%Y"))
    } else {
        format!(
            "entre le {} et le {}",
            facts.first.format("%d/%m/%Y"),
            facts.last.format("%d/%m/%Y")
        )
    };
    wrap(
        &mut body,
        &format!(
            "Nous vous informons que des informations vous concernant ont été consultées sans autorisation {period}, au moyen d'accès détournés appartenant à {by}. Cette consultation a été détectée et arrêtée ; ce courrier vous dit ce qui a été vu et ce que nous vous conseillons de faire.",
        ),
        "",
    );
    body.push_str("\nCe qui a été vu de vos données :\n");
    for g in &facts.groups {
        let line = match (g, facts.nir) {
            (FieldGroup::Nir, Some(NirSeen::Token)) => {
                "- votre numéro de sécurité sociale, sous une forme codée qui ne permet pas de le retrouver".to_string()
            }
            (FieldGroup::Nir, Some(NirSeen::Masked)) => {
                "- une partie de votre numéro de sécurité sociale (sexe, année et mois de naissance), le reste masqué".to_string()
            }
            (FieldGroup::Nir, _) => "- votre numéro de sécurité sociale (NIR), en entier".to_string(),
            (g, _) => format!("- {}", your(*g)),
        };
        wrap(&mut body, &line, "  ");
    }
    let not_seen: Vec<String> = FieldGroup::ALL
        .iter()
        .filter(|g| !facts.groups.contains(g))
        .map(|g| your(*g))
        .collect();
    if !not_seen.is_empty() {
        wrap(
            &mut body,
            &format!("N'ont pas été vus : {}.", not_seen.join(" ; ")),
            "",
        );
    }
    wrap(
        &mut body,
        &format!(
            "Nombre de consultations : {}. Ce service ne contient ni vos coordonnées bancaires ni vos mots de passe.",
            facts.reads
        ),
        "",
    );
    body.push_str("\nCe que nous avons fait :\n");
    wrap(&mut body, &context.measures, "");
    body.push_str("\nCe que nous vous conseillons :\n");
    let mut advice = vec![
        "- Méfiez-vous des courriels, SMS et appels qui se présentent comme venant de France Travail ou d'un organisme partenaire et qui vous demandent vos identifiants, vos coordonnées bancaires ou un paiement : nous ne vous les demanderons jamais ainsi. Ne cliquez pas sur les liens ; en cas de doute, connectez-vous directement à votre espace personnel.".to_string(),
    ];
    let nir_in_clear = facts.nir.is_some_and(NirSeen::identifies);
    if nir_in_clear && facts.groups.contains(&FieldGroup::Identity) {
        advice.push(
            "- Votre identité et votre numéro de sécurité sociale ayant été vus, soyez attentif à tout courrier ou relevé inattendu (Assurance maladie, impôts, banque) : il peut signaler une usurpation d'identité. Si c'est le cas, déposez plainte et signalez-le à l'organisme concerné.".to_string(),
        );
    }
    advice.push(
        "- Pour vous faire aider face à un hameçonnage ou une escroquerie : cybermalveillance.gouv.fr ; signalez les SMS frauduleux au 33700 et les courriels sur signal-spam.fr ; Info Escroqueries : 0 805 805 817 (appel gratuit).".to_string(),
    );
    for a in &advice {
        wrap(&mut body, a, "  ");
    }
    body.push_str("\nPour nous joindre :\n");
    wrap(
        &mut body,
        &format!(
            "Le délégué à la protection des données de {} répond à vos questions et à vos demandes d'accès : {}. Vous pouvez aussi adresser une réclamation à la CNIL (cnil.fr).",
            c.name, c.dpo
        ),
        "",
    );
    let _ = write!(body, "\nRéférence : incident {}.\n", facts.incident);
    NoticeText {
        subject: format!(
            "{} : des informations vous concernant ont été consultées sans autorisation",
            c.name
        ),
        body,
    }
}

/// The notice's SHA-256, over its subject, a newline and its body: kept
/// with the notice to prove which text was sent.
pub fn digest(text: &NoticeText) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(text.subject.as_bytes());
    h.update(b"\n");
    h.update(text.body.as_bytes());
    h.finalize().into()
}

/// Why a letter cannot be typeset.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LetterError {
    /// A character has no glyph in the letter's font (Windows-1252).
    #[error("letter: a character of the {0} cannot be printed")]
    Unprintable(&'static str),
}

/// Text in the letter font's encoding (WinAnsi: Latin-1 plus a few
/// typographic signs), or `None` if a character has no glyph.
fn win_ansi(text: &str) -> Option<Vec<u8>> {
    text.chars()
        .map(|ch| match ch {
            '\u{20}'..='\u{7e}' | '\u{a0}'..='\u{ff}' => Some(ch as u8),
            '\u{2019}' => Some(0x92),
            '\u{2018}' => Some(0x91),
            '\u{201c}' => Some(0x93),
            '\u{201d}' => Some(0x94),
            '\u{2013}' => Some(0x96),
            '\u{2014}' => Some(0x97),
            '\u{2026}' => Some(0x85),
            '\u{20ac}' => Some(0x80),
            '\u{152}' => Some(0x8c),
            '\u{153}' => Some(0x9c),
            '\u{178}' => Some(0x9f),
            _ => None,
        })
        .collect()
}

/// An address line in the letter font's encoding, whatever its script: a
/// letter the font has no glyph for is written without its accents
/// (Unicode decomposition), as a few letters of their own (Ł, Đ, Ħ, ı)
/// by their base, else as `?`. Postal addresses are commonly written
/// without accents; a name must never stop a letter.
fn printable(text: &str) -> Vec<u8> {
    use unicode_normalization::UnicodeNormalization;
    let mut out = Vec::with_capacity(text.len());
    for ch in text.chars() {
        if let Some(b) = win_ansi(ch.encode_utf8(&mut [0; 4])) {
            out.extend(b);
            continue;
        }
        let own = match ch {
            'Ł' => Some('L'),
            'ł' => Some('l'),
            'Đ' => Some('D'),
            'đ' => Some('d'),
            'Ħ' => Some('H'),
            'ħ' => Some('h'),
            'ı' => Some('i'),
            _ => None,
        };
        let base: Vec<u8> = match own {
            Some(c) => vec![c as u8],
            None => std::iter::once(ch)
                .nfd()
                .filter_map(|c| win_ansi(c.encode_utf8(&mut [0; 4])))
                .flatten()
                .collect(),
        };
        if base.is_empty() {
            out.push(b'?');
        } else {
            out.extend(base);
        }
    }
    out
}

/// A4 in points, and the letter's layout.
const PAGE_W: f32 = 595.0;
const PAGE_H: f32 = 842.0;
const MARGIN: f32 = 56.0;
const LEADING: f32 = 12.5;

/// The notice as a one-person PDF letter: the recipient's lines (name,
/// street, postal code and commune) where a window envelope shows them,
/// then the notice, on as many A4 pages as it takes. Helvetica, one of
/// the fonts every PDF reader has, so nothing is embedded.
pub fn letter_pdf(text: &NoticeText, recipient: &[String]) -> Result<Vec<u8>, LetterError> {
    let mut lines: Vec<(f32, Vec<u8>)> = Vec::new();
    for r in recipient {
        lines.push((11.0, printable(r)));
    }
    let address_lines = lines.len();
    let subject = win_ansi(&text.subject).ok_or(LetterError::Unprintable("subject"))?;
    let mut body = Vec::new();
    for l in text.body.lines() {
        body.push(win_ansi(l).ok_or(LetterError::Unprintable("notice"))?);
    }
    // Page 1: the address block at the envelope window (right, 50 mm from
    // the top), the subject, then the body; later pages: the body on.
    let first_page_body_top = PAGE_H - 260.0;
    let lines_first = ((first_page_body_top - MARGIN) / LEADING) as usize;
    let lines_other = ((PAGE_H - 2.0 * MARGIN) / LEADING) as usize;
    let mut pages: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
    for l in body {
        let cap = if pages.len() == 1 {
            lines_first
        } else {
            lines_other
        };
        if pages.last().is_some_and(|p| p.len() >= cap) {
            pages.push(Vec::new());
        }
        if let Some(p) = pages.last_mut() {
            p.push(l);
        }
    }
    let mut pdf = Pdf::new();
    let catalog = Ref::new(1);
    let tree = Ref::new(2);
    let font = Ref::new(3);
    let bold = Ref::new(4);
    let page_ref = |i: usize| Ref::new(5 + 2 * i as i32);
    let content_ref = |i: usize| Ref::new(6 + 2 * i as i32);
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree)
        .kids((0..pages.len()).map(page_ref))
        .count(pages.len() as i32);
    pdf.type1_font(font)
        .base_font(Name(b"Helvetica"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    pdf.type1_font(bold)
        .base_font(Name(b"Helvetica-Bold"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    for (i, page_lines) in pages.iter().enumerate() {
        let mut page = pdf.page(page_ref(i));
        page.media_box(Rect::new(0.0, 0.0, PAGE_W, PAGE_H));
        page.parent(tree);
        page.contents(content_ref(i));
        let mut resources = page.resources();
        let mut fonts = resources.fonts();
        fonts.pair(Name(b"F1"), font);
        fonts.pair(Name(b"F2"), bold);
        fonts.finish();
        resources.finish();
        page.finish();
        let mut content = Content::new();
        content.begin_text();
        if i == 0 {
            content.set_font(Name(b"F1"), 11.0);
            content.set_leading(13.0);
            content.next_line(320.0, PAGE_H - 150.0);
            for (_, l) in lines.iter().take(address_lines) {
                content.show(Str(l));
                content.next_line_using_leading();
            }
            content.end_text();
            content.begin_text();
            content.set_font(Name(b"F2"), 11.0);
            content.next_line(MARGIN, PAGE_H - 240.0);
            content.show(Str(&subject));
            content.end_text();
            content.begin_text();
            content.set_font(Name(b"F1"), 9.5);
            content.set_leading(LEADING);
            content.next_line(MARGIN, first_page_body_top);
        } else {
            content.set_font(Name(b"F1"), 9.5);
            content.set_leading(LEADING);
            content.next_line(MARGIN, PAGE_H - MARGIN);
        }
        for l in page_lines {
            content.show(Str(l));
            content.next_line_using_leading();
        }
        content.end_text();
        pdf.stream(content_ref(i), &content.finish());
    }
    Ok(pdf.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rempart_ledger::leaf::FieldGroups;
    use rempart_ledger::{OrganisationId, Timestamp};

    pub(crate) fn context() -> NoticeContext {
        NoticeContext {
            controller: Controller {
                name: "France Travail".into(),
                dpo: "dpo@example.org".into(),
            },
            measures: "Les comptes utilisés ont été suspendus le jour même.".into(),
        }
    }

    fn exposure(groups: &[FieldGroup], view: rempart_domain::NirView) -> Exposure {
        let at = |d: u32| {
            Timestamp::from_datetime(
                chrono::NaiveDate::from_ymd_opt(2026, 3, d)
                    .and_then(|d| d.and_hms_opt(9, 0, 0))
                    .map(|d| d.and_utc())
                    .unwrap_or_default(),
            )
        };
        Exposure {
            groups: FieldGroups::of(groups),
            nir: NirSeen::of(FieldGroups::of(groups).with_nir_view(view)),
            reads: 3,
            first: (at(2), 10),
            last: (at(4), 40),
            organisations: vec![OrganisationId::new(7)],
        }
    }

    #[test]
    fn a_notice_says_what_was_seen_of_the_person_and_nothing_else() {
        let e = exposure(
            &[FieldGroup::Identity, FieldGroup::Contact, FieldGroup::Nir],
            rempart_domain::NirView::Masked,
        );
        let facts = NoticeFacts::of(IncidentId::new(4), &e, [OrganisationKind::CapEmploi]);
        let n = render(&facts, &context());
        assert!(n.body.starts_with("Madame, Monsieur,"));
        assert!(n.body.contains("entre le 02/03/2026 et le 04/03/2026"));
        assert!(n.body.contains("un organisme Cap emploi"));
        assert!(n.body.contains("votre identité"));
        assert!(
            n.body
                .contains("une partie de votre numéro de sécurité sociale")
        );
        assert!(
            n.body
                .contains("N'ont pas été vus : votre situation d'inscription")
        );
        assert!(n.body.contains("Nombre de consultations : 3."));
        assert!(n.body.contains("dpo@example.org"));
        assert!(n.body.contains("Référence : incident 4."));
        // Masked NIR: no identity-theft paragraph.
        assert!(!n.body.contains("usurpation"));
        for line in n.body.lines() {
            assert!(line.chars().count() <= LINE, "{line}");
        }
        // The same facts, the same text: the digest is stable.
        assert_eq!(digest(&render(&facts, &context())), digest(&n));
        let clear = exposure(
            &[FieldGroup::Identity, FieldGroup::Nir],
            rempart_domain::NirView::Clear,
        );
        let n2 = render(
            &NoticeFacts::of(IncidentId::new(4), &clear, [OrganisationKind::CapEmploi]),
            &context(),
        );
        assert!(n2.body.contains("en entier"));
        assert!(n2.body.contains("usurpation"));
        assert_ne!(digest(&n2), digest(&n));
    }

    #[test]
    fn a_letter_is_a_pdf_with_the_address_in_any_script() {
        let e = exposure(&[FieldGroup::Identity], rempart_domain::NirView::None);
        let n = render(
            &NoticeFacts::of(IncidentId::new(1), &e, [OrganisationKind::MissionLocale]),
            &context(),
        );
        let pdf = letter_pdf(
            &n,
            &[
                "Mme Éloïse Dupré".into(),
                "12 rue de l'Église".into(),
                "38000 Grenoble".into(),
            ],
        )
        .unwrap();
        assert!(pdf.starts_with(b"%PDF-"));
        assert!(pdf.windows(5).any(|w| w == b"%%EOF"));
        // Text is written in the font's encoding, not as UTF-8: "Dupré"
        // with é as 0xE9 (a hex string, for its byte above 0x7F).
        assert!(pdf.windows(10).any(|w| w == b"44757072E9"));
        // A name in another script never stops a letter: without its
        // accents, or `?`.
        assert_eq!(printable("Łukasz Wałęsa"), b"Lukasz Walesa");
        assert_eq!(printable("Şule Ğüneş"), b"Sule G\xfcnes");
        assert_eq!(printable("Dupré 漢"), b"Dupr\xe9 ?");
        assert!(letter_pdf(&n, &["Dupré 漢".into()]).is_ok());
        // The notice's own text is ours: a glyph missing there is a bug,
        // refused rather than printed wrong.
        let mut bad = n.clone();
        bad.body.push('漢');
        assert_eq!(
            letter_pdf(&bad, &[]),
            Err(LetterError::Unprintable("notice"))
        );
    }

    proptest! {
        #[test]
        fn facts_round_trip_through_their_codes(
            groups in proptest::sample::subsequence(FieldGroup::ALL.to_vec(), 0..=4),
            view in 0u8..4,
            kinds in proptest::sample::subsequence(OrganisationKind::ALL.to_vec(), 0..=5),
            reads in 1u64..1_000_000,
        ) {
            let view = [
                rempart_domain::NirView::Token,
                rempart_domain::NirView::Masked,
                rempart_domain::NirView::Clear,
                rempart_domain::NirView::None,
            ][view as usize];
            let mut e = exposure(&groups, view);
            e.reads = reads;
            let facts = NoticeFacts::of(IncidentId::new(9), &e, kinds.clone());
            let back = NoticeFacts::from_codes(
                IncidentId::new(9),
                facts.groups_code(),
                facts.kinds_code(),
                facts.reads,
                facts.first,
                facts.last,
            );
            prop_assert_eq!(back, Some(facts));
        }

        #[test]
        fn stray_codes_are_refused_not_misread(groups in any::<i64>(), kinds in any::<i64>()) {
            let now = DateTime::UNIX_EPOCH;
            if let Some(f) = NoticeFacts::from_codes(IncidentId::new(1), groups, kinds, 1, now, now) {
                prop_assert_eq!(f.groups_code(), groups);
                prop_assert_eq!(f.kinds_code(), kinds);
            }
        }
    }
}
