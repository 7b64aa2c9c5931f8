//! The `rempart` binary end to end: the README's first command, imports
//! with bad lines, re-imports, interrupted imports, and a search of every
//! stored byte for the plaintext that went in — on SQLite and PostgreSQL.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rempart_testdb::TestDatabase;

const TODAY: &str = "2026-11-01";

fn rempart(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rempart"))
        .args(args)
        .env_remove("REMPART_KEYS")
        .env_remove("REMPART_DATABASE_URL")
        .env_remove("REMPART_DATA")
        .output()
        .expect("the rempart binary runs")
}

fn ok(args: &[&str]) -> String {
    let out = rempart(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "rempart {args:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-qAtc", sql])
        .output()
        .expect("psql must be installed (postgresql-client)");
    assert!(
        out.status.success(),
        "psql failed (is PostgreSQL reachable at {url}?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn generate(dir: &Path, persons: u32) -> PathBuf {
    let out = dir.join("csv");
    ok(&[
        "generate",
        "--persons",
        &persons.to_string(),
        "--seed",
        "11",
        "--today",
        TODAY,
        "--out",
        s(&out),
    ]);
    out
}

fn import(
    data: &Path,
    db: Option<&str>,
    rejects: &Path,
    inputs: &[&Path],
    extra: &[&str],
) -> Output {
    let mut args = vec![
        "import",
        "--data",
        s(data),
        "--today",
        TODAY,
        "--rejects",
        s(rejects),
    ];
    if let Some(url) = db {
        args.extend(["--database", url]);
    }
    args.extend_from_slice(extra);
    args.extend(inputs.iter().map(|p| s(p)));
    rempart(&args)
}

fn init(data: &Path, db: Option<&str>) {
    let mut args = vec!["init", "--data", s(data)];
    if let Some(url) = db {
        args.extend(["--database", url]);
    }
    ok(&args);
}

/// Persons in the registry, from `rempart inventory`.
fn stored_persons(data: &Path, db: Option<&str>) -> u64 {
    let mut args = vec!["inventory", "--data", s(data)];
    if let Some(url) = db {
        args.extend(["--database", url]);
    }
    let out = ok(&args);
    out.lines()
        .find_map(|l| l.trim_start().strip_prefix("persons "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no persons line in:\n{out}"))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The numbers of a summary line: "persons.csv  N lines … X inserted, Y updated, Z unchanged, R rejected".
fn counts(summary: &str, file: &str) -> (u64, u64, u64, u64) {
    let line = summary
        .lines()
        .find(|l| l.starts_with(file))
        .unwrap_or_else(|| panic!("no {file} line in:\n{summary}"));
    let num = |word: &str| -> u64 {
        let before = &line[..line.find(word).unwrap()];
        before.split_whitespace().last().unwrap().parse().unwrap()
    };
    (
        num(" inserted"),
        num(" updated"),
        num(" unchanged"),
        num(" rejected"),
    )
}

#[test]
fn readme_demo_runs() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let demo_args = |d: &Path| {
        vec![
            "demo".to_string(),
            "--dir".into(),
            s(d).into(),
            "--persons".into(),
            "3000".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--no-serve".into(),
        ]
    };
    let args = demo_args(&demo);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(&args);
    assert!(out.contains("persons") && out.contains("3000"), "{out}");
    assert!(out.contains("bytes per person"), "{out}");
    // The server answered a real consultation, partner view.
    assert!(out.contains("HTTP 200 OK"), "{out}");
    assert!(out.contains("NIR masked"), "{out}");
    assert!(out.contains("Authorization: Bearer"), "{out}");
    // Running it again keeps the keys and changes nothing.
    let again = ok(&args);
    assert!(again.contains("already exists"), "{again}");
    let (inserted, updated, _, rejected) = counts(&again, "persons.csv");
    assert_eq!((inserted, updated, rejected), (0, 0, 0), "{again}");
}

/// `rempart bench auth` measures real hashes, real proofs and real passkey
/// assertions and says so in its RESULT line.
#[test]
fn bench_auth_prints_its_figures() {
    let out = ok(&[
        "bench",
        "auth",
        "--passwords",
        "1",
        "--proofs",
        "3",
        "--passkeys",
        "3",
    ]);
    let result = out
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line in {out}"));
    for key in [
        "argon2_hash_ms=",
        "argon2_verify_ms=",
        "argon2_unknown_ms=",
        "proof_us=",
        "passkey_verify_us=",
    ] {
        let value: f64 = result
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} missing in {result}"))
            .parse()
            .unwrap();
        assert!(value > 0.0, "{key} in {result}");
    }
    assert!(out.contains("argon2id m=19456 KiB t=2 p=1"), "{out}");
}

#[test]
fn a_broken_policy_file_stops_start_up_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("rempart.cedarschema"),
        rempart_policy_schema(),
    )
    .unwrap();
    // Line 3 names an attribute the schema does not have.
    std::fs::write(
        policies.join("local.cedar"),
        "// local rules\n@id(\"bad\")\npermit (principal, action, resource) when { principal.nickname == \"x\" };\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let out = rempart(&[
        "serve",
        "--data",
        s(&data),
        "--listen",
        "127.0.0.1:0",
        "--policies",
        s(&policies),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("local.cedar:3:"), "{stderr}");
    assert!(stderr.contains("bad"), "{stderr}");
    assert!(stderr.contains("nickname"), "{stderr}");
    // Nothing was started: no data directory was created.
    assert!(!data.exists());
}

fn rempart_policy_schema() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/policies/rempart.cedarschema"),
    )
    .unwrap()
}

#[test]
fn init_makes_private_keys_and_never_overwrites_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    init(&data, None);
    let keys = data.join("keys.json");
    let before = std::fs::read(&keys).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
    init(&data, None);
    assert_eq!(
        std::fs::read(&keys).unwrap(),
        before,
        "keys must survive a second init"
    );
}

/// Corrupts about 1% of the lines, one way each, and returns (line number → expected field).
fn corrupt(persons_csv: &Path) -> Vec<(u64, &'static str)> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(persons_csv)
        .unwrap();
    let rows: Vec<csv::ByteRecord> = reader.byte_records().map(|r| r.unwrap()).collect();
    let mut out = Vec::new();
    let mut expected = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let line = i as u64 + 1;
        let mut fields: Vec<Vec<u8>> = row.iter().map(<[u8]>::to_vec).collect();
        if i > 0 && i % 100 == 50 {
            let kind = (i / 100) % 7;
            let field = match kind {
                0 => {
                    // Wrong NIR key.
                    let k = &mut fields[1];
                    let last = k.len() - 1;
                    k[last] = if k[last] == b'9' { b'0' } else { k[last] + 1 };
                    "nir"
                }
                1 => {
                    fields[4] = b"1987-02-30".to_vec();
                    "date_naissance"
                }
                2 => {
                    fields[2] = Vec::new();
                    "nom"
                }
                3 => {
                    fields[3] = vec![b'A', 0xC3, 0x28, b'b'];
                    "prenom"
                }
                4 => {
                    fields[7] = "rue très longue ".repeat(20).into_bytes();
                    "adresse"
                }
                5 => {
                    // Duplicate identifier: the ft_id of the line before.
                    fields[0] = rows[i - 1].get(0).unwrap().to_vec();
                    "ft_id"
                }
                _ => {
                    fields.pop();
                    ""
                }
            };
            expected.push((line, field));
        }
        out.push(fields);
    }
    let mut w = csv::WriterBuilder::new()
        .flexible(true)
        .from_path(persons_csv)
        .unwrap();
    for f in out {
        // Wrong column count must survive the writer: use flexible output.
        w.write_byte_record(&csv::ByteRecord::from(f)).unwrap();
    }
    w.flush().unwrap();
    expected
}

fn read_rejects(path: &Path) -> Vec<(String, u64, String, String)> {
    let mut r = csv::Reader::from_path(path).unwrap();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            (
                rec[0].to_string(),
                rec[1].parse().unwrap(),
                rec[2].to_string(),
                rec[3].to_string(),
            )
        })
        .collect()
}

fn bad_lines_scenario(db: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let csv_dir = generate(dir.path(), 5000);
    let persons = csv_dir.join("persons.csv");
    let expected = corrupt(&persons);
    assert_eq!(expected.len(), 50);
    let rejects = dir.path().join("rejects.csv");

    // --strict on a fresh store: fails and writes no person.
    let strict_data = dir.path().join("strict");
    init(&strict_data, db);
    let strict = import(&strict_data, db, &rejects, &[&csv_dir], &["--strict"]);
    assert!(!strict.status.success(), "--strict must fail");
    assert!(
        String::from_utf8_lossy(&strict.stderr).contains("nothing was written"),
        "{}",
        String::from_utf8_lossy(&strict.stderr)
    );
    assert_eq!(stored_persons(&strict_data, db), 0);

    let data = dir.path().join("data");
    init(&data, db);
    let first = import(&data, db, &rejects, &[&csv_dir], &[]);
    let summary = stdout(&first);
    assert!(
        first.status.success(),
        "{summary}\n{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let (inserted, updated, unchanged, rejected) = counts(&summary, "persons.csv");
    assert_eq!(
        (inserted, updated, unchanged, rejected),
        (4950, 0, 0, 50),
        "{summary}"
    );

    // Each bad line is reported once, with its line number and the column at fault.
    let report: Vec<_> = read_rejects(&rejects)
        .into_iter()
        .filter(|r| r.0.ends_with("persons.csv"))
        .collect();
    assert_eq!(report.len(), 50, "{report:?}");
    for (line, field) in &expected {
        let r = report
            .iter()
            .find(|r| r.1 == *line)
            .unwrap_or_else(|| panic!("line {line} not reported: {report:?}"));
        assert_eq!(r.2, *field, "line {line}: {r:?}");
        assert!(!r.3.is_empty());
    }
    // The report holds no values: no NIR-like run of 13+ digits, no e-mail.
    let text = std::fs::read_to_string(&rejects).unwrap();
    assert!(!text.contains('@'));
    assert!(
        !text
            .as_bytes()
            .windows(13)
            .any(|w| w.iter().all(u8::is_ascii_digit))
    );

    // Importing again changes nothing.
    let again = import(&data, db, &rejects, &[&csv_dir], &[]);
    let (inserted, updated, unchanged, rejected) = counts(&stdout(&again), "persons.csv");
    assert_eq!((inserted, updated, unchanged, rejected), (0, 0, 4950, 50));
    let (m_ins, _, m_unch, _) = counts(&stdout(&again), "mandates.csv");
    assert_eq!(m_ins, 0);
    assert!(m_unch > 0);

    let mut verify = vec!["keys", "verify", "--data", s(&data)];
    if let Some(u) = db {
        verify.extend(["--database", u]);
    }
    let v = ok(&verify);
    assert!(
        v.starts_with("4950 persons open, 0 shredded, 0 failed"),
        "{v}"
    );
}

#[test]
fn bad_lines_are_reported_and_good_ones_stored_sqlite() {
    bad_lines_scenario(None);
}

#[test]
fn bad_lines_are_reported_and_good_ones_stored_postgres() {
    let db = TestDatabase::create("rempart_t");
    bad_lines_scenario(Some(&db.url));
}

#[test]
fn an_interrupted_import_can_simply_be_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let csv_dir = generate(dir.path(), 40_000);
    let data = dir.path().join("data");
    init(&data, None);
    let rejects = dir.path().join("rejects.csv");
    let persons = csv_dir.join("persons.csv");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rempart"))
        .args([
            "import",
            "--data",
            s(&data),
            "--today",
            TODAY,
            "--batch",
            "500",
            "--rejects",
            s(&rejects),
            s(&persons),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let _ = child.kill();
    let _ = child.wait();
    let out = import(&data, None, &rejects, &[&persons], &[]);
    assert!(out.status.success());
    let (inserted, updated, unchanged, rejected) = counts(&stdout(&out), "persons.csv");
    assert_eq!(inserted + unchanged, 40_000, "{}", stdout(&out));
    assert_eq!((updated, rejected), (0, 0));
    assert_eq!(stored_persons(&data, None), 40_000);
}

/// One HTTP/1.1 GET on a fresh connection: (status, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// `rempart bench floor` serves the server's own no-op beside durable
/// appends to a throwaway ledger, which it deletes when it stops; the data
/// directory's own ledger receives no leaf.
#[test]
fn bench_floor_appends_to_a_throwaway_ledger_only() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    init(&data, None);
    let mut child = Command::new(env!("CARGO_BIN_EXE_rempart"))
        .args([
            "bench",
            "floor",
            "--data",
            s(&data),
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_string();
    assert_eq!(http_get(&addr, "/api/v1/health/live").0, 200);
    for i in 0..3 {
        let (status, body) = http_get(&addr, "/bench/ledger-append");
        assert_eq!((status, body), (200, format!("{{\"index\":{i}}}")));
    }
    let stopped = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(child.wait().unwrap().success(), "{rest:?}");
    assert!(
        rest.iter().any(|l| l == "3 throwaway leaves appended"),
        "{rest:?}"
    );
    let left: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("bench-floor"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let leaves: i64 = rusqlite_open(&data.join("ledger.db"))
        .query_row("SELECT count(*) FROM leaf", [], |r| r.get(0))
        .unwrap();
    assert_eq!(leaves, 0, "the real ledger received nothing");
}

/// Plaintext that went into the store, from the first `n` persons: both
/// names, NIR, e-mail, phone as typed and as normalised. Values under 5
/// bytes are left out: random ciphertext contains short strings by chance.
fn sample_values(persons_csv: &Path, n: usize) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut r = csv::Reader::from_path(persons_csv).unwrap();
    let mut values = HashSet::new();
    let mut normalised = HashSet::new();
    let (mut nirs, mut emails, mut phones) = (0, 0, 0);
    for rec in r.records().take(n) {
        let rec = rec.unwrap();
        for i in [1usize, 2, 3, 5] {
            if rec[i].len() >= 5 {
                values.insert(rec[i].as_bytes().to_vec());
            }
        }
        nirs += 1;
        emails += usize::from(!rec[5].is_empty());
        let digits: String = rec[6].chars().filter(char::is_ascii_digit).collect();
        if digits.len() >= 9 {
            phones += 1;
            let national = match digits.strip_prefix("33") {
                Some(rest) => format!("0{rest}"),
                None => digits,
            };
            normalised.insert(national.into_bytes());
            values.insert(rec[6].as_bytes().to_vec());
        }
    }
    assert_eq!(nirs, n);
    assert!(
        emails > n * 3 / 4 && phones > n * 3 / 4,
        "{emails} e-mails, {phones} phones"
    );
    (
        values.into_iter().collect(),
        normalised.into_iter().collect(),
    )
}

/// Finds any of the needles in one pass; says only how long the value
/// found is, so a failure does not print personal data (even synthetic).
fn find_any(haystack: &[u8], needles: &[Vec<u8>]) -> Option<String> {
    let ac = aho_corasick::AhoCorasick::new(needles).unwrap();
    ac.find(haystack).map(|m| {
        format!(
            "a {}-byte value at offset {}",
            m.end() - m.start(),
            m.start()
        )
    })
}

#[test]
fn no_plaintext_in_the_data_directory_or_a_pg_dump() {
    let dir = tempfile::tempdir().unwrap();
    let csv_dir = generate(dir.path(), 3000);
    let (as_typed, normalised) = sample_values(&csv_dir.join("persons.csv"), 1000);
    let needles: Vec<Vec<u8>> = as_typed.iter().chain(&normalised).cloned().collect();
    assert!(
        needles.len() > 3000,
        "expected thousands of distinct values, got {}",
        needles.len()
    );
    let rejects = dir.path().join("rejects.csv");

    // SQLite: every file of the data directory, WAL included.
    let data = dir.path().join("data");
    init(&data, None);
    assert!(
        import(&data, None, &rejects, &[&csv_dir], &[])
            .status
            .success()
    );
    let mut files = 0;
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        files += 1;
        assert!(
            !bytes.is_empty()
                || path
                    .extension()
                    .is_some_and(|e| e == "db-shm" || e == "db-wal")
        );
        if let Some(found) = find_any(&bytes, &needles) {
            panic!("{} holds a plaintext value ({found})", path.display());
        }
    }
    assert!(files >= 2, "registry and keys expected");
    // The search itself works: the CSV does contain the values as typed.
    let source = std::fs::read(csv_dir.join("persons.csv")).unwrap();
    let ac = aho_corasick::AhoCorasick::new(&as_typed).unwrap();
    let seen: HashSet<usize> = ac
        .find_overlapping_iter(&source)
        .map(|m| m.pattern().as_usize())
        .collect();
    assert_eq!(
        seen.len(),
        as_typed.len(),
        "every sampled value is in the CSV"
    );

    // PostgreSQL: a full pg_dump of the database.
    let db = TestDatabase::create("rempart_t");
    let pg_data = dir.path().join("pgdata");
    init(&pg_data, Some(&db.url));
    assert!(
        import(&pg_data, Some(&db.url), &rejects, &[&csv_dir], &[])
            .status
            .success()
    );
    let dump = Command::new("pg_dump")
        .args([&db.url, "--no-owner"])
        .output()
        .expect("pg_dump must be installed (postgresql-client)");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    assert!(dump.stdout.len() > 100_000, "the dump holds the registry");
    if let Some(found) = find_any(&dump.stdout, &needles) {
        panic!("pg_dump holds a plaintext value ({found})");
    }
}

/// Appends `n` synthetic leaves to the ledger of `data` with its own key,
/// as the consultation path will, then closes it (final checkpoint).
/// The data directory's ledger store, as `rempart` opens it.
async fn ledger_store(
    data: &Path,
    db: Option<&str>,
) -> std::sync::Arc<dyn rempart_ledger::LedgerStore> {
    match db {
        Some(url) => std::sync::Arc::new(
            rempart_ledger::store::postgres::PgLedgerStore::connect(
                &rempart_ledger::store::postgres::PgLedgerConfig::new(url),
            )
            .await
            .unwrap(),
        ),
        None => std::sync::Arc::new(
            rempart_ledger::store::sqlite::SqliteLedgerStore::open(data)
                .await
                .unwrap(),
        ),
    }
}

fn fill_ledger(data: &Path, db: Option<&str>, n: u64) {
    fill_ledger_with(data, db, rempart_ledger::bench::Synthetic::new(7, 0), n);
}

/// Appends `n` leaves of `synth` and closes the ledger.
fn fill_ledger_with(
    data: &Path,
    db: Option<&str>,
    mut synth: rempart_ledger::bench::Synthetic,
    n: u64,
) {
    use rempart_ledger::{Ledger, LedgerConfig, LedgerKey};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = ledger_store(data, db).await;
        let key = LedgerKey::load(&data.join(rempart_ledger::KEY_FILE_NAME)).unwrap();
        let config = LedgerConfig {
            checkpoint_every: 1000,
            ..LedgerConfig::default()
        };
        let ledger = Ledger::open(store, key, config).await.unwrap();
        let leaves: Vec<_> = (0..n).map(|_| synth.leaf()).collect();
        for chunk in leaves.chunks(500) {
            ledger.append_batch(chunk).await.unwrap();
        }
        ledger.close().await.unwrap();
    });
}

fn audit_scenario(db: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    init(&data, db);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = data.join(rempart_ledger::KEY_FILE_NAME);
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let loc = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.extend(["--data".to_string(), s(&data).to_string()]);
        if let Some(u) = db {
            v.extend(["--database".to_string(), u.to_string()]);
        }
        v
    };
    let run = |args: &[&str]| -> String {
        let a = loc(args);
        ok(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // An empty ledger verifies.
    assert!(run(&["audit", "verify"]).starts_with("audit ledger OK: 0 leaves"));
    fill_ledger(&data, db, 5000);
    let v = run(&["audit", "verify"]);
    assert!(v.starts_with("audit ledger OK: 5000 leaves"), "{v}");
    // A checkpoint, kept outside, then a proof of inclusion and one of consistency.
    let note = run(&["audit", "checkpoint"]);
    assert!(note.starts_with("rempart.local/audit\n5000\n"), "{note}");
    let cp = dir.path().join("cp.txt");
    std::fs::write(&cp, &note).unwrap();
    let proof: serde_json::Value =
        serde_json::from_str(&run(&["audit", "prove", "--leaf", "1234"])).unwrap();
    assert_eq!(proof["tree_size"], 5000);
    assert!(proof["hashes"].as_u64().unwrap() <= 13, "{proof}");
    let cons: serde_json::Value = serde_json::from_str(&run(&[
        "audit",
        "consistency",
        "--from",
        "1000",
        "--to",
        "5000",
    ]))
    .unwrap();
    assert!(cons["hashes"].as_u64().unwrap() <= 14, "{cons}");
    // Queries: the hot account (id 1) and its distinct persons.
    let rows = run(&["audit", "query", "--account", "1", "--format", "jsonl"]);
    assert!(!rows.is_empty());
    for line in rows.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["account"], 1, "{line}");
    }
    let persons = run(&["audit", "query", "--account", "1", "--persons-only"]);
    assert!(persons.lines().count() <= rows.lines().count());

    // One person's history: exactly the leaves the person index holds,
    // newest first, and a bundle that verifies with the public key alone.
    let person = persons.lines().next().unwrap().trim().to_string();
    let index_of = |line: &str| -> u64 {
        serde_json::from_str::<serde_json::Value>(line).unwrap()["index"]
            .as_u64()
            .unwrap()
    };
    let mut expected: Vec<u64> = run(&["audit", "query", "--person", &person, "--format", "jsonl"])
        .lines()
        .map(index_of)
        .collect();
    let bundle = dir.path().join("history.json");
    let history = run(&[
        "audit",
        "history",
        "--person",
        &person,
        "--bundle",
        s(&bundle),
        "--format",
        "jsonl",
    ]);
    let listed: Vec<u64> = history.lines().map(index_of).collect();
    // Same instant, same order: the query gives (time, index) ascending.
    expected.reverse();
    assert_eq!(listed, expected);
    assert!(!listed.is_empty());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&bundle).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let public = run(&["audit", "verifier-key"]);
    let checked = ok(&[
        "audit",
        "verify-bundle",
        s(&bundle),
        "--verifier-key",
        public.trim(),
    ]);
    assert!(
        checked.starts_with(&format!(
            "bundle of person {person}: {} entries",
            listed.len()
        )),
        "{checked}"
    );
    // The independent verifier in README, Python's standard library alone.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/verify_bundle.py");
    let python = |file: &Path| {
        Command::new("python3")
            .arg(&script)
            .arg(file)
            .arg(public.trim())
            .output()
            .unwrap()
    };
    let out = python(&bundle);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout(&out).starts_with(&format!("OK: {} entries of person {person}", listed.len())),
        "{}",
        stdout(&out)
    );
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&bundle).unwrap()).unwrap();
    doc["entries"][0]["index"] = serde_json::json!(listed[0] + 1);
    let forged = dir.path().join("forged.json");
    std::fs::write(&forged, doc.to_string()).unwrap();
    let out = rempart(&[
        "audit",
        "verify-bundle",
        s(&forged),
        "--verifier-key",
        public.trim(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not verify") && err.contains("entry 1 (leaf"),
        "{err}"
    );
    let out = python(&forged);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("entry 1: not in the log"), "{err}");
    let bad = rempart(
        &loc(&["audit", "prove", "--leaf", "9999"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(!bad.status.success());

    // Tampering with one stored leaf is found, and named.
    if db.is_none() {
        let conn = rusqlite_open(&data.join("ledger.db"));
        conn.execute_batch(
            "DROP TRIGGER IF EXISTS leaf_no_update; DROP TRIGGER IF EXISTS leaf_no_delete;
             DELETE FROM leaf WHERE idx = 2345;",
        )
        .unwrap();
        drop(conn);
        let a = loc(&["audit", "verify", "--checkpoint", s(&cp)]);
        let out = rempart(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("first bad leaf: 2345"), "{err}");
    }
}

fn rusqlite_open(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

#[test]
fn audit_commands_sqlite() {
    audit_scenario(None);
}

#[test]
fn audit_commands_postgres() {
    let db = TestDatabase::create("rempart_t");
    audit_scenario(Some(&db.url));
}

/// `audit verify --verifier-key`: the whole ledger and every checkpoint
/// from the public key alone, with no private key in the data directory;
/// then the key is replaced and the stored checkpoints re-signed, and a
/// checkpoint kept outside says that the signing key changed, naming both
/// keys by name and hash, never their material.
fn verifier_key_scenario(db: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    init(&data, db);
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        v.extend(["--data".to_string(), s(&data).to_string()]);
        if let Some(u) = db {
            v.extend(["--database".to_string(), u.to_string()]);
        }
        v
    };
    let run = |extra: &[&str]| -> Output {
        let a = args(extra);
        rempart(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    fill_ledger(&data, db, 3000);
    let key_file = data.join(rempart_ledger::KEY_FILE_NAME);
    let private = std::fs::read_to_string(&key_file).unwrap();
    let secret = private.trim().splitn(5, '+').nth(4).unwrap().to_string();
    // The public key, as the ledger prints it: name+hash+base64.
    let published = stdout(&run(&["audit", "verifier-key"])).trim().to_string();
    let parts: Vec<&str> = published.splitn(3, '+').collect();
    assert_eq!(parts.len(), 3, "{published}");
    assert_eq!(parts[0], "rempart.local/audit");
    assert_eq!(parts[1].len(), 8, "{published}");
    assert!(!published.contains("PRIVATE") && !published.contains(&secret));
    let old_id = format!("{}+{}", parts[0], parts[1]);
    let kept = dir.path().join("kept-checkpoint.txt");
    let note = run(&["audit", "checkpoint"]);
    assert!(note.status.success(), "{}", stderr(&note));
    std::fs::write(&kept, stdout(&note)).unwrap();

    // No private key anywhere near: moved out of the data directory.
    let away = dir.path().join("ledger.key.away");
    std::fs::rename(&key_file, &away).unwrap();
    let out = run(&["audit", "verify"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--verifier-key"), "{}", stderr(&out));
    let public_file = dir.path().join("ledger.pub");
    std::fs::write(&public_file, format!("{published}\n")).unwrap();
    for given in [published.as_str(), s(&public_file)] {
        let out = run(&[
            "audit",
            "verify",
            "--verifier-key",
            given,
            "--checkpoint",
            s(&kept),
        ]);
        let text = stdout(&out);
        assert!(out.status.success(), "{text}{}", stderr(&out));
        assert!(text.starts_with("audit ledger OK: 3000 leaves"), "{text}");
        assert!(text.contains(&old_id), "{text}");
    }
    // A private key given as the verifier key is refused, never echoed.
    let out = run(&["audit", "verify", "--verifier-key", private.trim()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("private signing key"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains(&secret));
    let out = run(&["audit", "verify", "--verifier-key", "not-a-key"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--verifier-key"), "{}", stderr(&out));

    // The key is replaced and the stored checkpoints re-signed with it
    // (the leaves untouched): a new key file, old checkpoints removed, a
    // fresh checkpoint signed.
    match db {
        None => {
            let conn = rusqlite_open(&data.join("ledger.db"));
            conn.execute_batch(
                "DROP TRIGGER IF EXISTS checkpoint_no_delete; DELETE FROM checkpoint;",
            )
            .unwrap();
        }
        Some(url) => {
            psql(
                url,
                "SET session_replication_role = replica; DELETE FROM ledger.checkpoint;",
            );
        }
    }
    init(&data, db);
    let new_public = stdout(&run(&["audit", "verifier-key"])).trim().to_string();
    assert_ne!(new_public, published);
    let new_parts: Vec<&str> = new_public.splitn(3, '+').collect();
    let new_id = format!("{}+{}", new_parts[0], new_parts[1]);
    let out = run(&["audit", "checkpoint"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Trusting the data directory's (new) key, the kept checkpoint is by
    // another key: said plainly, with both keys, and nothing else.
    let out = run(&["audit", "verify", "--checkpoint", s(&kept)]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("the signing key changed"), "{err}");
    assert!(err.contains(&old_id) && err.contains(&new_id), "{err}");
    assert!(!err.contains("invalid signature"), "{err}");
    assert!(!err.contains("rewritten"), "{err}");
    assert!(!err.contains(&secret), "{err}");
    // Trusting the published (old) key, without the new private key being
    // read: the stored checkpoint is by another key, the kept one matches.
    let out = run(&[
        "audit",
        "verify",
        "--verifier-key",
        s(&public_file),
        "--checkpoint",
        s(&kept),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("checkpoint at size 3000 is signed by key"),
        "{err}"
    );
    assert!(err.contains("the signing key changed"), "{err}");
    assert!(err.contains(&old_id) && err.contains(&new_id), "{err}");
    assert!(!err.contains("invalid signature"), "{err}");
    assert!(!err.contains("rewritten"), "{err}");
}

#[test]
fn audit_verify_from_the_public_key_and_a_changed_key_sqlite() {
    verifier_key_scenario(None);
}

#[test]
fn audit_verify_from_the_public_key_and_a_changed_key_postgres() {
    let db = TestDatabase::create("rempart_t");
    verifier_key_scenario(Some(&db.url));
}

/// `rempart accounts review` and `disable-inactive`, and credentials only
/// for active accounts, on accounts whose history is set up through the
/// store (requests and decisions in the past).
fn accounts_scenario(db: Option<&str>) {
    use chrono::{Duration, Utc};
    use rempart_domain::{Account, AccountState, Organisation, OrganisationKind, Reference, Role};
    use rempart_storage::NewAccountRequest;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    init(&data, db);
    let loc = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.extend(["--data".to_string(), s(&data).to_string()]);
        if let Some(u) = db {
            v.extend(["--database".to_string(), u.to_string()]);
        }
        v
    };
    let run = |args: &[&str]| -> Output {
        let a = loc(args);
        rempart(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let r = |s: &str| Reference::parse(s).unwrap();
    let target = db.map_or_else(|| s(&data).to_string(), str::to_string);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let now = Utc::now();
    let long_ago = now - Duration::days(200);
    let ids = rt.block_on(async {
        let stores = rempart_storage::open_stores(&target).await.unwrap();
        let (registry, auth) = (stores.registry, stores.auth);
        registry
            .upsert_organisations(
                [
                    ("C-FT", OrganisationKind::FranceTravail),
                    ("C-ML", OrganisationKind::MissionLocale),
                ]
                .into_iter()
                .map(|(code, kind)| Organisation {
                    code: r(code),
                    kind,
                    name: format!("Test {code}"),
                    departement: None,
                })
                .collect(),
            )
            .await
            .unwrap();
        for (login, org, role, approver) in [
            ("c.officer", "C-FT", Role::Officer, None),
            ("c.officer2", "C-FT", Role::Officer, None),
            ("c.mlm", "C-ML", Role::Manager, Some("c.officer")),
        ] {
            let (_, refused) = registry
                .upsert_accounts(vec![Account {
                    login: r(login),
                    organisation: r(org),
                    role,
                    state: AccountState::Active,
                    requested_by: None,
                    approved_by: approver.map(r),
                }])
                .await
                .unwrap();
            assert!(refused.is_empty(), "{refused:?}");
        }
        let id = |login: &'static str| {
            let registry = registry.clone();
            async move {
                registry
                    .account_by_login(&Reference::parse(login).unwrap())
                    .await
                    .unwrap()
                    .unwrap()
            }
        };
        let officer = id("c.officer").await;
        let mlm = id("c.mlm").await;
        let mut ids = Vec::new();
        for (login, at) in [
            ("c.old", long_ago),
            ("c.recent", long_ago),
            ("c.pending", now),
        ] {
            let a = auth
                .request_account(NewAccountRequest {
                    organisation_id: mlm.organisation_id,
                    login: r(login),
                    role: Role::Agent,
                    requested_by: mlm.account_id,
                    at,
                })
                .await
                .unwrap();
            ids.push(a.account_id);
        }
        for id in &ids[..2] {
            auth.decide_account(*id, officer.account_id, true, long_ago)
                .await
                .unwrap()
                .unwrap();
        }
        auth.record_login(ids[1], now - Duration::days(10))
            .await
            .unwrap();
        ids
    });
    let old = ids[0];

    // The review, per organisation.
    let out = run(&["accounts", "review", "--organisation", "C-ML"]);
    let review = stdout(&out);
    assert!(out.status.success(), "{review}");
    println!("{review}");
    assert!(
        review.contains("organisation C-ML (mission_locale), 4 account(s) to review"),
        "{review}"
    );
    let line = |login: &str| {
        review
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{login} ")))
            .unwrap_or_else(|| panic!("no {login} in:\n{review}"))
            .to_string()
    };
    let old_line = line("c.old");
    assert!(old_line.contains("NO LOGIN IN 90 DAYS"), "{old_line}");
    assert!(
        old_line.contains("c.mlm") && old_line.contains("c.officer"),
        "{old_line}"
    );
    assert!(
        old_line.contains(&long_ago.format("%Y-%m-%d").to_string()),
        "{old_line}"
    );
    let recent = line("c.recent");
    assert!(!recent.contains("NO LOGIN"), "{recent}");
    assert!(recent.contains(&(now - Duration::days(10)).format("%Y-%m-%d").to_string()));
    let pending_line = line("c.pending");
    assert!(pending_line.contains("requested") && !pending_line.contains("NO LOGIN"));
    assert!(line("c.mlm").contains("history unknown"));
    assert!(
        !review
            .lines()
            .any(|l| l.trim_start().starts_with("c.officer ")),
        "another organisation: {review}"
    );
    assert!(
        review
            .contains("4 account(s) to review, 1 without a login in 90 days, 1 of unknown history")
    );
    assert!(
        !run(&["accounts", "review", "--organisation", "NOPE"])
            .status
            .success()
    );

    // A requested account gets no credential.
    let refused = run(&["account", "credential", "issue", "--login", "c.pending"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("requested") && err.contains("only an active account"),
        "{err}"
    );
    assert!(!stdout(&refused).contains("rmp_"));

    // Disabling the unused: exactly the one without a login in 90 days.
    let out = run(&["accounts", "disable-inactive", "--days", "90"]);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("disabled c.old (agent of C-ML)"), "{text}");
    assert!(text.contains("1 account(s) disabled"), "{text}");
    let again = stdout(&run(&["accounts", "disable-inactive"]));
    assert!(again.contains("0 account(s) disabled"), "{again}");
    assert!(
        !run(&["accounts", "disable-inactive", "--days", "0"])
            .status
            .success()
    );
    let refused = run(&["account", "credential", "issue", "--login", "c.old"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("disabled"));
    assert!(
        stdout(&run(&[
            "account",
            "credential",
            "issue",
            "--login",
            "c.recent"
        ]))
        .contains("rmp_")
    );
    // One account_disable leaf, under the disabled account, in a ledger
    // that still verifies.
    let rows = stdout(&run(&[
        "audit",
        "query",
        "--account",
        &old.to_string(),
        "--format",
        "jsonl",
    ]));
    let leaves: Vec<serde_json::Value> = rows
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(leaves.len(), 1, "{rows}");
    assert_eq!(leaves[0]["action"], "account_disable");
    assert_eq!(leaves[0]["decision"], "allow");
    assert!(stdout(&run(&["audit", "verify"])).starts_with("audit ledger OK: 1 leaves"));
    let review = stdout(&run(&["accounts", "review"]));
    assert!(!review.contains("c.old "), "{review}");
    assert!(review.contains("organisation C-FT"), "{review}");

    // Activation codes from the command line: only for an active account
    // approved under four eyes, only from an officer; printed once.
    let activation = |login: &str, officer: &str| {
        run(&[
            "account",
            "activation",
            "issue",
            "--login",
            login,
            "--officer",
            officer,
        ])
    };
    for (login, officer, why) in [
        ("c.officer2", "c.officer", "never approved under four eyes"),
        ("c.pending", "c.officer", "not active"),
        ("c.recent", "c.mlm", "only an officer"),
        ("c.recent", "c.recent", "only an officer"),
    ] {
        let refused = activation(login, officer);
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{login} by {officer}");
        assert!(err.contains(why), "{login} by {officer}: {err}");
    }
    let out = activation("c.recent", "c.officer2");
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("activation code for c.recent"), "{text}");
    let code = text.lines().nth(1).unwrap_or_default();
    assert_eq!(code.len(), 32, "{text}");
    assert_eq!(code.matches('-').count(), 6, "{text}");
    // One more leaf (under the officer), never with the code.
    let verified = stdout(&run(&["audit", "verify"]));
    assert!(
        verified.starts_with("audit ledger OK: 2 leaves"),
        "{verified}"
    );
    let officer2 = rt.block_on(async {
        let stores = rempart_storage::open_stores(&target).await.unwrap();
        stores
            .registry
            .account_by_login(&r("c.officer2"))
            .await
            .unwrap()
            .unwrap()
            .account_id
    });
    let all = stdout(&run(&[
        "audit",
        "query",
        "--account",
        &officer2.to_string(),
        "--format",
        "jsonl",
    ]));
    assert!(!all.contains(code) && !all.contains(&code.replace('-', "")));
    assert!(all.contains("activation: code issued for account"), "{all}");

    // Federated identities: linked and unlinked by an active officer only,
    // each attempt a leaf under whoever asked, never naming the subject.
    const ISSUER: &str = "https://auth.agentconnect.gouv.fr/api/v2";
    const SUBJECT: &str = "5d2c7c3e-6f0b-4f7e-9b1a-2f8e1c4d9a01";
    let link = |login: &str, officer: &str| {
        run(&[
            "account",
            "federation",
            "link",
            "--login",
            login,
            "--issuer",
            ISSUER,
            "--subject",
            SUBJECT,
            "--officer",
            officer,
        ])
    };
    let unlink = |officer: &str| {
        run(&[
            "account",
            "federation",
            "unlink",
            "--issuer",
            ISSUER,
            "--subject",
            SUBJECT,
            "--officer",
            officer,
        ])
    };
    for (login, officer, why) in [
        ("c.recent", "c.mlm", "only an officer"),
        (
            "c.officer2",
            "c.officer2",
            "cannot link an identity to itself",
        ),
    ] {
        let refused = link(login, officer);
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{login} by {officer}");
        assert!(err.contains(why), "{login} by {officer}: {err}");
        assert!(!err.contains(SUBJECT), "{err}");
    }
    let out = link("c.recent", "c.officer2");
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("identity of {ISSUER} linked to c.recent")),
        "{text}"
    );
    assert!(!text.contains(SUBJECT), "{text}");
    let twice = link("c.old", "c.officer");
    assert!(!twice.status.success());
    assert!(String::from_utf8_lossy(&twice.stderr).contains("already linked"));
    let refused = unlink("c.mlm");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("only an officer"));
    let out = unlink("c.officer");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout(&out).contains(&format!(
            "identity of {ISSUER} unlinked from c.recent by c.officer"
        )),
        "{}",
        stdout(&out)
    );
    let none = unlink("c.officer");
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no account is linked"));
    // Seven attempts, seven more leaves; the ledger still verifies.
    let verified = stdout(&run(&["audit", "verify"]));
    assert!(
        verified.starts_with("audit ledger OK: 9 leaves"),
        "{verified}"
    );
    let ids: Vec<rempart_domain::AccountId> = rt.block_on(async {
        let stores = rempart_storage::open_stores(&target).await.unwrap();
        let mut ids = Vec::new();
        for login in ["c.officer", "c.officer2", "c.mlm"] {
            let a = stores.registry.account_by_login(&r(login)).await.unwrap();
            ids.push(a.unwrap().account_id);
        }
        ids
    });
    let all: String = ids
        .iter()
        .map(|id| {
            stdout(&run(&[
                "audit",
                "query",
                "--account",
                &id.to_string(),
                "--format",
                "jsonl",
            ]))
        })
        .collect();
    assert!(!all.contains(SUBJECT), "{all}");
    // Links (three refused, one made) and the unlink name the issuer; the
    // refused unlink and the one that found nothing say "unlink of".
    assert_eq!(all.matches("federation: identity of").count(), 5, "{all}");
    assert_eq!(all.matches("federation: unlink of").count(), 2, "{all}");
}

#[test]
fn accounts_review_disable_inactive_and_credentials_sqlite() {
    accounts_scenario(None);
}

#[test]
fn accounts_review_disable_inactive_and_credentials_postgres() {
    let db = TestDatabase::create("rempart_t");
    accounts_scenario(Some(&db.url));
}

/// An organisation pair and three accounts for the client and rotation
/// scenarios, written through the store: (runtime, stores, `k.agent`).
fn k_accounts(
    data: &Path,
    db: Option<&str>,
) -> (
    tokio::runtime::Runtime,
    rempart_storage::Stores,
    rempart_storage::AccountRecord,
) {
    use rempart_domain::{Account, AccountState, Organisation, OrganisationKind, Reference, Role};
    init(data, db);
    let r = |s: &str| Reference::parse(s).unwrap();
    let target = db.map_or_else(|| s(data).to_string(), str::to_string);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stores = rt.block_on(rempart_storage::open_stores(&target)).unwrap();
    let agent = rt.block_on(async {
        let registry = &stores.registry;
        registry
            .upsert_organisations(vec![
                Organisation {
                    code: r("K-FT"),
                    kind: OrganisationKind::FranceTravail,
                    name: "Test K-FT".into(),
                    departement: None,
                },
                Organisation {
                    code: r("K-CE"),
                    kind: OrganisationKind::CapEmploi,
                    name: "Test K-CE".into(),
                    departement: None,
                },
            ])
            .await
            .unwrap();
        for (login, org, role, state, approver) in [
            (
                "k.officer",
                "K-FT",
                Role::Officer,
                AccountState::Active,
                None,
            ),
            (
                "k.agent",
                "K-CE",
                Role::Agent,
                AccountState::Active,
                Some("k.officer"),
            ),
            (
                "k.pending",
                "K-CE",
                Role::Agent,
                AccountState::Requested,
                None,
            ),
        ] {
            let (_, refused) = registry
                .upsert_accounts(vec![Account {
                    login: r(login),
                    organisation: r(org),
                    role,
                    state,
                    requested_by: None,
                    approved_by: approver.map(r),
                }])
                .await
                .unwrap();
            assert!(refused.is_empty(), "{refused:?}");
        }
        registry
            .account_by_login(&r("k.agent"))
            .await
            .unwrap()
            .unwrap()
    });

    (rt, stores, agent)
}

/// Runs `rempart` with `--data` (and `--database`) appended.
fn k_run(data: &Path, db: Option<&str>, args: &[&str]) -> Output {
    let mut v: Vec<&str> = args.to_vec();
    v.extend(["--data", s(data)]);
    if let Some(u) = db {
        v.extend(["--database", u]);
    }
    rempart(&v)
}

/// `rempart client register` and `revoke`: only for active accounts, a
/// public JWK (or set) only, the private key never echoed.
fn clients_scenario(db: Option<&str>) {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use p256::elliptic_curve::Generate as _;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (rt, stores, agent) = k_accounts(&data, db);
    let run = |args: &[&str]| k_run(&data, db, args);
    // A public JWK file registers; the client id is printed once.
    let key = p256::ecdsa::SigningKey::generate();
    let point = key.verifying_key().to_sec1_point(false);
    let x = URL_SAFE_NO_PAD.encode(point.x().unwrap());
    let y = URL_SAFE_NO_PAD.encode(point.y().unwrap());
    let jwk = dir.path().join("partner.jwk");
    std::fs::write(
        &jwk,
        format!(r#"{{"kty":"EC","crv":"P-256","x":"{x}","y":"{y}","kid":"k1"}}"#),
    )
    .unwrap();
    let out = run(&["client", "register", "--login", "k.agent", "--jwk", s(&jwk)]);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client_id = text
        .lines()
        .find(|l| l.starts_with("rmpc_"))
        .unwrap_or_else(|| panic!("no client id in {text}"))
        .to_string();
    let (row, account) = rt
        .block_on(stores.auth.api_client(&client_id))
        .unwrap()
        .unwrap();
    assert_eq!(account.account_id, agent.account_id);
    assert!(
        row.keys.contains("k1") && row.keys.contains(&x),
        "{}",
        row.keys
    );
    // A JWK set works too.
    let jwks = dir.path().join("partner.jwks");
    std::fs::write(
        &jwks,
        format!(r#"{{"keys":[{{"kty":"EC","crv":"P-256","x":"{x}","y":"{y}"}}]}}"#),
    )
    .unwrap();
    assert!(
        stdout(&run(&[
            "client",
            "register",
            "--login",
            "k.agent",
            "--jwks",
            s(&jwks)
        ]))
        .contains("rmpc_")
    );

    // Refused: a private key (named, not echoed), a requested account, no key.
    let private = dir.path().join("private.jwk");
    let d = URL_SAFE_NO_PAD.encode(key.to_bytes());
    std::fs::write(
        &private,
        format!(r#"{{"kty":"EC","crv":"P-256","x":"{x}","y":"{y}","d":"{d}"}}"#),
    )
    .unwrap();
    let out = run(&[
        "client",
        "register",
        "--login",
        "k.agent",
        "--jwk",
        s(&private),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("private member d"), "{err}");
    assert!(!err.contains(&d), "the private key is never echoed: {err}");
    let out = run(&[
        "client",
        "register",
        "--login",
        "k.pending",
        "--jwk",
        s(&jwk),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("requested") && err.contains("only an active account"),
        "{err}"
    );
    assert!(
        !run(&["client", "register", "--login", "k.agent"])
            .status
            .success()
    );
    for help in [
        ["client", "register", "--help"],
        ["client", "revoke", "--help"],
    ] {
        let out = rempart(&help);
        assert!(out.status.success() && !stdout(&out).is_empty(), "{help:?}");
    }

    // Revocation, once.
    let out = run(&["client", "revoke", "--client-id", &client_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (row, _) = rt
        .block_on(stores.auth.api_client(&client_id))
        .unwrap()
        .unwrap();
    assert!(row.revoked_at.is_some());
    let out = run(&["client", "revoke", "--client-id", &client_id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such client"));
}

/// `rempart keys rotate` rewraps accounts' TOTP secrets (sealed under the
/// KEK) before it retires the old KEK; they still open afterwards.
fn totp_rotation_scenario(db: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (rt, stores, agent) = k_accounts(&data, db);
    let run = |args: &[&str]| k_run(&data, db, args);
    let keys_path = data.join("keys.json");
    let vault = rempart_vault::Vault::new(
        rempart_vault::KeySource::File(keys_path.clone()),
        stores.registry.clone(),
    )
    .unwrap();
    let secret = rempart_auth::totp::TotpSecret::generate().unwrap();
    let sealed =
        rempart_consult::login::seal_totp_secret(&vault, agent.account_id, &secret).unwrap();
    rt.block_on(stores.auth.set_totp(rempart_storage::StoredTotp {
        account_id: agent.account_id,
        sealed_secret: sealed.clone(),
        last_step: Some(42),
        enrolled_at: chrono::Utc::now(),
    }))
    .unwrap();
    let out = run(&["keys", "rotate"]);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("TOTP secrets: 1 rewrapped, 0 left"), "{text}");
    assert!(text.contains("retired KEK versions [1]"), "{text}");
    let ring = rempart_crypto::KeyRing::load(&keys_path).unwrap();
    assert_eq!(ring.kek_versions(), vec![2]);
    // A vault opened now holds only the new KEK.
    let vault = rempart_vault::Vault::new(
        rempart_vault::KeySource::File(keys_path.clone()),
        stores.registry.clone(),
    )
    .unwrap();
    let stored = rt
        .block_on(stores.auth.totp(agent.account_id))
        .unwrap()
        .unwrap();
    assert_ne!(stored.sealed_secret, sealed);
    assert_eq!(stored.last_step, Some(42), "no code becomes usable again");
    let opened =
        rempart_consult::login::open_totp_secret(&vault, agent.account_id, &stored.sealed_secret)
            .unwrap();
    assert_eq!(opened.expose_bytes(), secret.expose_bytes());
    assert!(
        rempart_consult::login::open_totp_secret(&vault, agent.account_id, &sealed).is_err(),
        "the old KEK is gone"
    );
}

#[test]
fn clients_register_and_revoke_sqlite() {
    clients_scenario(None);
}

#[test]
fn clients_register_and_revoke_postgres() {
    let db = TestDatabase::create("rempart_t");
    clients_scenario(Some(&db.url));
}

#[test]
fn keys_rotate_rewraps_totp_secrets_sqlite() {
    totp_rotation_scenario(None);
}

#[test]
fn keys_rotate_rewraps_totp_secrets_postgres() {
    let db = TestDatabase::create("rempart_t");
    totp_rotation_scenario(Some(&db.url));
}

/// Parses `label: N (R per …` from `rempart simulate`'s output.
fn simulated(out: &str, label: &str) -> (u64, f64) {
    let line = out
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label} line in\n{out}"));
    let rest = line[label.len()..].trim_start_matches([':', ' ']);
    let mut words = rest.split([' ', '(']).filter(|w| !w.is_empty());
    let n = words.next().unwrap().parse().unwrap();
    let rate = words.next().map_or(0.0, |w| w.parse().unwrap_or(0.0));
    (n, rate)
}

#[test]
fn simulate_runs_a_normal_month_through_the_guard_deterministically_on_both_backends() {
    let args = ["simulate", "--accounts", "40", "--days", "8", "--seed", "5"];
    let url = rempart_testdb::url();
    let mut runs = Vec::new();
    for extra in [vec![], vec![], vec!["--database", url.as_str()]] {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(extra);
        let out = rempart(&a);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (days, _) = simulated(&stdout, "account-days (worked)");
        let (suspensions, s_rate) = simulated(&stdout, "suspensions");
        let (alerts, a_rate) = simulated(&stdout, "alerts");
        let (reads, _) = simulated(&stdout, "reads");
        assert!(days > 40 * 4 && reads > days * 10, "{stdout}");
        // The printed rates are the counts over the account-days…
        let expect = |n: u64, scale: f64| (n as f64 * scale / days as f64 * 100.0).round() / 100.0;
        assert_eq!(s_rate, expect(suspensions, 10_000.0), "{stdout}");
        assert_eq!(a_rate, expect(alerts, 1_000.0), "{stdout}");
        // …and the exit status says whether the targets were met.
        assert_eq!(
            out.status.success(),
            s_rate <= 1.0 && a_rate <= 1.0,
            "{stdout}"
        );
        let figures: Vec<String> = stdout
            .lines()
            .filter(|l| !l.starts_with("simulated in") && !l.starts_with("normal month"))
            .map(str::to_string)
            .collect();
        // On PostgreSQL the month's scratch schema is gone afterwards.
        if let Some(schema) = stdout
            .split("schema ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
        {
            assert!(schema.starts_with("simulation_"), "{stdout}");
            let left = psql(
                &url,
                &format!("SELECT count(*) FROM pg_namespace WHERE nspname = '{schema}'"),
            );
            assert_eq!(left.trim(), "0", "schema {schema} left behind");
        }
        runs.push(figures);
    }
    assert_eq!(runs[0], runs[1], "same seed, same month");
    assert_eq!(runs[0], runs[2], "same guard decisions on PostgreSQL");
}

/// `rempart bench ledger --database` leaves nothing behind: its schema of
/// synthetic leaves (gigabytes at national sizes) is dropped at the end.
/// Its own schema only: another run's (`--schema`, a kept national-size
/// ledger was once dropped by this very test under a shared name), and
/// never one whose name does not say it is a benchmark's.
#[test]
fn bench_ledger_on_postgres_drops_its_schema() {
    let url = rempart_testdb::url();
    let count = |schema: &str| {
        psql(
            &url,
            &format!("SELECT count(*) FROM pg_namespace WHERE nspname = '{schema}'"),
        )
        .trim()
        .to_string()
    };
    let other = rempart_testdb::unique_name("ledger_bench_other");
    psql(&url, &format!("CREATE SCHEMA {other}"));
    let schema = rempart_testdb::unique_name("ledger_bench");
    let out = ok(&[
        "bench",
        "ledger",
        "--leaves",
        "3000",
        "--database",
        &url,
        "--schema",
        &schema,
    ]);
    assert!(out.contains("verify: "), "{out}");
    assert!(out.contains(&format!("schema {schema} dropped")), "{out}");
    assert_eq!(count(&schema), "0", "schema {schema} left behind");
    assert_eq!(count(&other), "1", "another run's schema was dropped");
    psql(&url, &format!("DROP SCHEMA {other}"));

    // A real ledger's schema is refused before anything is dropped.
    let victim = rempart_testdb::unique_name("ledger");
    psql(&url, &format!("CREATE SCHEMA {victim}"));
    for reuse in [None, Some("--reuse")] {
        let mut args = vec!["bench", "ledger", "--database", &url, "--schema", &victim];
        args.extend(reuse);
        let out = rempart(&args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("must start with ledger_bench"), "{err}");
        assert_eq!(count(&victim), "1", "{err}");
    }
    psql(&url, &format!("DROP SCHEMA {victim}"));
}

/// `rempart bench ledger --dir` deletes the ledger it finds there only if
/// a benchmark made it: pointed at a data directory by mistake, it leaves
/// the audit ledger as it was.
#[test]
fn bench_ledger_keeps_a_ledger_it_did_not_make() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    std::fs::write(&db, b"the audit ledger of a data directory").unwrap();
    let fresh = [
        "bench",
        "ledger",
        "--leaves",
        "3000",
        "--dir",
        s(dir.path()),
    ];
    let out = rempart(&fresh);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to delete it"), "{err}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        b"the audit ledger of a data directory"
    );
    // The ledger it makes is marked as a benchmark's, for the next run
    // to replace.
    std::fs::remove_file(&db).unwrap();
    let out = ok(&fresh);
    assert!(out.contains("verify: "), "{out}");
    assert!(dir.path().join("ledger.bench").exists());
    // Kept, it is measured again without a build; proofs only, at once.
    let out = ok(&[
        "bench",
        "ledger",
        "--dir",
        s(dir.path()),
        "--reuse",
        "--proofs-only",
    ]);
    assert!(out.contains("proofs at size"), "{out}");
    assert!(!out.contains("queries over"), "{out}");
}

/// The `RESULT attack=…` lines of `rempart drill`, as key → value maps.
fn drill_results(out: &str) -> Vec<std::collections::HashMap<String, String>> {
    out.lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .map(|l| {
            l.split(' ')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

#[test]
fn every_drill_is_contained_within_targets_inside_normal_traffic_on_both_backends() {
    for db in [None, Some(TestDatabase::create("rempart_t"))] {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec![
            "drill",
            "all",
            // Organisations large enough for the attacks through many
            // accounts: 11, 9 and 9 working agents in the largest three.
            "--persons",
            "50000",
            "--accounts",
            "60",
            "--dir",
            s(dir.path()),
        ];
        if let Some(db) = &db {
            args.extend(["--database", db.url.as_str()]);
        }
        let out = ok(&args);
        let results = drill_results(&out);
        let attacks: Vec<_> = results
            .iter()
            .filter(|r| r.contains_key("attack"))
            .collect();
        let names: HashSet<&str> = attacks.iter().map(|r| r["attack"].as_str()).collect();
        assert_eq!(
            names,
            HashSet::from([
                "cap-emploi-2024(fast)",
                "cap-emploi-2024(slow)",
                "kairos-2025",
                "missions-locales-2025",
                "majorel-2023",
                "distributed-agency(offhours)",
                "distributed-agency(officehours)",
                "slow-agency",
                "shared-device",
            ]),
            "{out}"
        );
        for r in &attacks {
            assert_eq!(r["beyond_scope"], "0", "{out}");
            let before: u64 = r["before_containment"].parse().unwrap();
            let (records, secs) = match r["attack"].as_str() {
                "majorel-2023" | "slow-agency" => continue,
                "distributed-agency(officehours)" => (200, 600.0),
                _ => (50, 60.0),
            };
            assert!(before <= records, "{out}");
            let took: f64 = r["containment_s"].parse().expect("contained");
            assert!(took <= secs, "{out}");
        }
        // An organisation alert names its accounts by their bare ids, as
        // an operator types them into `rempart alerts --account`.
        let naming: Vec<&str> = out
            .lines()
            .filter(|l| l.trim_start().starts_with("naming "))
            .collect();
        assert!(!naming.is_empty(), "{out}");
        for line in naming {
            let (_, ids) = line.split_once(": [").expect("a list of accounts");
            assert!(
                ids.trim_end_matches(']')
                    .split(", ")
                    .all(|id| id.parse::<i64>().is_ok()),
                "{line}"
            );
        }
        // The slow agency is alerted on within its first working day
        // (10:00 to 18:00).
        let slow = attacks
            .iter()
            .find(|r| r["attack"] == "slow-agency")
            .unwrap();
        let first: f64 = slow["first_alert_s"].parse().expect("alerted");
        assert!(first <= 8.0 * 3600.0, "{out}");
        // The bulk readers were seen: alerts name them.
        for r in attacks
            .iter()
            .filter(|r| r["attack"].starts_with("cap-emploi"))
        {
            assert!(r["guard_alerts"].parse::<u64>().unwrap() > 0, "{out}");
            assert!(r["attempts"].parse::<u64>().unwrap() >= 180, "{out}");
        }
        let ml = attacks
            .iter()
            .find(|r| r["attack"] == "missions-locales-2025")
            .unwrap();
        assert!(
            ml["ledger_alerts"].parse::<u64>().unwrap() > 0,
            "the burst: {out}"
        );
        let normal = results
            .iter()
            .find(|r| r.contains_key("account_days"))
            .unwrap();
        assert!(normal["reads"].parse::<u64>().unwrap() > 1_000, "{out}");
        assert!(
            out.contains("0 with an identity, 0 with a NIR in clear"),
            "{out}"
        );
        assert!(out.contains("every target met"), "{out}");
    }
}

#[test]
fn a_drill_against_a_guard_that_watches_nothing_fails_its_targets() {
    let dir = tempfile::tempdir().unwrap();
    // Quotas out of reach and no behaviour weights: the bulk reader reads on.
    let config = dir.path().join("blind.toml");
    std::fs::write(
        &config,
        "[account.persons]\nper_hour = 100000\nper_day = 100000\n\
         [account.nir_reveals]\nper_hour = 100000\nper_day = 100000\n\
         [organisation.persons]\nper_hour = 100000\nper_day = 100000\n\
         [organisation.nir_reveals]\nper_hour = 100000\nper_day = 100000\n\
         [scoring.weights]\nvolume_vs_own = 0.0\nvolume_vs_peers = 0.0\noff_hours = 0.0\n\
         denied_share = 0.0\nsequential_ids = 0.0\nsearch_misses = 0.0\nnew_device = 0.0\n\
         new_network = 0.0\naccount_age = 0.0\npost_reset = 0.0\nbreak_glass_rate = 0.0\n",
    )
    .unwrap();
    let out = rempart(&[
        "drill",
        "cap-emploi-2024",
        "--persons",
        "20000",
        "--accounts",
        "60",
        "--dir",
        s(&dir.path().join("w")),
        "--guard-config",
        s(&config),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}");
    assert!(stderr.contains("targets missed"), "{stderr}");
    let fast = drill_results(&stdout)
        .into_iter()
        .find(|r| {
            r.get("attack")
                .is_some_and(|a| a == "cap-emploi-2024(fast)")
        })
        .unwrap();
    assert!(
        fast["before_containment"].parse::<u64>().unwrap() > 50,
        "{stdout}"
    );
    assert_eq!(
        fast["beyond_scope"], "0",
        "the policy still holds: {stdout}"
    );
}

#[test]
fn a_drill_against_a_guard_blind_to_organisations_misses_the_distributed_agency() {
    let dir = tempfile::tempdir().unwrap();
    // Every account feature as shipped, none of the organisation's: each
    // hijacked account alone looks like an advisor working late.
    let config = dir.path().join("blind.toml");
    std::fs::write(
        &config,
        "[organisation_scoring.weights]\noff_hours_accounts = 0.0\nactive_accounts = 0.0\n\
         synchronised_starts = 0.0\nbursting_accounts = 0.0\nvolume = 0.0\n\
         shared_new_network = 0.0\nshared_new_device = 0.0\n\
         cross_organisation_network = 0.0\ncross_organisation_device = 0.0\n",
    )
    .unwrap();
    let out = rempart(&[
        "drill",
        "distributed-agency",
        "--persons",
        "50000",
        "--accounts",
        "60",
        "--dir",
        s(&dir.path().join("w")),
        "--guard-config",
        s(&config),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains("distributed-agency (off hours)"),
        "{stderr}"
    );
    let night = drill_results(&stdout)
        .into_iter()
        .find(|r| {
            r.get("attack")
                .is_some_and(|a| a == "distributed-agency(offhours)")
        })
        .unwrap();
    assert!(
        night["before_containment"].parse::<u64>().unwrap() > 50,
        "{stdout}"
    );
}

/// Three `rempart serve` processes on one PostgreSQL behind a real HAProxy,
/// under load, each time with something killed halfway: a staging replica
/// (`kill -9`), the integrating one, the database (its connections cut and
/// refused for 3 s). Every answer 200 has its leaf in the log once, about
/// the person read (the command fails otherwise); clients that retry keep
/// working; the integrator is replaced within 10 s; while the database is
/// away the answers are 503, never 200; the ledger verifies.
#[test]
fn replicas_behind_haproxy_survive_kills() {
    let db = TestDatabase::create("rempart_rp");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    init(&data, Some(&db.url));
    let csv = generate(dir.path(), 3000);
    let rejects = dir.path().join("rejects.csv");
    let out = import(&data, Some(&db.url), &rejects, &[&csv], &[]);
    assert!(out.status.success(), "{}", stdout(&out));
    for kill in ["none", "replica", "integrator", "database"] {
        let out = ok(&[
            "bench",
            "replicas",
            "--data",
            s(&data),
            "--database",
            &db.url,
            "--seconds",
            "6",
            "--connections",
            "6",
            "--kill",
            kill,
        ]);
        let results = drill_results(&out);
        assert_eq!(results.len(), 1, "{out}");
        let r = &results[0];
        let n = |k: &str| -> u64 { r[k].parse().unwrap_or_else(|_| panic!("{k} in {out}")) };
        for k in ["unledgered", "lost", "wrong", "duplicate"] {
            assert_eq!(n(k), 0, "{kill}: {k}\n{out}");
        }
        assert!(n("ok") > 100, "{kill}: {out}");
        assert_eq!(r["replicas"], "3");
        match kill {
            "none" => assert_eq!(r["error_statuses"], "none", "{out}"),
            // In-flight requests of the killed process fail; the rest go on.
            "replica" => assert!(n("errors") < 50, "{out}"),
            "integrator" => {
                assert!(n("errors") < 50, "{out}");
                assert!(n("takeover_ms") <= 10_000, "{out}");
            }
            "database" => {
                // Refused while it is away: 503, or a connection the
                // balancer could not complete; never a 200 without a leaf.
                for status in r["error_statuses"].split(',') {
                    let code = status.split(':').next().unwrap();
                    assert!(["503", "0", "502", "504"].contains(&code), "{out}");
                }
                assert!(n("outage_ms") < 30_000, "{out}");
            }
            _ => unreachable!(),
        }
        println!(
            "{kill}: {}",
            out.lines().find(|l| l.starts_with("RESULT")).unwrap()
        );
    }
    // A staging replica's receipt gives its leaf's inclusion proof.
    let (receipt, index) = psql(
        &db.url,
        "SELECT receipt, idx FROM ledger.integrated ORDER BY receipt DESC LIMIT 1",
    )
    .trim()
    .split_once('|')
    .map(|(r, i)| (r.to_string(), i.to_string()))
    .expect("staged leaves were integrated");
    let args = ["audit", "prove", "--data", s(&data), "--database", &db.url];
    let proof: serde_json::Value =
        serde_json::from_str(&ok(&[&args[..], &["--receipt", &receipt]].concat())).unwrap();
    assert_eq!(proof["leaf_index"].to_string(), index);
    assert_eq!(proof["receipt"].to_string(), receipt);
    let by_index: serde_json::Value =
        serde_json::from_str(&ok(&[&args[..], &["--leaf", &index]].concat())).unwrap();
    assert_eq!(proof["inclusion_path"], by_index["inclusion_path"]);
    let out = rempart(&[&args[..], &["--receipt", "65535"]].concat());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no leaf was integrated under this receipt"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where an import of `kind` stands in the registry: (next_byte, next_line), if any.
fn import_progress(data: &Path, db: Option<&str>, kind: &str) -> Option<(u64, u64)> {
    let sql = format!("SELECT next_byte, next_line FROM import_progress WHERE kind = '{kind}'");
    match db {
        Some(url) => {
            // Before the import's migrations ran, the table is not there yet.
            let out = Command::new("psql")
                .args([url, "-qAtc", &format!("SET search_path = registry; {sql}")])
                .output()
                .ok()?;
            let out = String::from_utf8_lossy(&out.stdout).into_owned();
            let line = out.lines().find(|l| l.contains('|'))?;
            let (b, l) = line.split_once('|')?;
            Some((b.trim().parse().ok()?, l.trim().parse().ok()?))
        }
        None => {
            let c = rusqlite::Connection::open_with_flags(
                data.join("registry.db"),
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .ok()?;
            c.busy_timeout(std::time::Duration::from_secs(5)).ok()?;
            c.query_row(&sql, [], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })
            .ok()
        }
    }
}

/// Starts an import of `inputs` and kills it (SIGKILL) once `kind`'s file
/// has some batches committed and more to come; returns where it stood.
fn kill_mid_import(
    data: &Path,
    db: Option<&str>,
    inputs: &[&Path],
    kind: &str,
    file_bytes: u64,
) -> (u64, u64) {
    let mut args = vec![
        "import".to_string(),
        "--data".into(),
        s(data).into(),
        "--today".into(),
        TODAY.into(),
        "--batch".into(),
        "100".into(),
        "--rejects".into(),
        s(&data.join("rejects.csv")).into(),
    ];
    if let Some(url) = db {
        args.extend(["--database".into(), url.to_string()]);
    }
    args.extend(inputs.iter().map(|p| s(p).to_string()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_rempart"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if let Some((byte, _)) = import_progress(data, db, kind)
            && byte > file_bytes / 10
        {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the import of {kind} ended before it could be killed"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no progress on {kind}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean anything up
    child.wait().unwrap();
    let at = import_progress(data, db, kind).expect("the progress survives the kill");
    assert!(
        at.0 < file_bytes,
        "killed at the end of {kind}: {at:?} of {file_bytes} bytes"
    );
    at
}

/// The registry's content that does not depend on ids or random nonces:
/// each person's blind indexes and keyed fingerprint, each mandate with its
/// person's blind index (the keys are the same: the data directories are
/// copies).
fn registry_content(data: &Path, db: Option<&str>) -> Vec<String> {
    let persons = "SELECT encode(ft_blind, 'hex') || encode(nir_blind, 'hex') || \
                   encode(name_blind, 'hex') || encode(fingerprint, 'hex') || \
                   coalesce(retain_until::text, '') FROM person ORDER BY 1";
    let mandates = "SELECT m.reference || '|' || m.organisation_id || '|' || \
                    coalesce(m.account_id::text, '') || '|' || encode(p.ft_blind, 'hex') || '|' || \
                    m.purpose || '|' || m.valid_from || '|' || coalesce(m.valid_to::text, '') || \
                    '|' || m.source FROM mandate m JOIN person p ON p.id = m.person_id ORDER BY 1";
    let indexes = match db {
        Some(_) => "SELECT indexname FROM pg_indexes WHERE schemaname = 'registry' ORDER BY 1",
        None => "SELECT name FROM sqlite_schema WHERE type = 'index' ORDER BY 1",
    };
    match db {
        Some(url) => [indexes, persons, mandates]
            .iter()
            .flat_map(|q| {
                psql(url, &format!("SET search_path = registry; {q}"))
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect(),
        None => {
            let c = rusqlite_open(&data.join("registry.db"));
            let sqlite = |q: &str| {
                q.replace("encode(", "hex(")
                    .replace(", 'hex')", ")")
                    .replace("::text", "")
            };
            let mut out = Vec::new();
            for q in [indexes, persons, mandates] {
                let mut st = c.prepare(&sqlite(q)).unwrap();
                let rows = st.query_map([], |r| r.get::<_, String>(0)).unwrap();
                out.extend(rows.map(Result::unwrap).map(|s| s.to_lowercase()));
            }
            out
        }
    }
}

fn resume_scenario(db_a: Option<&str>, db_b: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let csv_dir = generate(dir.path(), 30_000);
    let [orgs, accounts, persons, mandates] = [
        "organisations.csv",
        "accounts.csv",
        "persons.csv",
        "mandates.csv",
    ]
    .map(|f| csv_dir.join(f));
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    init(&a, db_a);
    // The same keys for both: their blind indexes and fingerprints compare.
    std::fs::create_dir(&b).unwrap();
    for f in ["keys.json", "ledger.key"] {
        std::fs::copy(a.join(f), b.join(f)).unwrap();
    }
    let rejects = dir.path().join("rejects.csv");
    let whole = import(&a, db_a, &rejects, &[&csv_dir], &[]);
    assert!(whole.status.success(), "{}", stdout(&whole));

    // Killed in the middle of the persons, then run again on them.
    let (_, line) = kill_mid_import(&b, db_b, &[&csv_dir], "persons", size(&persons));
    let again = import(&b, db_b, &rejects, &[&orgs, &accounts, &persons], &[]);
    let out = stdout(&again);
    assert!(again.status.success(), "{out}");
    assert!(
        out.contains(&format!("resumed an interrupted import at line {line}")),
        "{out}"
    );
    // The counts cover the whole file, and nothing was imported twice.
    assert_eq!(counts(&out, "persons.csv"), (30_000, 0, 0, 0), "{out}");
    assert_eq!(import_progress(&b, db_b, "persons"), None);

    // Killed in the middle of the mandates, then run again.
    let (_, line) = kill_mid_import(&b, db_b, &[&mandates], "mandates", size(&mandates));
    let again = import(&b, db_b, &rejects, &[&mandates], &[]);
    let out = stdout(&again);
    assert!(again.status.success(), "{out}");
    assert!(
        out.contains(&format!("resumed an interrupted import at line {line}")),
        "{out}"
    );
    let whole_mandates = counts(&stdout(&whole), "mandates.csv");
    assert_eq!(counts(&out, "mandates.csv"), whole_mandates, "{out}");

    // The registry is the one an uninterrupted import made.
    let (left, right) = (registry_content(&a, db_a), registry_content(&b, db_b));
    assert!(left.len() > 30_000, "{}", left.len());
    assert!(left == right, "the resumed registry differs");
}

#[test]
fn an_import_killed_mid_file_resumes_and_ends_as_an_uninterrupted_one_sqlite() {
    resume_scenario(None, None);
}

#[test]
fn an_import_killed_mid_file_resumes_and_ends_as_an_uninterrupted_one_postgres() {
    let (a, b) = (
        TestDatabase::create("rempart_ra"),
        TestDatabase::create("rempart_rb"),
    );
    resume_scenario(Some(&a.url), Some(&b.url));
}

/// `rempart incident`: an incident entered in the register, its scope
/// from the ledger (the persons the index lists for the account, with a
/// CSV of them and a signed checkpoint), its timeline; and bad input (an
/// unknown account, a reversed window, an unknown incident, an incident
/// already closed), each a clear error that writes nothing.
fn incident_scenario(db: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    init(&data, db);
    let csv = generate(dir.path(), 300);
    let rejects = dir.path().join("rejects.csv");
    assert!(import(&data, db, &rejects, &[&csv], &[]).status.success());
    fill_ledger(&data, db, 5000);
    let loc = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.extend(["--data".to_string(), s(&data).to_string()]);
        if let Some(u) = db {
            v.extend(["--database".to_string(), u.to_string()]);
        }
        v
    };
    let run = |args: &[&str]| -> String {
        let a = loc(args);
        ok(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let fails = |args: &[&str]| -> String {
        let a = loc(args);
        let out = rempart(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let open = |account: &str, from: &str, to: &str| {
        vec![
            "incident",
            "open",
            "--title",
            "Identifiants hameçonnés",
            "--account",
            account,
            "--from",
            from,
            "--to",
            to,
            "--aware-at",
            "2026-01-03T08:00:00Z",
            "--by",
            "dpo",
        ]
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>()
    };
    fn as_strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    let opened = run(&as_strs(&open("1", "2026-01-01", "2026-01-02")));
    assert!(opened.starts_with("incident 1 opened"), "{opened}");
    assert!(
        opened.contains("Art. 33 deadline 2026-01-06 08:00 UTC"),
        "{opened}"
    );

    // The scope is the persons the index says the account was shown.
    let listed: HashSet<String> = run(&["audit", "query", "--account", "1", "--persons-only"])
        .lines()
        .map(str::to_string)
        .collect();
    assert!(!listed.is_empty());
    let csv_out = dir.path().join("persons.csv");
    let report: serde_json::Value = serde_json::from_str(&run(&[
        "incident",
        "scope",
        "1",
        "--format",
        "json",
        "--persons",
        s(&csv_out),
    ]))
    .unwrap();
    assert_eq!(report["persons"], listed.len(), "{report}");
    assert_eq!(report["tree_size"], 5000, "{report}");
    assert!(
        report["checkpoint"]
            .as_str()
            .unwrap()
            .starts_with("rempart.local/audit\n5000\n"),
        "{report}"
    );
    let rows = std::fs::read_to_string(&csv_out).unwrap();
    let ids: HashSet<String> = rows
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    assert_eq!(ids, listed, "the CSV lists exactly the scope's persons");
    let shown = run(&["incident", "show", "1"]);
    assert!(shown.contains("scoped:"), "{shown}");

    // While another process holds the ledger's writer (a server) and has
    // appended past its last checkpoint, the scope is bound to that
    // checkpoint and says how many leaves it leaves out.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let held = rt.block_on(async {
        use rempart_ledger::{Ledger, LedgerConfig, LedgerKey};
        let key = LedgerKey::load(&data.join(rempart_ledger::KEY_FILE_NAME)).unwrap();
        let config = LedgerConfig {
            checkpoint_every: 0,
            checkpoint_interval: std::time::Duration::ZERO,
            ..LedgerConfig::default()
        };
        let ledger = Ledger::open(ledger_store(&data, db).await, key, config)
            .await
            .unwrap();
        let mut synth = rempart_ledger::bench::Synthetic::new(9, 5000);
        let more: Vec<_> = (0..10).map(|_| synth.leaf()).collect();
        ledger.append_batch(&more).await.unwrap();
        ledger
    });
    let bound: serde_json::Value =
        serde_json::from_str(&run(&["incident", "scope", "1", "--format", "json"])).unwrap();
    assert_eq!(bound["tree_size"], 5000, "{bound}");
    assert_eq!(bound["leaves_after_checkpoint"], 10, "{bound}");
    rt.block_on(held.close()).unwrap();

    // From a guard alert, in one command: an organisation's alert naming
    // account 1 opens an incident on it, from a week before the alert's
    // evidence, and scopes it: the same persons.
    rt.block_on(async {
        use rempart_guard::store::FlushBatch;
        use rempart_guard::{Alert, AlertKind, Evidence, Verdict};
        let target = db.map_or_else(|| s(&data).to_string(), str::to_string);
        let stores = rempart_storage::open_stores(&target).await.unwrap();
        let at = chrono::DateTime::parse_from_rfc3339("2026-01-03T12:00:00Z")
            .unwrap()
            .to_utc();
        stores
            .guard
            .flush(&FlushBatch {
                instance: 1,
                alerts: vec![Alert {
                    at,
                    kind: AlertKind::OrganisationBehaviour,
                    account_id: rempart_domain::AccountId::new(1),
                    organisation_id: rempart_domain::OrganisationId::new(1),
                    verdict: Verdict::StepUp,
                    score: 3.0,
                    explanation: Vec::new(),
                    fresh: true,
                    evidence: Evidence {
                        from: at - chrono::Duration::hours(2),
                        to: at,
                        first_seq: None,
                        last_seq: None,
                    },
                    accounts: vec![rempart_domain::AccountId::new(1)],
                }],
                ..FlushBatch::default()
            })
            .await
            .unwrap();
    });
    let e = fails(&["incident", "open", "--alert", "99"]);
    assert!(
        e.contains("--alert: no such alert in the guard's store"),
        "{e}"
    );
    let from_alert = run(&[
        "incident", "open", "--alert", "1", "--scope", "--by", "rssi",
    ]);
    assert!(
        from_alert.contains("Alerte 1 de la garde (organisation_behaviour)"),
        "{from_alert}"
    );
    assert!(
        from_alert.contains("compromised: account 1\n"),
        "{from_alert}"
    );
    assert!(
        from_alert.contains("window: 2025-12-27 10:00:00 UTC to "),
        "{from_alert}"
    );
    assert!(
        from_alert.contains(&format!("persons revealed: {} (", listed.len())),
        "{from_alert}"
    );
    run(&["incident", "event", "2", "--milestone", "closed"]);

    // A compromised API client: the account it reads as.
    let login = rt.block_on(async {
        let target = db.map_or_else(|| s(&data).to_string(), str::to_string);
        let stores = rempart_storage::open_stores(&target).await.unwrap();
        stores
            .registry
            .account_by_id(rempart_domain::AccountId::new(1))
            .await
            .unwrap()
            .unwrap()
            .login
            .as_str()
            .to_string()
    });
    let client_id = {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use p256::elliptic_curve::Generate as _;
        let key = p256::ecdsa::SigningKey::generate();
        let point = key.verifying_key().to_sec1_point(false);
        let jwk = dir.path().join("partner.jwk");
        std::fs::write(
            &jwk,
            format!(
                r#"{{"kty":"EC","crv":"P-256","x":"{}","y":"{}"}}"#,
                URL_SAFE_NO_PAD.encode(point.x().unwrap()),
                URL_SAFE_NO_PAD.encode(point.y().unwrap())
            ),
        )
        .unwrap();
        run(&["client", "register", "--login", &login, "--jwk", s(&jwk)])
            .lines()
            .find(|l| l.starts_with("rmpc_"))
            .unwrap()
            .to_string()
    };
    let e = fails(&[
        "incident",
        "open",
        "--client",
        "rmpc_nope",
        "--title",
        "t",
        "--from",
        "2026-01-01",
    ]);
    assert!(
        e.contains("--client: item 1 is not a registered API client"),
        "{e}"
    );
    let by_client = run(&[
        "incident",
        "open",
        "--client",
        &client_id,
        "--title",
        "Clé d'un logiciel partenaire volée",
        "--from",
        "2026-01-01",
        "--scope",
    ]);
    assert!(
        by_client.contains("compromised: account 1\n"),
        "{by_client}"
    );
    assert!(
        by_client.contains(&format!("persons revealed: {} (", listed.len())),
        "{by_client}"
    );
    run(&["incident", "event", "3", "--milestone", "closed"]);

    // Bad input: clear errors, nothing written.
    let e = fails(&as_strs(&open("999999", "2026-01-01", "2026-01-02")));
    assert!(e.contains("account 999999 is not in the registry"), "{e}");
    let e = fails(&as_strs(&open("1", "2026-01-02", "2026-01-01")));
    assert!(
        e.contains("--to: the window must end after it starts"),
        "{e}"
    );
    let e = fails(&["incident", "show", "42"]);
    assert!(e.contains("incident 42: no such incident"), "{e}");
    let e = fails(&["incident", "event", "1", "--milestone", "notified"]);
    assert!(e.contains("--milestone"), "{e}");
    run(&[
        "incident",
        "event",
        "1",
        "--milestone",
        "closed",
        "--note",
        "clos",
    ]);
    let e = fails(&["incident", "event", "1", "--milestone", "contained"]);
    assert!(e.contains("incident 1 is closed"), "{e}");
    let e = fails(&["incident", "scope", "1"]);
    assert!(e.contains("incident 1 is closed"), "{e}");
    let list = run(&["incident", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");
    assert_eq!(list.matches("closed").count(), 3, "{list}");
    let shown = run(&["incident", "show", "1"]);
    assert_eq!(
        shown.matches("\n    ").count(),
        4,
        "opened, scoped twice, closed: {shown}"
    );
}

#[test]
fn incident_commands_sqlite() {
    incident_scenario(None);
}

#[test]
fn incident_commands_postgres() {
    let db = TestDatabase::create("rempart_t");
    incident_scenario(Some(&db.url));
}

/// The SMTP sink of the notice tests: aiosmtpd (PyPI) storing what it
/// accepts in a Maildir, on a free port. `scripts/test` installs it.
struct SmtpSink {
    child: std::process::Child,
    port: u16,
    maildir: PathBuf,
}

impl SmtpSink {
    /// A sink on a free port; with `refuse`, it refuses for good (550)
    /// every recipient at that domain.
    fn start(dir: &Path, refuse: Option<&str>) -> SmtpSink {
        let python =
            std::env::var("REMPART_SMTP_SINK_PYTHON").unwrap_or_else(|_| {
                s(&Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../tools/smtp-sink/.venv/bin/python"))
                .to_string()
            });
        assert!(
            Path::new(&python).exists(),
            "the SMTP sink is not installed ({python}): run scripts/test, which installs it"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let maildir = dir.join(format!("maildir-{port}"));
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["-m", "aiosmtpd", "-n", "-l", &listen, "-c"];
        match refuse {
            None => args.extend(["aiosmtpd.handlers.Mailbox", s(&maildir)]),
            Some(domain) => args.extend(["refusing.Refusing", s(&maildir), domain]),
        }
        let child = Command::new(&python)
            .args(&args)
            .env(
                "PYTHONPATH",
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/smtp-sink"),
            )
            .spawn()
            .expect("the SMTP sink starts");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the SMTP sink never listened"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        SmtpSink {
            child,
            port,
            maildir,
        }
    }

    /// Every message received, raw.
    fn messages(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        entries
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A header's value in a raw message.
fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
}

fn notice_scenario(db: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    init(&data, db);
    let csv = generate(dir.path(), 300);
    let rejects = dir.path().join("rejects.csv");
    assert!(import(&data, db, &rejects, &[&csv], &[]).status.success());
    // A tenth of the reads by account 1, over the 300 imported persons.
    fill_ledger_with(
        &data,
        db,
        rempart_ledger::bench::Synthetic::new(7, 0)
            .with_persons(300)
            .with_hot_percent(10),
        3000,
    );
    let loc = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.extend(["--data".to_string(), s(&data).to_string()]);
        if let Some(u) = db {
            v.extend(["--database".to_string(), u.to_string()]);
        }
        v
    };
    let command = |args: &[&str]| -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rempart"));
        c.args(loc(args))
            .env_remove("REMPART_KEYS")
            .env_remove("REMPART_DATABASE_URL")
            .env_remove("REMPART_DATA")
            .env_remove("REMPART_DPO");
        c
    };
    let run = |args: &[&str]| -> String {
        let out = command(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let fails = |args: &[&str]| -> String {
        let out = command(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    run(&[
        "incident",
        "open",
        "--title",
        "Identifiants hameçonnés",
        "--account",
        "1",
        "--from",
        "2026-01-01",
        "--to",
        "2026-01-02",
        "--aware-at",
        "2026-01-03T08:00:00Z",
    ]);
    let scope: serde_json::Value =
        serde_json::from_str(&run(&["incident", "scope", "1", "--format", "json"])).unwrap();
    let persons = scope["persons"].as_u64().unwrap();
    let exempt = scope["pseudonymous_only"].as_u64().unwrap();
    assert!(persons - exempt >= 40, "{scope}");
    let dpo = [
        "--dpo",
        "DPO, 1 rue de l'Exemple, 75000 Paris, dpo@example.org",
    ];

    // The draft: the DPO is required, and the 72 hours are long past, so
    // the reasons for the delay are too.
    let e = fails(&["incident", "report", "1"]);
    assert!(e.contains("--dpo"), "{e}");
    let e = fails(&["incident", "report", "1", dpo[0], dpo[1]]);
    assert!(e.contains("delay reason"), "{e}");
    let md = run(&[
        "incident",
        "report",
        "1",
        dpo[0],
        dpo[1],
        "--delay-reason",
        "exercice",
    ]);
    assert!(md.contains("CNIL — initiale"), "{md}");
    assert!(
        md.contains(&format!(
            "Personnes concernées (demandeurs d'emploi) : **{persons}**"
        )),
        "{md}"
    );
    assert!(md.contains("Motifs du retard : exercice"), "{md}");
    assert!(
        md.contains("disponible une fois les communications préparées"),
        "{md}"
    );

    // Notices: one per person to inform, queued once.
    let e = fails(&["incident", "dispatch", "1", "--letters", s(dir.path())]);
    assert!(e.contains("run `rempart incident notify 1` first"), "{e}");
    let measures = ["--measures", "Le compte a été suspendu le jour même."];
    let out = run(&[
        "incident",
        "notify",
        "1",
        dpo[0],
        dpo[1],
        measures[0],
        measures[1],
    ]);
    let to_inform = persons - exempt;
    assert!(
        out.contains(&format!("{to_inform} notices queued")),
        "{out}"
    );
    // Queued again with other words: nothing added, the first words
    // stand (a queued notice renders again the same), and it says so.
    let other = command(&[
        "incident",
        "notify",
        "1",
        dpo[0],
        dpo[1],
        "--measures",
        "Autre chose.",
    ])
    .output()
    .unwrap();
    assert!(other.status.success());
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("those stand"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    let again = String::from_utf8_lossy(&other.stdout).into_owned();
    assert!(
        again.contains("0 notices queued")
            && again.contains(&format!("({to_inform} already queued)")),
        "{again}"
    );
    let number = |text: &str, after: &str| -> u64 {
        let i = text
            .find(after)
            .unwrap_or_else(|| panic!("{after:?} in {text}"))
            + after.len();
        text[i..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let emails = number(&out, "; ");
    let letters = number(&out, "by e-mail, ");
    assert_eq!(emails + letters, to_inform, "{out}");
    assert!(letters > 0 && emails > 0, "{out}");

    // Two dispatchers at once, each killed with SIGKILL mid-way, then one
    // started again.
    let sink = SmtpSink::start(dir.path(), None);
    let letters_dir = dir.path().join("letters");
    let relay = format!("127.0.0.1:{}", sink.port);
    let dispatch = |rate: &str| {
        vec![
            "incident".to_string(),
            "dispatch".into(),
            "1".into(),
            "--smtp".into(),
            relay.clone(),
            "--from".into(),
            "dpo@example.org".into(),
            "--letters".into(),
            s(&letters_dir).into(),
            "--rate".into(),
            rate.into(),
            "--claim-seconds".into(),
            "2".into(),
        ]
    };
    // One worker each: a killed dispatcher has at most one e-mail between
    // the relay's acceptance and its record (with N workers, N).
    let mut args = dispatch("40");
    args.extend(["--parallel".to_string(), "1".to_string()]);
    let spawn = || {
        command(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let (mut first, mut second) = (spawn(), spawn());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for (child, after) in [(&mut first, 10), (&mut second, 20)] {
        while sink.messages().len() < after {
            assert!(std::time::Instant::now() < deadline, "no e-mail arrived");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let before = sink.messages().len() as u64;
    assert!(
        before < emails,
        "killed before the end: {before} of {emails}"
    );
    let args = dispatch("2000");
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.contains(&format!(
            "register: {to_inform} of {to_inform} notices delivered"
        )),
        "{out}"
    );
    assert!(out.contains("persons_informed recorded"), "{out}");

    // Every person informed once: one Message-ID each; at most the e-mail
    // each killed dispatcher had in flight arrived twice, with the same
    // identity.
    let messages = sink.messages();
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    for m in &messages {
        let id = header(m, "Message-ID").expect("a Message-ID").to_string();
        *ids.entry(id).or_default() += 1;
        assert_eq!(
            header(m, "Content-Type"),
            Some("text/plain; charset=utf-8"),
            "{m}"
        );
    }
    assert_eq!(ids.len() as u64, emails, "one distinct e-mail per person");
    assert!(
        messages.len() as u64 - emails <= 2,
        "{} duplicates",
        messages.len() as u64 - emails
    );
    let pdfs: Vec<_> = std::fs::read_dir(letters_dir.join("incident-1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        pdfs.len() as u64,
        letters,
        "one letter per person without e-mail"
    );
    assert!(
        pdfs.iter()
            .all(|p| p.extension().is_some_and(|e| e == "pdf"))
    );
    assert!(std::fs::read(&pdfs[0]).unwrap().starts_with(b"%PDF-"));
    #[cfg(unix)]
    {
        // A letter holds a name and an address: private to its owner.
        use std::os::unix::fs::PermissionsExt;
        for p in pdfs.iter().chain([&letters_dir.join("incident-1")]) {
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o077;
            assert_eq!(mode, 0, "{} is readable by others", p.display());
        }
    }
    // No personal value leaves in the notice body but what the notice
    // says: the greeting names no one.
    assert!(messages[0].contains("Madame, Monsieur,"), "{}", messages[0]);

    // Again: nothing more to deliver, nothing delivered twice.
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.contains("0 notices delivered"), "{out}");
    assert_eq!(sink.messages().len(), messages.len());
    let shown = run(&["incident", "show", "1"]);
    assert_eq!(shown.matches("persons_informed").count(), 1, "{shown}");
    assert!(
        shown.contains(&format!(
            "notices: {to_inform} of {to_inform} delivered (e-mail {emails}/{emails}, letters {letters}/{letters})"
        )),
        "{shown}"
    );

    // A relay that refuses some addresses for good: the dispatch goes on,
    // turns those notices into letters and says how many; the persons are
    // not all informed until the letters are written.
    run(&[
        "incident",
        "open",
        "--title",
        "Bis",
        "--account",
        "1",
        "--from",
        "2026-01-01",
        "--to",
        "2026-01-02",
    ]);
    run(&[
        "incident",
        "notify",
        "2",
        dpo[0],
        dpo[1],
        measures[0],
        measures[1],
    ]);
    let refusing = SmtpSink::start(dir.path(), Some("laposte.net"));
    let relay = format!("127.0.0.1:{}", refusing.port);
    let out = run(&[
        "incident",
        "dispatch",
        "2",
        "--smtp",
        &relay,
        "--from",
        "dpo@example.org",
        "--rate",
        "5000",
    ]);
    let refused = number(&out, "again; ");
    assert!(refused > 0, "{out}");
    assert_eq!(refusing.messages().len() as u64, emails - refused, "{out}");
    assert!(
        out.contains(&format!(
            "(e-mail {0}/{0}, letters 0/{1})",
            emails - refused,
            letters + refused
        )),
        "{out}"
    );
    assert!(!out.contains("persons_informed"), "{out}");
    let second = dir.path().join("letters-2");
    let out = run(&["incident", "dispatch", "2", "--letters", s(&second)]);
    assert!(
        out.contains(&format!("{} notices delivered", letters + refused)),
        "{out}"
    );
    assert!(out.contains("persons_informed recorded"), "{out}");
    assert_eq!(
        std::fs::read_dir(second.join("incident-2"))
            .unwrap()
            .count() as u64,
        letters + refused
    );

    // The draft now counts by département, and once the authority is
    // notified the next one is complementary.
    run(&[
        "incident",
        "event",
        "1",
        "--milestone",
        "authority_notified",
    ]);
    let json: serde_json::Value = serde_json::from_str(&run(&[
        "incident", "report", "1", dpo[0], dpo[1], "--format", "json",
    ]))
    .unwrap();
    assert_eq!(json["phase"], "complementary", "{json}");
    let by_dep: u64 = json["departements"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(by_dep, to_inform, "{json}");
}

#[test]
fn notice_commands_sqlite() {
    notice_scenario(None);
}

#[test]
fn notice_commands_postgres() {
    let db = TestDatabase::create("rempart_t");
    notice_scenario(Some(&db.url));
}
