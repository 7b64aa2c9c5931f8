//! Progress display: a bar on a terminal, plain lines (every few seconds)
//! otherwise, so logs of scheduled imports stay readable.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rempart_import::{FileKind, FileReport, Progress};

const LINE_EVERY: Duration = Duration::from_secs(5);

/// A counter with a known (or later known) total.
pub struct Counter {
    bar: Option<ProgressBar>,
    label: &'static str,
    last_line: Mutex<Instant>,
    total: std::sync::atomic::AtomicU64,
}

pub fn counter(total: u64, label: &'static str) -> Counter {
    let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b.set_message(label);
        b
    });
    Counter {
        bar,
        label,
        last_line: Mutex::new(Instant::now()),
        total: total.into(),
    }
}

impl Counter {
    pub fn set_total(&self, total: u64) {
        self.total
            .store(total, std::sync::atomic::Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.set_length(total);
        }
    }

    pub fn set(&self, n: u64) {
        match &self.bar {
            Some(b) => b.set_position(n),
            None => {
                let mut last = self.last_line.lock().unwrap_or_else(|p| p.into_inner());
                if last.elapsed() >= LINE_EVERY {
                    *last = Instant::now();
                    let total = self.total.load(std::sync::atomic::Ordering::Relaxed);
                    eprintln!("{}: {n}/{total}", self.label);
                }
            }
        }
    }

    pub fn done(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Import progress by bytes of the current file.
pub struct ImportProgress {
    terminal: bool,
    state: Mutex<State>,
}

struct State {
    bar: Option<ProgressBar>,
    name: String,
    bytes: u64,
    last_line: Instant,
    /// The first position reported (a resumed import starts part-way)
    /// and when: rates and the ETA count from there.
    origin: Option<(Instant, u64, u64)>,
}

impl State {
    /// Lines per second and seconds left, once there is something to go on.
    fn pace(&self, bytes: u64, records: u64) -> Option<(f64, f64)> {
        let (at, b0, r0) = self.origin?;
        let secs = at.elapsed().as_secs_f64();
        let done = bytes.saturating_sub(b0) as f64;
        if secs < 0.5 || done <= 0.0 {
            return None;
        }
        let left = self.bytes.saturating_sub(bytes) as f64 / (done / secs);
        Some((records.saturating_sub(r0) as f64 / secs, left))
    }
}

impl ImportProgress {
    pub fn new(terminal: bool) -> Self {
        ImportProgress {
            terminal,
            state: Mutex::new(State {
                bar: None,
                name: String::new(),
                bytes: 0,
                last_line: Instant::now(),
                origin: None,
            }),
        }
    }
}

impl Progress for ImportProgress {
    fn start(&self, path: &Path, _kind: FileKind, bytes: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.name = path.display().to_string();
        s.bytes = bytes;
        s.last_line = Instant::now();
        s.origin = None;
        if self.terminal {
            let b = ProgressBar::with_draw_target(Some(bytes), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_message(s.name.clone());
            s.bar = Some(b);
        } else {
            eprintln!("importing {} ({bytes} bytes)", s.name);
        }
    }

    fn advance(&self, bytes: u64, records: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.origin.is_none() {
            s.origin = Some((Instant::now(), bytes, records));
        }
        let pace = s.pace(bytes, records);
        if let Some(b) = &s.bar {
            b.set_position(bytes);
            if let Some((rate, _)) = pace {
                b.set_message(format!("{} {records} lines, {rate:.0} lines/s", s.name));
            }
        } else if s.last_line.elapsed() >= LINE_EVERY {
            s.last_line = Instant::now();
            let pct = if s.bytes > 0 {
                bytes as f64 * 100.0 / s.bytes as f64
            } else {
                100.0
            };
            match pace {
                Some((rate, left)) => eprintln!(
                    "  {}: {records} lines, {pct:.0}%, {rate:.0} lines/s, about {left:.0}s left",
                    s.name
                ),
                None => eprintln!("  {}: {records} lines, {pct:.0}%", s.name),
            }
        }
    }

    fn finish(&self, report: &FileReport) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = s.bar.take() {
            b.finish_and_clear();
        }
        if !self.terminal {
            eprintln!("  {}: done, {} lines", s.name, report.records);
        }
    }
}

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
