//! How many tokens to draft for the next trip: as many as pay for themselves.
//!
//! If each drafted token stands with probability `a` (given the ones before it stood), a
//! trip that drafts `k` yields `1 + a + … + a^k` tokens on average and costs the trip's
//! fixed part (links, one row of compute on every hop) plus `k` extra rows. The length
//! chosen is the `k` (0 ≤ k ≤ max) with the most expected tokens per second; `k = 0` is
//! decoding without speculation, so a drafter that is rarely right, or rows that cost
//! as much as trips, bring the length down to none. Both `a` and the costs are moving
//! averages of what trips measured; while speculation is off, every
//! [`PROBE_EVERY`]th trip drafts one token to notice when the text turns predictable. A
//! probe can be dear (a draft model's decode, and a row that costs a whole decode on
//! every hop), so a controller may back off: with [`DraftLength::with_probe_ceiling`],
//! each probe after which drafting still does not pay doubles the wait for the next, up
//! to the ceiling, and a row found dearer than a whole trip (which no acceptance pays
//! for) waits the ceiling at once. Until a row is priced, trips draft one token each.
//!
//! The price of a row is a drafted trip's time less a trip without drafts, so that base
//! must be right: the first [`PLAIN_FIRST`] trips go without drafts (the first of them,
//! slower than the rest as the route warms up, is not counted, nor is the first drafted
//! trip, for the same reason), and while drafting, every
//! [`REFRESH_EVERY`]th trip goes without again, so the base follows the route's load.

use std::time::Duration;

/// While the chosen length is 0, one trip in this many drafts a token anyway.
pub const PROBE_EVERY: u32 = 16;
/// Trips without drafts that a generation starts with.
pub const PLAIN_FIRST: u32 = 3;
/// While drafting, one trip in this many goes without drafts, to time the route again.
pub const REFRESH_EVERY: u32 = 32;
/// Weight of the newest measurement in the moving averages.
const NEWEST: f64 = 0.2;
/// The acceptance assumed before any trip has measured it.
const PRIOR_ACCEPTANCE: f64 = 0.5;
/// An extra row's cost, as a share of a one-row trip, before any trip has measured it.
const PRIOR_ROW_SHARE: f64 = 0.1;

/// The draft-length controller of one generation.
#[derive(Debug, Clone)]
pub struct DraftLength {
    max: usize,
    /// Moving sums of drafted tokens that stood, and of tries (each trip's run of
    /// accepted drafts ends in one rejection unless every draft stood).
    stood: f64,
    tries: f64,
    /// Seconds of a trip that drafts nothing, and of each extra row.
    trip_s: Option<f64>,
    row_s: Option<f64>,
    /// Trips since the last one that drafted, while the chosen length is 0.
    idle_trips: u32,
    /// Trips without drafts recorded so far (the first is not timed).
    plain_trips: u32,
    /// Drafted trips since the last one without drafts.
    drafted_trips: u32,
    /// A drafted trip was recorded (the first, slower as the hops' drafted path warms
    /// up, is not timed).
    drafted_before: bool,
    /// Trips between probes now, and at most.
    probe_every: u32,
    probe_ceiling: u32,
}

impl DraftLength {
    /// A controller that drafts at most `max` tokens a trip.
    pub fn new(max: usize) -> Self {
        DraftLength {
            max,
            stood: PRIOR_ACCEPTANCE,
            tries: 1.0,
            trip_s: None,
            row_s: None,
            idle_trips: 0,
            plain_trips: 0,
            drafted_trips: 0,
            drafted_before: false,
            probe_every: PROBE_EVERY,
            probe_ceiling: PROBE_EVERY,
        }
    }

    /// The same, the wait between probes doubling up to `ceiling` trips while drafting
    /// does not pay.
    pub fn with_probe_ceiling(self, ceiling: u32) -> Self {
        Self { probe_ceiling: ceiling.max(PROBE_EVERY), ..self }
    }

    /// The measured chance that a drafted token stands.
    pub fn acceptance(&self) -> f64 {
        self.stood / self.tries.max(1e-9)
    }

    /// Expected tokens of a trip that drafts `k`: 1 + a + … + a^k.
    fn expected_tokens(&self, k: usize) -> f64 {
        let a = self.acceptance().clamp(0.0, 1.0);
        (0..=k).map(|i| a.powi(i as i32)).sum()
    }

    /// The length with the most expected tokens per second.
    fn best(&self) -> usize {
        let trip = self.trip_s.unwrap_or(1.0);
        let row = self.row_s.unwrap_or(trip * PRIOR_ROW_SHARE);
        let rate = |k: usize| self.expected_tokens(k) / (trip + row * k as f64);
        (0..=self.max).fold(0, |best, k| if rate(k) > rate(best) { k } else { best })
    }

    /// How many tokens to draft next.
    pub fn choose(&mut self) -> usize {
        if self.plain_trips < PLAIN_FIRST || self.trip_s.is_none() || self.max == 0 {
            return 0; // trips without drafts first: the base that rows are priced against
        }
        if self.drafted_trips >= REFRESH_EVERY {
            return 0;
        }
        let best = self.best();
        if best > 0 {
            self.idle_trips = 0;
            self.probe_every = PROBE_EVERY;
            // Until a row is priced, one draft a trip, not the priors' many: a row may
            // cost a draft model's decode and a whole decode on every hop.
            return if self.row_s.is_none() { 1 } else { best };
        }
        self.idle_trips += 1;
        if self.idle_trips >= self.probe_every {
            self.idle_trips = 0;
            self.probe_every = self.probe_every.saturating_mul(2).min(self.probe_ceiling);
            return 1;
        }
        0
    }

    /// Whether one of the next `trips` trips may draft: at the start, while drafting, or
    /// when a probe is due within them.
    pub fn may_draft_within(&self, trips: u32) -> bool {
        self.max > 0 && (self.idle_trips == 0 || self.idle_trips.saturating_add(trips) >= self.probe_every)
    }

    /// What a trip measured: it drafted `drafted` tokens, `stood` of them stood, and it
    /// took `trip` from sending the step to the result.
    pub fn record(&mut self, drafted: usize, stood: usize, trip: Duration) {
        let secs = trip.as_secs_f64();
        if drafted == 0 {
            self.plain_trips = self.plain_trips.saturating_add(1);
            self.drafted_trips = 0;
            if self.plain_trips > 1 {
                self.trip_s = Some(self.trip_s.map_or(secs, |t| t + NEWEST * (secs - t)));
            }
            return;
        }
        self.drafted_trips += 1;
        let timed = std::mem::replace(&mut self.drafted_before, true);
        let stood = stood.min(drafted);
        let tries = stood + usize::from(stood < drafted);
        self.stood = (1.0 - NEWEST) * self.stood + stood as f64;
        self.tries = (1.0 - NEWEST) * self.tries + tries as f64;
        if let (Some(base), true) = (self.trip_s, timed) {
            let per_row = ((secs - base) / drafted as f64).max(0.0);
            let row = self.row_s.map_or(per_row, |r| r + NEWEST * (per_row - r));
            self.row_s = Some(row);
            if row >= base {
                // A row dearer than a trip never pays, however many drafts stand: the
                // next probe waits the longest.
                self.probe_every = self.probe_ceiling;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRIP: Duration = Duration::from_millis(46);

    /// The trips without drafts a generation starts with, the first slow.
    fn start(ctl: &mut DraftLength) {
        for i in 0..PLAIN_FIRST {
            assert_eq!(ctl.choose(), 0, "trip {i} goes without drafts");
            ctl.record(0, 0, if i == 0 { TRIP * 3 } else { TRIP });
        }
    }

    /// Feeds `trips` trips whose drafts stand with probability `a` (every `1/(1-a)`th
    /// one is rejected, deterministically) and whose extra rows cost `row` each.
    fn run(ctl: &mut DraftLength, trips: usize, a: f64, row: Duration) -> Vec<usize> {
        let mut chosen = Vec::new();
        let mut debt = 0.0;
        for _ in 0..trips {
            let k = ctl.choose();
            chosen.push(k);
            let mut stood = 0;
            while stood < k {
                debt += 1.0 - a;
                if debt >= 1.0 {
                    debt -= 1.0;
                    break;
                }
                stood += 1;
            }
            ctl.record(k, stood, TRIP + row * k as u32);
        }
        chosen
    }

    #[test]
    fn a_drafter_that_is_mostly_right_with_cheap_rows_drafts_the_most() {
        let mut ctl = DraftLength::new(8);
        start(&mut ctl);
        let chosen = run(&mut ctl, 200, 0.9, Duration::from_millis(2));
        assert!((ctl.acceptance() - 0.9).abs() < 0.1, "acceptance {}", ctl.acceptance());
        // Drafting all along, but for a trip in every REFRESH_EVERY + 1 that times the route again.
        let late = &chosen[100..];
        assert!(late.iter().filter(|&&k| k > 0).all(|&k| k >= 6), "{late:?}");
        let plain = late.iter().filter(|&&k| k == 0).count();
        assert!((1..=late.len() / REFRESH_EVERY as usize + 1).contains(&plain), "{late:?}");
    }

    #[test]
    fn a_drafter_that_is_never_right_stops_drafting_but_for_rare_probes() {
        let mut ctl = DraftLength::new(8);
        start(&mut ctl);
        let chosen = run(&mut ctl, 200, 0.0, Duration::from_millis(2));
        let late = &chosen[100..];
        let drafting = late.iter().filter(|&&k| k > 0).count();
        assert!(drafting <= late.len() / PROBE_EVERY as usize + 1, "{late:?}");
        assert!(late.iter().all(|&k| k <= 1));
        assert!(ctl.acceptance() < 0.05);
    }

    #[test]
    fn rows_as_dear_as_a_trip_are_not_worth_a_coin_flip() {
        let mut ctl = DraftLength::new(8);
        start(&mut ctl);
        let chosen = run(&mut ctl, 200, 0.5, TRIP);
        assert!(chosen[100..].iter().filter(|&&k| k > 0).count() <= 100 / PROBE_EVERY as usize + 1);
        // With cheap rows the same drafter is worth a few tokens a trip.
        let mut ctl = DraftLength::new(8);
        start(&mut ctl);
        let chosen = run(&mut ctl, 200, 0.5, Duration::from_millis(1));
        let late = &chosen[100..];
        assert!(late.iter().filter(|&&k| k > 0).all(|&k| (2..=6).contains(&k)), "{late:?}");
        assert!(late.iter().filter(|&&k| k == 0).count() <= late.len() / REFRESH_EVERY as usize + 1);
    }

    #[test]
    fn a_slow_first_trip_does_not_make_rows_look_cheap() {
        // Drafts always stand, but a row costs more than a trip: drafting does not pay,
        // although a drafted trip is quicker than the first trip (3 × TRIP) was.
        let mut ctl = DraftLength::new(8);
        start(&mut ctl);
        let chosen = run(&mut ctl, 100, 1.0, TRIP * 6 / 5);
        assert!(chosen.iter().filter(|&&k| k > 0).count() <= 100 / PROBE_EVERY as usize + 2, "{chosen:?}");
    }

    #[test]
    fn probes_back_off_up_to_the_ceiling() {
        let mut ctl = DraftLength::new(8).with_probe_ceiling(4 * PROBE_EVERY);
        start(&mut ctl);
        let chosen = run(&mut ctl, 400, 0.0, Duration::from_millis(2));
        // The first trips draft on the priors; then drafting is off and probes space out.
        let drafting: Vec<usize> = chosen.iter().enumerate().filter(|(_, &k)| k > 0).map(|(i, _)| i).collect();
        let every = PROBE_EVERY as usize;
        let first = drafting.windows(2).position(|w| w[1] - w[0] == every).expect("a first probe") + 1;
        let gaps: Vec<usize> = drafting[first..].windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.len() >= 4 && gaps[..2] == [2 * every, 4 * every], "{drafting:?}");
        assert!(gaps[2..].iter().all(|&g| g == 4 * every), "held at the ceiling: {gaps:?}");
    }

    #[test]
    fn one_draft_a_trip_until_a_row_is_priced_and_a_row_dearer_than_a_trip_waits_the_ceiling() {
        let ceiling = 8 * PROBE_EVERY;
        // Cheap rows: one draft a trip until a row is priced (the first drafted trip, slow
        // as the route warms up, does not count), then the most.
        let mut ctl = DraftLength::new(8).with_probe_ceiling(ceiling);
        start(&mut ctl);
        assert_eq!(ctl.choose(), 1);
        ctl.record(1, 1, TRIP * 3);
        let chosen = run(&mut ctl, 3, 1.0, Duration::from_millis(1));
        assert_eq!(chosen, [1, 8, 8]);
        // Rows dearer than a trip: one draft, then nothing until the ceiling.
        let mut ctl = DraftLength::new(8).with_probe_ceiling(ceiling);
        start(&mut ctl);
        let chosen = run(&mut ctl, 2 * ceiling as usize, 1.0, TRIP * 2);
        let drafting: Vec<usize> = chosen.iter().enumerate().filter(|(_, &k)| k > 0).map(|(i, _)| i).collect();
        assert_eq!(drafting, [0, 1, 1 + ceiling as usize], "{chosen:?}");
        assert!(chosen.iter().all(|&k| k <= 1));
    }

    #[test]
    fn no_drafting_when_the_limit_is_zero() {
        let mut ctl = DraftLength::new(0);
        assert!((0..100).all(|_| ctl.choose() == 0));
    }
}
