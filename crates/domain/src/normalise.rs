//! Normalisation of names before they are turned into blind indexes, so that
//! an exact search still finds "Lefèvre Jean-Pierre" typed as "LEFEVRE jean pierre".

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Lower-cases, removes accents, expands ligatures, and turns every run of
/// spaces, hyphens, apostrophes and dots into one space.
pub fn normalise_name(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    let mut pending_space = false;
    for c in input.nfkd() {
        if is_combining_mark(c) {
            continue;
        }
        if matches!(c, ' ' | '-' | '\'' | '’' | '.' | '\t') {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        match c {
            'œ' | 'Œ' => out.push_str("oe"),
            'æ' | 'Æ' => out.push_str("ae"),
            'ß' => out.push_str("ss"),
            'ø' | 'Ø' => out.push('o'),
            _ => out.extend(c.to_lowercase()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn variants_of_one_name_agree() {
        let forms = [
            "Jean-Pierre",
            "jean pierre",
            "JEAN  PIERRE",
            " Jéan-Pierre ",
        ];
        for f in forms {
            assert_eq!(normalise_name(f), "jean pierre", "{f}");
        }
        assert_eq!(normalise_name("Lætitia"), "laetitia");
        assert_eq!(normalise_name("Œillet"), "oeillet");
        assert_eq!(normalise_name("N'Diaye"), "n diaye");
        assert_eq!(normalise_name("Ç"), "c");
    }

    proptest! {
        #[test]
        fn idempotent(s in "\\PC{0,30}") {
            let once = normalise_name(&s);
            prop_assert_eq!(normalise_name(&once), once.clone());
            prop_assert!(!once.starts_with(' ') && !once.ends_with(' '));
        }
    }
}
