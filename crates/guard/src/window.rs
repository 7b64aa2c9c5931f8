//! Sliding-window counters: a ring of buckets per window, a running total,
//! no allocation. The hour is 12 buckets of 5 minutes, the day 24 buckets
//! of an hour; each also holds what the other instances counted, as of the
//! last sync.

/// Seconds in a bucket of the hour window; also the granularity of the
/// counters instances share.
pub const BUCKET_SECS: i64 = 300;
/// Buckets of [`BUCKET_SECS`] in an hour.
pub const HOUR_BUCKETS: i64 = 12;
/// Buckets of [`BUCKET_SECS`] in a day.
pub const DAY_BUCKETS: i64 = 288;

/// The shared-counter bucket of a Unix time.
pub fn bucket_of(unix_secs: i64) -> i64 {
    unix_secs.div_euclid(BUCKET_SECS)
}

/// Counts over the last `N` buckets of `WIDTH` seconds.
#[derive(Debug, Clone)]
pub(crate) struct Window<const N: usize, const WIDTH: i64> {
    counts: [u32; N],
    /// Bucket index (time / WIDTH) of the newest bucket.
    head: i64,
    total: u32,
}

impl<const N: usize, const WIDTH: i64> Window<N, WIDTH> {
    pub(crate) fn new() -> Self {
        Window {
            counts: [0; N],
            head: i64::MIN,
            total: 0,
        }
    }

    /// Moves the window to end at `unix_secs`. Time going backwards (two
    /// instances' clocks) counts into the newest bucket.
    fn advance(&mut self, unix_secs: i64) {
        let b = unix_secs.div_euclid(WIDTH);
        if b <= self.head {
            return;
        }
        let gap = b.saturating_sub(self.head);
        if gap >= N as i64 {
            self.counts = [0; N];
            self.total = 0;
        } else {
            for i in 1..=gap {
                let slot = (self.head + i).rem_euclid(N as i64) as usize;
                // Saturated counts may leave the total below their sum.
                self.total = self.total.saturating_sub(self.counts[slot]);
                self.counts[slot] = 0;
            }
        }
        self.head = b;
    }

    /// Adds `n` at `unix_secs`.
    pub(crate) fn add(&mut self, unix_secs: i64, n: u32) {
        self.advance(unix_secs);
        let slot = self.head.rem_euclid(N as i64) as usize;
        self.counts[slot] = self.counts[slot].saturating_add(n);
        self.total = self.total.saturating_add(n);
    }

    /// The count over the window ending at `unix_secs`.
    pub(crate) fn total(&mut self, unix_secs: i64) -> u32 {
        self.advance(unix_secs);
        self.total
    }

    /// Whether nothing is counted any more at `unix_secs`.
    pub(crate) fn is_empty_at(&mut self, unix_secs: i64) -> bool {
        self.total(unix_secs) == 0
    }
}

/// One metric of one subject: the last hour and the last day, local and
/// remote.
#[derive(Debug, Clone)]
pub(crate) struct Rate {
    hour: Window<12, BUCKET_SECS>,
    day: Window<24, 3600>,
    /// Other instances' counts over the last hour and day, as of the last sync.
    pub(crate) remote_hour: u32,
    pub(crate) remote_day: u32,
}

impl Rate {
    pub(crate) fn new() -> Self {
        Rate {
            hour: Window::new(),
            day: Window::new(),
            remote_hour: 0,
            remote_day: 0,
        }
    }

    /// Counts into the hour window only.
    pub(crate) fn add_hour(&mut self, at: i64, n: u32) {
        self.hour.add(at, n);
        self.day.advance(at);
    }

    /// Counts into the day window only.
    pub(crate) fn add_day(&mut self, at: i64, n: u32) {
        self.day.add(at, n);
        self.hour.advance(at);
    }

    /// Counts into both windows.
    pub(crate) fn add(&mut self, at: i64, n: u32) {
        self.hour.add(at, n);
        self.day.add(at, n);
    }

    /// Every instance's count over the last hour.
    pub(crate) fn hour(&mut self, at: i64) -> u32 {
        self.hour.total(at).saturating_add(self.remote_hour)
    }

    /// Every instance's count over the last day.
    pub(crate) fn day(&mut self, at: i64) -> u32 {
        self.day.total(at).saturating_add(self.remote_day)
    }

    /// Whether this instance counted nothing in the last day.
    pub(crate) fn locally_idle(&mut self, at: i64) -> bool {
        self.day.is_empty_at(at) && self.hour.is_empty_at(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_window_forgets_what_slid_out() {
        let mut w: Window<12, 300> = Window::new();
        w.add(0, 3);
        w.add(299, 1);
        w.add(300, 2);
        assert_eq!(w.total(300), 6);
        assert_eq!(w.total(3599), 6, "still within 12 buckets");
        assert_eq!(w.total(3600), 2, "the first bucket slid out");
        assert_eq!(w.total(3900), 0);
        w.add(100_000, 5);
        assert_eq!(w.total(100_000), 5);
        w.add(99_000, 1); // a little in the past: counted in the newest bucket
        assert_eq!(w.total(100_000), 6);
    }

    #[test]
    fn rates_keep_hour_and_day_streams_apart_and_add_remote_counts() {
        let mut r = Rate::new();
        r.add_hour(1000, 1);
        r.add_day(1000, 1);
        r.add(1000, 2);
        r.remote_hour = 10;
        r.remote_day = 20;
        assert_eq!(r.hour(1000), 13);
        assert_eq!(r.day(1000), 23);
        assert!(!r.locally_idle(1000));
        assert!(r.locally_idle(1000 + 2 * 86_400));
    }

    proptest! {
        /// The running total always equals a brute-force count of the
        /// events within the window.
        #[test]
        fn totals_match_a_brute_force_count(steps in proptest::collection::vec((0i64..2000, 0u32..5), 1..200)) {
            let mut w: Window<12, 300> = Window::new();
            let mut t = 0i64;
            let mut events: Vec<(i64, u32)> = Vec::new();
            for (dt, n) in steps {
                t += dt;
                w.add(t, n);
                events.push((t, n));
                let head = t.div_euclid(300);
                let expected: u32 = events
                    .iter()
                    .filter(|(e, _)| head - e.div_euclid(300) < 12)
                    .map(|(_, n)| n)
                    .sum();
                prop_assert_eq!(w.total(t), expected);
            }
        }
    }
}
