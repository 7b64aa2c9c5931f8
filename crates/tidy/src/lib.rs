//! Tidy checks of the workspace's structure, run with the tests (the idea
//! of rust-analyzer's tidy tests): the design is written in
//! `ARCHITECTURE.md`, and these tests fail when the code stops matching it.
//!
//! - **Crate dependencies.** The block under `### Crate dependencies` in
//!   `ARCHITECTURE.md` lists, for every crate, the workspace crates it may
//!   depend on (normal dependencies). A crate's `Cargo.toml` must list
//!   exactly those: a new edge between crates is a design change, made in
//!   the document in the same commit.
//! - **No file cycles.** Inside a crate, the modules (files) that use each
//!   other through `crate::…` paths form no cycle. The crate root
//!   (`lib.rs`, `main.rs`) is exempt: it declares, re-exports and wires
//!   the modules.
//!
//! This crate has no code of its own; it exists for its tests.

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// The crates' directories, by package name.
    fn crates() -> BTreeMap<String, PathBuf> {
        let mut out = BTreeMap::new();
        for entry in std::fs::read_dir(workspace().join("crates")).unwrap() {
            let dir = entry.unwrap().path();
            let manifest = dir.join("Cargo.toml");
            if manifest.is_file() {
                let doc: toml::Table = std::fs::read_to_string(&manifest).unwrap().parse().unwrap();
                let name = doc["package"]["name"].as_str().unwrap().to_string();
                out.insert(name, dir);
            }
        }
        out
    }

    /// The workspace crates a crate depends on (normal dependencies only).
    fn dependencies(dir: &Path) -> BTreeSet<String> {
        let doc: toml::Table = std::fs::read_to_string(dir.join("Cargo.toml"))
            .unwrap()
            .parse()
            .unwrap();
        doc.get("dependencies")
            .and_then(|d| d.as_table())
            .map(|t| {
                t.keys()
                    .filter(|k| k.starts_with("rempart-"))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The rules ARCHITECTURE.md states: `crate: dep, dep` lines in the
    /// fenced block under `### Crate dependencies` (`crate:` alone for none).
    fn stated_rules() -> BTreeMap<String, BTreeSet<String>> {
        let text = std::fs::read_to_string(workspace().join("ARCHITECTURE.md")).unwrap();
        let section = text
            .split_once("### Crate dependencies")
            .expect("ARCHITECTURE.md has a `### Crate dependencies` section")
            .1;
        let block = section
            .split("```")
            .nth(1)
            .expect("the section holds a fenced block");
        let mut rules = BTreeMap::new();
        for line in block.lines().skip(1) {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (name, deps) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("`{line}`: expected `crate: dep, dep`"));
            let deps = deps
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(str::to_string)
                .collect();
            rules.insert(name.trim().to_string(), deps);
        }
        rules
    }

    #[test]
    fn every_crate_depends_on_exactly_what_architecture_md_states() {
        let rules = stated_rules();
        let crates = crates();
        let mut problems = Vec::new();
        for (name, dir) in &crates {
            let Some(allowed) = rules.get(name) else {
                problems.push(format!(
                    "{name}: not in ARCHITECTURE.md's crate dependencies"
                ));
                continue;
            };
            let actual = dependencies(dir);
            for extra in actual.difference(allowed) {
                problems.push(format!(
                    "{name} depends on {extra}, which ARCHITECTURE.md does not allow"
                ));
            }
            for missing in allowed.difference(&actual) {
                problems.push(format!(
                    "ARCHITECTURE.md says {name} depends on {missing}, its Cargo.toml does not"
                ));
            }
        }
        for name in rules.keys() {
            if !crates.contains_key(name) {
                problems.push(format!("ARCHITECTURE.md names {name}, no such crate"));
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn the_domain_crate_does_no_io() {
        let doc: toml::Table =
            std::fs::read_to_string(workspace().join("crates/domain/Cargo.toml"))
                .unwrap()
                .parse()
                .unwrap();
        let deps = doc["dependencies"].as_table().unwrap();
        for io in [
            "tokio",
            "rusqlite",
            "tokio-postgres",
            "reqwest",
            "axum",
            "hyper",
        ] {
            assert!(!deps.contains_key(io), "domain depends on {io}");
        }
    }

    /// A crate's modules, by path (`a::b`; the root is ""), and their code
    /// without test modules and comments.
    fn modules(src: &Path) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut stack = vec![src.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                    continue;
                }
                let rel = path.strip_prefix(src).unwrap().with_extension("");
                let mut parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if matches!(
                    parts.last().map(String::as_str),
                    Some("mod" | "lib" | "main")
                ) {
                    parts.pop();
                }
                let text = std::fs::read_to_string(&path).unwrap();
                // Code only: test modules and comments (a doc link to a
                // sibling is no dependency) are left out.
                let code = text
                    .split("#[cfg(test)]")
                    .next()
                    .unwrap_or("")
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .collect::<Vec<_>>()
                    .join("\n");
                out.insert(parts.join("::"), code);
            }
        }
        out
    }

    /// The module paths named after `crate::` in `code`, including those
    /// inside `crate::{a, b::c}`.
    fn crate_paths(code: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for part in group[..end].split(',') {
                    out.push(path_of(part.trim()));
                }
            } else {
                out.push(path_of(rest));
            }
        }
        out
    }

    fn path_of(text: &str) -> String {
        text.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect::<String>()
            .trim_end_matches(':')
            .to_string()
    }

    /// The edges between non-root modules: `from` uses the longest module
    /// prefix of a `crate::` path it names.
    fn edges(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, code) in mods {
            if from.is_empty() {
                continue;
            }
            for path in crate_paths(code) {
                let segs: Vec<&str> = path.split("::").collect();
                let target = (1..=segs.len())
                    .rev()
                    .map(|n| segs[..n].join("::"))
                    .find(|m| mods.contains_key(m));
                if let Some(to) = target
                    && &to != from
                    && !to.starts_with(&format!("{from}::"))
                    && !from.starts_with(&format!("{to}::"))
                {
                    edges.entry(from.clone()).or_default().insert(to);
                }
            }
        }
        edges
    }

    /// A cycle through `start`, if any (depth-first).
    fn cycle_from(start: &str, edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
        let mut path = vec![start.to_string()];
        let mut seen = BTreeSet::new();
        fn walk(
            start: &str,
            path: &mut Vec<String>,
            seen: &mut BTreeSet<String>,
            edges: &BTreeMap<String, BTreeSet<String>>,
        ) -> bool {
            let Some(next) = edges.get(path.last().unwrap()) else {
                return false;
            };
            for n in next {
                if n == start {
                    path.push(n.clone());
                    return true;
                }
                if seen.insert(n.clone()) {
                    path.push(n.clone());
                    if walk(start, path, seen, edges) {
                        return true;
                    }
                    path.pop();
                }
            }
            false
        }
        walk(start, &mut path, &mut seen, edges).then_some(path)
    }

    #[test]
    fn no_crate_has_a_file_cycle() {
        let mut problems = Vec::new();
        for (name, dir) in crates() {
            let mods = modules(&dir.join("src"));
            let edges = edges(&mods);
            let mut reported = BTreeSet::new();
            for m in mods.keys() {
                if reported.contains(m) {
                    continue;
                }
                if let Some(cycle) = cycle_from(m, &edges) {
                    reported.extend(cycle.iter().cloned());
                    problems.push(format!("{name}: {}", cycle.join(" → ")));
                }
            }
        }
        assert!(problems.is_empty(), "file cycles:\n{}", problems.join("\n"));
    }

    #[test]
    fn the_cycle_check_sees_a_cycle_and_grouped_paths() {
        let mods: BTreeMap<String, String> = [
            ("".to_string(), "use crate::a::X;".to_string()),
            ("a".to_string(), "use crate::{b::Y, Z};".to_string()),
            ("b".to_string(), "fn f() { crate::a::g() }".to_string()),
            ("c".to_string(), "use crate::a;".to_string()),
        ]
        .into_iter()
        .collect();
        let edges = edges(&mods);
        assert_eq!(
            cycle_from("a", &edges),
            Some(vec!["a".to_string(), "b".to_string(), "a".to_string()])
        );
        assert_eq!(cycle_from("c", &edges), None);
        assert!(!edges.contains_key(""), "the root is exempt");
    }
}
