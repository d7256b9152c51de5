//! Property tests: random zones (many with DST), instants concentrated around DST transitions in
//! 2024–2030, random histories and random valid policies.

use jiff::{
    SignedDuration, ToSpan,
    civil::{Date, Time, Weekday},
    tz::TimeZone,
};
use proptest::prelude::*;
use voxbridge_compliance::{
    Callee, Decision, FEDERAL_WINDOW_END, FEDERAL_WINDOW_START, MIN_RETRY_GAP_S, Outcome,
    PastAttempt, Policy, Retry, StateRule, Timestamp, Zones, check, next_retry, resolve_zones,
    state_rule, us_state,
};

const ZONES: &[&str] = &[
    "America/New_York",
    "America/Los_Angeles",
    "America/Chicago",
    "Europe/London",
    "Australia/Lord_Howe",
    "America/St_Johns",
    "Pacific/Chatham",
    "Asia/Kolkata",
    "America/Phoenix",
    "Europe/Moscow",
    "America/Santiago",
    "Africa/Casablanca",
    "Australia/Sydney",
    "Europe/Berlin",
];

/// Numbers: state-rule states, a plain one, foreign ones, and ambiguous ones (2, 8, 12, 15 zones).
const NUMBERS: &[&str] = &[
    "+13055550100",  // Miami FL
    "+18504321234",  // Pensacola FL (Central)
    "+14052345678",  // Oklahoma City OK
    "+14105550100",  // Baltimore MD
    "+12052345678",  // Birmingham AL (no Sundays)
    "+16052345678",  // SD (weekdays only)
    "+12145550100",  // Dallas TX
    "+12125550100",  // New York, no state rule
    "+442079460000", // London
    "+4930123456",   // Berlin
    "+12082001234",  // Idaho: Boise / Los_Angeles
    "+61412345678",  // Australian mobile: 8 zones
    "+79161234567",  // Russian mobile: 12 zones
    "+12423591234",  // Bahamas mobile: all of +1's zones
];

fn tz(name: &str) -> TimeZone {
    jiff::tz::db()
        .get(name)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn secs(t: Timestamp, s: i64) -> Timestamp {
    t.checked_add(SignedDuration::from_secs(s))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn at_local(z: &TimeZone, d: Date, t: Time) -> Timestamp {
    d.to_datetime(t)
        .to_zoned(z.clone())
        .unwrap_or_else(|e| panic!("{e}"))
        .timestamp()
}

/// An instant near a DST transition of a random zone in 2024–2030 (or anywhere in the year).
fn instant() -> impl Strategy<Value = Timestamp> {
    (
        0..ZONES.len(),
        2024i16..=2030,
        0usize..3,
        -2 * 86_400i64..2 * 86_400,
        any::<bool>(),
    )
        .prop_map(|(zi, year, nth, off, near)| {
            let z = tz(ZONES[zi]);
            let jan1 = at_local(&z, jiff::civil::date(year, 1, 1), Time::midnight());
            let base = if near {
                z.following(jan1)
                    .nth(nth)
                    .map(|t| t.timestamp())
                    .unwrap_or(jan1)
            } else {
                secs(jan1, i64::try_from(nth).unwrap_or(0) * 120 * 86_400)
            };
            secs(base, off)
        })
}

fn time_q(lo_q: i8, hi_q: i8) -> impl Strategy<Value = Time> {
    (lo_q..=hi_q).prop_map(|q| Time::constant(q / 4, (q % 4) * 15, 0, 0))
}

fn weekday(i: u8) -> Weekday {
    [
        Weekday::Monday,
        Weekday::Tuesday,
        Weekday::Wednesday,
        Weekday::Thursday,
        Weekday::Friday,
        Weekday::Saturday,
        Weekday::Sunday,
    ][usize::from(i % 7)]
}

/// Random valid policies.
fn policy() -> impl Strategy<Value = Policy> {
    (
        time_q(28, 56),                                  // start 07:00..14:00 (clamped below)
        time_q(52, 86),                                  // end 13:00..21:30 (clamped below)
        proptest::collection::vec(0u8..7, 0..3),         // no-call days
        1u32..4,                                         // per day
        proptest::collection::vec(time_q(32, 84), 1..4), // retry times
        1u32..7,                                         // give up days
        1u32..8,                                         // max attempts
        0u32..900,                                       // margin
        any::<bool>(),                                   // state rules
    )
        .prop_map(
            |(s, e, days, per_day, mut retry, give_up, max, margin, state)| {
                let start = s.max(FEDERAL_WINDOW_START);
                let mut end = e.min(FEDERAL_WINDOW_END);
                if end <= start.checked_add(2.hours()).unwrap_or(start) {
                    end = FEDERAL_WINDOW_END;
                }
                // make sure one retry time is callable
                retry.push(start.checked_add(30.minutes()).unwrap_or(start));
                let mut no_call_days: Vec<Weekday> = days.into_iter().map(weekday).collect();
                no_call_days.dedup();
                let p = Policy {
                    window_start: start,
                    window_end: end,
                    no_call_days,
                    max_attempts_per_day: per_day,
                    retry_times: retry,
                    give_up_after_days: give_up,
                    max_attempts: max,
                    require_consent: true,
                    start_margin_s: margin,
                    apply_state_rules: state,
                };
                assert_eq!(p.validate(), Ok(()), "{p:?}");
                p
            },
        )
}

#[derive(Clone, Debug)]
struct Case {
    now: Timestamp,
    number: &'static str,
    zone: Option<&'static str>,
    /// (seconds before now, subject index)
    history: Vec<(i64, u8)>,
    policy: Policy,
}

fn case() -> impl Strategy<Value = Case> {
    (
        instant(),
        0..NUMBERS.len(),
        proptest::option::weighted(0.5, 0..ZONES.len()),
        proptest::collection::vec((0i64..2 * 86_400, 0u8..2), 0..9),
        policy(),
    )
        .prop_map(|(now, ni, zi, history, policy)| Case {
            now,
            number: NUMBERS[ni],
            zone: zi.map(|i| ZONES[i]),
            history,
            policy,
        })
}

const SUBJECTS: [&str; 2] = ["camp-a", "camp-b"];

impl Case {
    fn callee(&self) -> Callee<'static> {
        Callee {
            number: self.number,
            timezone: self.zone,
            consent: true,
            do_not_call: false,
        }
    }
    fn attempts(&self) -> Vec<PastAttempt<'static>> {
        self.history
            .iter()
            .map(|(ago, s)| PastAttempt {
                at: secs(self.now, -ago),
                subject: SUBJECTS[usize::from(*s)],
                outcome: Some(Outcome::NoAnswer),
            })
            .collect()
    }
    fn zones(&self) -> Zones {
        resolve_zones(self.number, self.zone).unwrap_or_else(|e| panic!("{e}"))
    }
    fn state(&self) -> Option<&'static StateRule> {
        if self.policy.apply_state_rules {
            us_state(self.number).and_then(state_rule)
        } else {
            None
        }
    }
}

/// Independent restatement of the rules for one instant (used to check `Allowed`).
fn allowed_by_rules(
    c: &Case,
    t: Timestamp,
    history: &[PastAttempt<'_>],
    subject: &str,
) -> Result<(), String> {
    let p = &c.policy;
    let state = c.state();
    let mut start = p.window_start.max(FEDERAL_WINDOW_START);
    let mut end = p.window_end.min(FEDERAL_WINDOW_END);
    if let Some(s) = state {
        start = start.max(s.window_start);
        end = end.min(s.window_end);
    }
    let zones = c.zones();
    for (name, z) in zones.iter() {
        let local = t.to_zoned(z.clone());
        let day = local.date().weekday();
        if p.no_call_days.contains(&day) {
            return Err(format!("{name}: policy no-call day {day:?}"));
        }
        if let Some(s) = state
            && ((s.no_sundays && day == Weekday::Sunday)
                || (s.no_saturdays && day == Weekday::Saturday))
        {
            return Err(format!("{name}: state no-call day {day:?}"));
        }
        if local.time() < start {
            return Err(format!("{name}: {} before {start}", local.time()));
        }
        let close = at_local(z, local.date(), end);
        if secs(t, i64::from(p.start_margin_s)) >= close {
            return Err(format!(
                "{name}: {} + margin not before {end}",
                local.time()
            ));
        }
    }
    let (_, z0) = zones.first();
    let d0 = t.to_zoned(z0.clone()).date();
    let per_day = history
        .iter()
        .filter(|a| a.at.to_zoned(z0.clone()).date() == d0)
        .count();
    if per_day >= usize::try_from(p.max_attempts_per_day).unwrap_or(usize::MAX) {
        return Err(format!("daily cap: {per_day}"));
    }
    if let Some(cap) = state.and_then(|s| s.max_per_24h_same_subject) {
        let n = history
            .iter()
            .filter(|a| a.subject == subject && a.at <= t && a.at > secs(t, -86_400))
            .count();
        if n >= usize::try_from(cap).unwrap_or(usize::MAX) {
            return Err(format!("state cap: {n}"));
        }
    }
    Ok(())
}

/// 256 cases per property; `PROPTEST_CASES=N` runs more.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// (1) Allowed => inside the effective window (with margin) in every candidate zone, not a
    /// no-call day, caps not reached. And the converse for the instant itself.
    #[test]
    fn allowed_means_inside_the_rules(c in case()) {
        let h = c.attempts();
        let d = check(c.now, &c.callee(), &h, SUBJECTS[0], &c.policy);
        let by_rules = allowed_by_rules(&c, c.now, &h, SUBJECTS[0]);
        match &d {
            Decision::Allowed => prop_assert!(by_rules.is_ok(), "{:?}: {:?}", d, by_rules),
            Decision::Defer { .. } => prop_assert!(by_rules.is_err(), "deferred but rules allow: {:?}", d),
            Decision::Refuse { reason } => {
                prop_assert!(matches!(reason.code(), "NO_SLOT" | "UNKNOWN_TIME_ZONE"), "{reason}");
            }
        }
    }

    /// (2) Defer{until} => until > now, check(until) == Allowed, and nothing earlier is allowed.
    #[test]
    fn defer_is_the_earliest_allowed_instant(c in case(), fractions in proptest::collection::vec(0.0f64..1.0, 12)) {
        let h = c.attempts();
        let callee = c.callee();
        if let Decision::Defer { until, reason } = check(c.now, &callee, &h, SUBJECTS[0], &c.policy) {
            prop_assert!(until > c.now);
            prop_assert_eq!(check(until, &callee, &h, SUBJECTS[0], &c.policy), Decision::Allowed, "{}", reason);
            prop_assert!(allowed_by_rules(&c, until, &h, SUBJECTS[0]).is_ok());
            let span = until.duration_since(c.now).as_secs();
            let mut probes: Vec<i64> = fractions.iter().map(|f| (f * span as f64) as i64).collect();
            probes.extend([0, span - 1, span - 60]);
            for off in probes.into_iter().filter(|o| (0..span).contains(o)) {
                let t = secs(c.now, off);
                let d = check(t, &callee, &h, SUBJECTS[0], &c.policy);
                prop_assert!(d != Decision::Allowed, "allowed at {} before until {}", t, until);
                prop_assert!(allowed_by_rules(&c, t, &h, SUBJECTS[0]).is_err(), "rules allow {} before {}", t, until);
            }
        }
    }

    /// (3) Dial whenever allowed (or at the deferred instant): never more than max_attempts_per_day
    /// per local day, never more than 3 same-subject calls in 24 h for FL/OK/MD numbers.
    #[test]
    fn campaign_simulation_respects_caps(c in case(), gaps in proptest::collection::vec(60i64..4 * 3600, 40)) {
        let callee = c.callee();
        let mut h = c.attempts();
        let initial = h.len();
        let mut t = c.now;
        for gap in gaps {
            match check(t, &callee, &h, SUBJECTS[0], &c.policy) {
                Decision::Allowed => {
                    h.push(PastAttempt { at: t, subject: SUBJECTS[0], outcome: Some(Outcome::NoAnswer) });
                    t = secs(t, gap);
                }
                Decision::Defer { until, .. } => t = until,
                Decision::Refuse { .. } => break,
            }
        }
        let zones = c.zones();
        let (_, z0) = zones.first();
        let placed = &h[initial..];
        for a in placed {
            let d = a.at.to_zoned(z0.clone()).date();
            // counting only attempts up to and including this one (history is before `now`)
            let n = h.iter().filter(|b| b.at <= a.at && b.at.to_zoned(z0.clone()).date() == d).count();
            prop_assert!(n <= usize::try_from(c.policy.max_attempts_per_day).unwrap_or(usize::MAX), "{n} calls on {d}");
            if c.state().and_then(|s| s.max_per_24h_same_subject).is_some() {
                let n = h.iter().filter(|b| b.subject == SUBJECTS[0] && b.at <= a.at && b.at > secs(a.at, -86_400)).count();
                prop_assert!(n <= 3, "{n} same-subject calls in 24 h before {}", a.at);
            }
        }
    }

    /// (4) next_retry At => a configured retry time (local wall clock, DST gaps shifted), allowed,
    /// at least MIN_RETRY_GAP_S after now, before the give-up deadline, and the earliest such slot;
    /// GiveUp (deadline) => no allowed slot remains before the deadline.
    #[test]
    fn next_retry_lands_on_allowed_slots(c in case(), first_ago in 0i64..6 * 86_400, attempts in 1u32..8) {
        let h = c.attempts();
        let callee = c.callee();
        let first = secs(c.now, -first_ago);
        let r = next_retry(c.now, Outcome::NoAnswer, first, attempts, &callee, &h, SUBJECTS[0], &c.policy);
        let zones = c.zones();
        let (_, z0) = zones.first();
        let deadline = first
            .to_zoned(z0.clone())
            .checked_add(i64::from(c.policy.give_up_after_days).days())
            .map(|z| z.timestamp())
            .unwrap_or(Timestamp::MAX);
        let earliest = secs(c.now, MIN_RETRY_GAP_S);
        // every retry slot in [earliest, end)
        let slots_until = |end: Timestamp| {
            let mut out = Vec::new();
            let mut d = earliest.to_zoned(z0.clone()).date();
            while at_local(z0, d, Time::midnight()) < end {
                for rt in &c.policy.retry_times {
                    let s = at_local(z0, d, *rt);
                    if s >= earliest && s < end {
                        out.push(s);
                    }
                }
                d = d.tomorrow().unwrap_or_else(|e| panic!("{e}"));
            }
            out
        };
        match r {
            Retry::At { at } => {
                prop_assert!(attempts < c.policy.max_attempts);
                prop_assert!(at >= earliest && at < deadline, "{} not in [{}, {})", at, earliest, deadline);
                prop_assert_eq!(check(at, &callee, &h, SUBJECTS[0], &c.policy), Decision::Allowed);
                let local = at.to_zoned(z0.clone());
                prop_assert!(
                    c.policy.retry_times.iter().any(|rt| at_local(z0, local.date(), *rt) == at),
                    "{} is not a retry time", local
                );
                for s in slots_until(at) {
                    prop_assert!(check(s, &callee, &h, SUBJECTS[0], &c.policy) != Decision::Allowed, "earlier slot {} allowed", s);
                }
            }
            Retry::GiveUp { reason } => {
                if attempts < c.policy.max_attempts {
                    prop_assert!(reason.contains("give_up_after_days"), "{}", reason);
                    for s in slots_until(deadline) {
                        prop_assert!(check(s, &callee, &h, SUBJECTS[0], &c.policy) != Decision::Allowed, "slot {} before the deadline is allowed: {}", s, reason);
                    }
                }
            }
            Retry::Never { reason } => {
                // only when check refuses for good
                let d = check(c.now, &callee, &h, SUBJECTS[0], &c.policy);
                prop_assert!(matches!(d, Decision::Refuse { .. }), "never ({}) but check says {:?}", reason, d);
            }
        }
    }
}
