//! Errors of the authorization stage. Every message names the file, the line
//! and column when Cedar gives them, and the reason; none carries a personal
//! value (requests are built from ids and codes only).

use std::fmt;
use std::path::PathBuf;

use miette::Diagnostic;

/// A place in a policy or schema file, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// One problem found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file's name as given to the loader (`default.cedar`, a path…).
    pub file: String,
    pub location: Option<Location>,
    /// Cedar's reason, with its hint when it has one.
    pub message: String,
    /// The policy concerned, for type errors.
    pub policy: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(at) = self.location {
            write!(f, ":{}:{}", at.line, at.column)?;
        }
        if let Some(policy) = &self.policy {
            write!(f, " (policy {policy})")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A list of problems, shown one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.0 {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no policy file (*.cedar) in {}", dir.display())]
    NoPolicies { dir: PathBuf },
    #[error("invalid Cedar schema:{0}")]
    Schema(Problems),
    #[error("the schema does not declare the action `{action}` that Rempart uses")]
    MissingAction { action: &'static str },
    #[error("syntax error in a policy file:{0}")]
    Syntax(Problems),
    #[error("policy file rejected:{0}")]
    Unsupported(Problems),
    #[error("policies do not type-check against the schema:{0}")]
    Validation(Problems),
    /// The request could not be turned into Cedar entities or context.
    #[error("cannot build the authorization request: {0}")]
    Request(String),
    /// A policy failed while being evaluated. The request is denied (fail
    /// closed): a failing `forbid` must never let data out.
    #[error("policy evaluation failed, request denied: {0}")]
    Evaluation(String),
}

/// Turns a Cedar diagnostic (and those related to it) into problems located
/// in `src`.
pub(crate) fn problems_of(diag: &dyn Diagnostic, file: &str, src: &str) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut related = diag.related().map(|r| r.collect::<Vec<_>>());
    match related.as_mut() {
        Some(list) if !list.is_empty() => {
            for d in list.iter() {
                out.push(problem_of(*d, file, src, None));
            }
        }
        _ => out.push(problem_of(diag, file, src, None)),
    }
    out
}

pub(crate) fn problem_of(
    diag: &dyn Diagnostic,
    file: &str,
    src: &str,
    policy: Option<String>,
) -> Problem {
    let location = diag
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| locate(src, label.offset()));
    let mut message = diag.to_string();
    if let Some(help) = diag.help() {
        message.push_str(" (");
        message.push_str(&help.to_string());
        message.push(')');
    }
    Problem {
        file: file.to_string(),
        location,
        message,
        policy,
    }
}

/// Line and column (1-based, in characters) of a byte offset.
pub(crate) fn locate(src: &str, offset: usize) -> Location {
    let mut end = offset.min(src.len());
    while !src.is_char_boundary(end) {
        end -= 1;
    }
    let before = &src[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Location {
        line,
        column: before[line_start..].chars().count() + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_counts_lines_and_characters() {
        let src = "ab\ncé\nxyz";
        assert_eq!(locate(src, 0), Location { line: 1, column: 1 });
        assert_eq!(locate(src, 3), Location { line: 2, column: 1 });
        assert_eq!(locate(src, 6), Location { line: 2, column: 3 });
        assert_eq!(locate(src, 7), Location { line: 3, column: 1 });
        assert_eq!(locate(src, 999), Location { line: 3, column: 4 });
    }
}
