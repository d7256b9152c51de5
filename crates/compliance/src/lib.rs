//! Calling rules for outbound AI calls, as pure functions of (now, callee, history, policy).
//!
//! No I/O, no clock, no database: the server passes the current instant, the contact, the calls
//! already placed to that number and the campaign's [`Policy`], and gets a [`Decision`] (may we dial
//! now?) or a [`Retry`] (when to try again). **Not legal advice**: the rules below encode the facts
//! collected in `shared/CONFORMANCE.md` §5 ("TCPA / calling-hours facts"); counsel should confirm them.
//!
//! # The rules
//!
//! * **Consent and do-not-call first.** A number on a do-not-call list is refused (`DO_NOT_CALL`;
//!   47 CFR 64.1200(c)(2), (d)(3)). AI voices are "artificial" voices under the TCPA (FCC 24-17,
//!   Feb 2024), which need prior express consent, so a callee without consent is refused
//!   (`NO_CONSENT`) unless [`Policy::require_consent`] is off.
//! * **Callee-local calling window.** 47 CFR 64.1200(c)(1) forbids solicitations "before the hour
//!   of 8 a.m. or after 9 p.m. (local time at the called party's location)". The effective window
//!   on a local date is the policy window ∩ 08:00–21:00 ∩ the state rule's window (see
//!   [`state_rule`]); the end is exclusive and a call must be able to start
//!   [`Policy::start_margin_s`] before it. No-call days come from the policy and the state rule
//!   (AL/LA/MS: no Sundays; SD, RI: weekdays only).
//! * **Where the callee is.** The contact's IANA zone wins; otherwise the zone is inferred from the
//!   number with libphonenumber's time-zone map (generated into `zone_table.rs` by
//!   `tools/gen_zone_table.py`), longest prefix wins. When several zones are possible the rules
//!   take the most restrictive overlap: an instant is callable only if it is callable in every
//!   candidate zone. If that overlap is empty, the call is refused (`UNKNOWN_TIME_ZONE`) and a time
//!   zone should be set on the contact. State rules are chosen by the NANP area code (Oklahoma's
//!   statute makes an OK area code a presumption that the callee is in OK), also when the contact
//!   names a zone.
//! * **Caps.** [`Policy::max_attempts_per_day`] counts calls placed to the number (any campaign)
//!   whose local calendar date, **in the first candidate zone**, is the candidate's date. FL, OK and
//!   MD allow at most 3 calls on the same subject (here: the campaign id) in any rolling 24 hours.
//!   [`Policy::max_attempts`] caps a contact's attempts in one campaign ([`next_retry`] gives up).
//! * **Time-zone math** is done with jiff's tz database (system copy when present, the bundled one
//!   otherwise) and is DST-correct: a local time that falls in a DST gap or fold is resolved with
//!   jiff's "compatible" disambiguation (a gap moves forward by the gap's length, a fold takes the
//!   earlier instant), as RFC 5545 and java.time do.
//!
//! [`check`] answers `Allowed`, `Defer { until }` with the earliest instant at which it would answer
//! `Allowed` (searched up to [`HORIZON_DAYS`] ahead), or `Refuse`. [`next_retry`] picks the next
//! [`Policy::retry_times`] slot that `check` allows, or gives up.
//!
//! # Example
//!
//! ```
//! use voxbridge_compliance::{Callee, Decision, Outcome, Policy, Retry, Timestamp, check, next_retry};
//!
//! let policy = Policy::default(); // 09:00–21:00 callee-local, 3 calls/day, retries 10/14/18 h
//! let callee = Callee { number: "+13055550100", timezone: None, consent: true, do_not_call: false };
//! let now: Timestamp = "2026-06-10T11:12:00Z".parse()?; // 07:12 in Miami
//! match check(now, &callee, &[], "campaign-42", &policy) {
//!     Decision::Defer { until, reason } => {
//!         assert_eq!(until.to_string(), "2026-06-10T13:00:00Z"); // 09:00 EDT
//!         assert_eq!(reason.code(), "OUTSIDE_WINDOW");
//!         assert_eq!(
//!             reason.to_string(),
//!             "outside the calling window: 07:12 on Wednesday 2026-06-10 in America/New_York, \
//!              window 09:00–20:00 (FL rule)"
//!         );
//!     }
//!     other => panic!("{other:?}"),
//! }
//! // The 09:00 call was not answered: next slot is 10:00 local.
//! let placed: Timestamp = "2026-06-10T13:00:00Z".parse()?;
//! let ended: Timestamp = "2026-06-10T13:01:00Z".parse()?;
//! let history = [voxbridge_compliance::PastAttempt { at: placed, subject: "campaign-42", outcome: Some(Outcome::NoAnswer) }];
//! let retry = next_retry(ended, Outcome::NoAnswer, placed, 1, &callee, &history, "campaign-42", &policy);
//! assert_eq!(retry, Retry::At { at: "2026-06-10T14:00:00Z".parse()? });
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod policy;
mod states;
#[rustfmt::skip]
mod zone_table;
mod zones;

use std::fmt;

use jiff::{
    SignedDuration, ToSpan,
    civil::{Date, DateTime},
    tz::TimeZone,
};
pub use jiff::{
    Timestamp,
    civil::{Time, Weekday},
};
use serde::{Deserialize, Serialize};

pub use policy::{FEDERAL_WINDOW_END, FEDERAL_WINDOW_START, Policy, PolicyError};
pub use states::{StateRule, state_rule, state_rules};
pub use zone_table::PHONENUMBERS_VERSION;
pub use zones::{ZoneError, ZoneSource, Zones, resolve_zones, us_state};

/// How far ahead [`check`] looks for the earliest allowed instant before refusing with `NO_SLOT`.
pub const HORIZON_DAYS: i64 = 14;
/// A retry is never scheduled sooner than this after the call that just ended.
pub const MIN_RETRY_GAP_S: i64 = 30 * 60;
/// How far ahead [`next_retry`] searches for a slot (when `give_up_after_days` is larger).
pub const RETRY_SEARCH_DAYS: i64 = 366;

/// "09:00", or "09:00:30" when seconds are set.
pub(crate) fn fmt_hm(t: Time) -> String {
    if t.second() == 0 && t.subsec_nanosecond() == 0 {
        format!("{:02}:{:02}", t.hour(), t.minute())
    } else {
        format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second())
    }
}

/// How a placed call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Completed,
    NoAnswer,
    Busy,
    Failed,
    Voicemail,
    Declined,
    OptedOut,
    InvalidNumber,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 8] = [
        Outcome::Completed,
        Outcome::NoAnswer,
        Outcome::Busy,
        Outcome::Failed,
        Outcome::Voicemail,
        Outcome::Declined,
        Outcome::OptedOut,
        Outcome::InvalidNumber,
    ];

    /// Worth another attempt: the person was not reached (no answer, busy, failed, voicemail).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Outcome::NoAnswer | Outcome::Busy | Outcome::Failed | Outcome::Voicemail
        )
    }

    /// The snake_case name, as in JSON ("no_answer").
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::NoAnswer => "no_answer",
            Outcome::Busy => "busy",
            Outcome::Failed => "failed",
            Outcome::Voicemail => "voicemail",
            Outcome::Declined => "declined",
            Outcome::OptedOut => "opted_out",
            Outcome::InvalidNumber => "invalid_number",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown outcome string.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown call outcome {0:?} (expected one of completed, no_answer, busy, failed, voicemail, declined, opted_out, invalid_number)"
)]
pub struct ParseOutcomeError(pub String);

impl std::str::FromStr for Outcome {
    type Err = ParseOutcomeError;
    /// Accepts the snake_case names, any case, and Twilio's hyphenated call statuses ("no-answer").
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == norm)
            .ok_or_else(|| ParseOutcomeError(s.to_string()))
    }
}

/// The person we want to call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Callee<'a> {
    /// E.164, e.g. "+13055550100".
    pub number: &'a str,
    /// IANA zone name from the contact record; wins over inference from the number.
    pub timezone: Option<&'a str>,
    /// Prior express consent is on record (FCC 24-17 requires it for AI voices).
    pub consent: bool,
    /// The number is on a do-not-call list (national registry or ours).
    pub do_not_call: bool,
}

/// A call already PLACED to this number, in any campaign.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PastAttempt<'a> {
    /// When it was placed.
    pub at: Timestamp,
    /// The campaign id: the "same subject" of the FL/OK/MD 3-per-24-h caps.
    pub subject: &'a str,
    /// How it ended, if known yet.
    pub outcome: Option<Outcome>,
}

/// The answer of [`check`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Dial now.
    Allowed,
    /// Not now; `until` is the earliest instant at which [`check`] returns `Allowed`.
    Defer {
        until: Timestamp,
        reason: DeferReason,
    },
    /// Not within [`HORIZON_DAYS`], or never.
    Refuse { reason: RefuseReason },
}

/// Why a call must wait. Serialized with a `code` tag equal to [`DeferReason::code`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeferReason {
    /// The callee-local time is outside the effective window (or too close to its end).
    OutsideWindow {
        /// Callee-local date and time at `now`.
        local: DateTime,
        zone: String,
        window_start: Time,
        window_end: Time,
        start_margin_s: u32,
        /// The state whose rule narrowed the window, if any.
        state: Option<String>,
    },
    /// The callee-local day is a no-call day.
    NoCallDay {
        date: Date,
        zone: String,
        /// "policy no_call_days" or the state rule, e.g. "AL state rule (no Sunday calls)".
        rule: String,
    },
    /// `max_attempts_per_day` calls were already placed to this number on this local date.
    DailyCap {
        date: Date,
        zone: String,
        attempts: u32,
        max: u32,
    },
    /// The state's cap on calls about the same subject in a rolling 24 h is reached.
    StateCap {
        state: String,
        subject: String,
        attempts: u32,
        max: u32,
        oldest: Timestamp,
    },
}

impl DeferReason {
    /// Stable machine code.
    pub fn code(&self) -> &'static str {
        match self {
            DeferReason::OutsideWindow { .. } => "OUTSIDE_WINDOW",
            DeferReason::NoCallDay { .. } => "NO_CALL_DAY",
            DeferReason::DailyCap { .. } => "DAILY_CAP",
            DeferReason::StateCap { .. } => "STATE_CAP",
        }
    }
}

impl fmt::Display for DeferReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeferReason::OutsideWindow {
                local,
                zone,
                window_start,
                window_end,
                start_margin_s,
                state,
            } => {
                let by = state
                    .as_ref()
                    .map(|s| format!(" ({s} rule)"))
                    .unwrap_or_default();
                let end_s = policy::secs_of_day(*window_end);
                let now_s = policy::secs_of_day(local.time());
                let what = if now_s >= policy::secs_of_day(*window_start)
                    && now_s < end_s
                    && now_s + i64::from(*start_margin_s) >= end_s
                {
                    format!(
                        "too close to the end of the calling window ({start_margin_s} s margin)"
                    )
                } else {
                    "outside the calling window".to_string()
                };
                write!(
                    f,
                    "{what}: {} on {} {} in {zone}, window {}–{}{by}",
                    fmt_hm(local.time()),
                    policy::weekday_name(local.date().weekday()),
                    local.date(),
                    fmt_hm(*window_start),
                    fmt_hm(*window_end),
                )
            }
            DeferReason::NoCallDay { date, zone, rule } => write!(
                f,
                "no calls on {} {date} in {zone} ({rule})",
                policy::weekday_name(date.weekday())
            ),
            DeferReason::DailyCap {
                date,
                zone,
                attempts,
                max,
            } => write!(
                f,
                "daily cap reached: {attempts} calls already placed to this number on {date} ({zone}), max {max} per day"
            ),
            DeferReason::StateCap {
                state,
                subject,
                attempts,
                max,
                oldest,
            } => write!(
                f,
                "{state} allows at most {max} calls on the same subject in 24 hours: {attempts} already placed for {subject:?}, the oldest at {oldest}"
            ),
        }
    }
}

/// Why a call must not be placed (within [`HORIZON_DAYS`], or at all).
/// Serialized with a `code` tag equal to [`RefuseReason::code`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RefuseReason {
    InvalidNumber {
        number: String,
    },
    DoNotCall,
    NoConsent,
    /// The contact names a zone that is not a valid IANA name.
    InvalidTimeZone {
        name: String,
    },
    /// No zone is known for the number, or the candidate zones have no common calling window.
    UnknownTimeZone {
        number: String,
        candidates: Vec<String>,
    },
    InvalidPolicy {
        field: String,
        message: String,
    },
    /// No allowed instant within the search horizon.
    NoSlot {
        days: u32,
    },
}

impl RefuseReason {
    /// Stable machine code.
    pub fn code(&self) -> &'static str {
        match self {
            RefuseReason::InvalidNumber { .. } => "INVALID_NUMBER",
            RefuseReason::DoNotCall => "DO_NOT_CALL",
            RefuseReason::NoConsent => "NO_CONSENT",
            RefuseReason::InvalidTimeZone { .. } => "INVALID_TIME_ZONE",
            RefuseReason::UnknownTimeZone { .. } => "UNKNOWN_TIME_ZONE",
            RefuseReason::InvalidPolicy { .. } => "INVALID_POLICY",
            RefuseReason::NoSlot { .. } => "NO_SLOT",
        }
    }
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefuseReason::InvalidNumber { number } => {
                write!(
                    f,
                    "{number:?} is not a valid phone number in E.164 form (e.g. \"+13055550100\")"
                )
            }
            RefuseReason::DoNotCall => f.write_str("the number is on a do-not-call list"),
            RefuseReason::NoConsent => f.write_str(
                "no prior express consent on record: AI-voice calls need it (FCC 24-17)",
            ),
            RefuseReason::InvalidTimeZone { name } => write!(
                f,
                "the contact's time zone {name:?} is not a known IANA time zone name (e.g. \"America/New_York\")"
            ),
            RefuseReason::UnknownTimeZone { number, candidates } if candidates.is_empty() => {
                write!(
                    f,
                    "the callee's time zone is unknown: no zone is known for {number}; set a time zone on the contact"
                )
            }
            RefuseReason::UnknownTimeZone { number, candidates } => write!(
                f,
                "the callee's time zone is unknown: {number} may be in any of {}, which share no calling window; set a time zone on the contact",
                candidates.join(", ")
            ),
            RefuseReason::InvalidPolicy { message, .. } => {
                write!(f, "invalid calling policy: {message}")
            }
            RefuseReason::NoSlot { days } => {
                write!(
                    f,
                    "no allowed calling time in the next {days} days under this policy"
                )
            }
        }
    }
}

/// The answer of [`next_retry`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "retry", rename_all = "snake_case")]
pub enum Retry {
    /// Try again at this instant (a retry slot that [`check`] allows).
    At { at: Timestamp },
    /// Retryable, but the campaign's limits are exhausted for this contact.
    GiveUp { reason: String },
    /// Never call this contact again for this campaign (final outcome, or refused for good).
    Never { reason: String },
}

// ---------------------------------------------------------------------------------------------
// engine

fn add_secs(t: Timestamp, secs: i64) -> Timestamp {
    t.checked_add(SignedDuration::from_secs(secs))
        .unwrap_or(if secs >= 0 {
            Timestamp::MAX
        } else {
            Timestamp::MIN
        })
}

/// Local civil date-time -> instant, with jiff's compatible disambiguation.
fn instant(tz: &TimeZone, dt: DateTime) -> Option<Timestamp> {
    tz.to_ambiguous_timestamp(dt).compatible().ok()
}

/// Everything [`check`] needs that does not depend on `now` or the history.
struct Rules<'p> {
    policy: &'p Policy,
    state: Option<&'static StateRule>,
    zones: Zones,
    number: String,
}

/// Validate the callee and policy, resolve zones and the state rule (the `Refuse` part of `check`).
fn prepare<'p>(callee: &Callee<'_>, policy: &'p Policy) -> Result<Rules<'p>, RefuseReason> {
    let Some(parsed) = zones::parse_number(callee.number) else {
        return Err(RefuseReason::InvalidNumber {
            number: callee.number.to_string(),
        });
    };
    if callee.do_not_call {
        return Err(RefuseReason::DoNotCall);
    }
    if policy.require_consent && !callee.consent {
        return Err(RefuseReason::NoConsent);
    }
    let state = if policy.apply_state_rules {
        zones::state_of_digits(&parsed.digits).and_then(state_rule)
    } else {
        None
    };
    let zones =
        zones::resolve_with(callee.number, callee.timezone, Some(parsed)).map_err(|e| match e {
            ZoneError::InvalidTimeZone { name } => RefuseReason::InvalidTimeZone { name },
            ZoneError::InvalidNumber { number } => RefuseReason::InvalidNumber { number },
            ZoneError::UnknownZone { number } => RefuseReason::UnknownTimeZone {
                number,
                candidates: vec![],
            },
        })?;
    policy.validate().map_err(|e| RefuseReason::InvalidPolicy {
        field: e.field().to_string(),
        message: e.to_string(),
    })?;
    Ok(Rules {
        policy,
        state,
        zones,
        number: callee.number.to_string(),
    })
}

impl Rules<'_> {
    /// Effective window times (same every day): policy ∩ federal ∩ state.
    fn times(&self) -> (Time, Time) {
        let mut start = self.policy.window_start.max(FEDERAL_WINDOW_START);
        let mut end = self.policy.window_end.min(FEDERAL_WINDOW_END);
        if let Some(s) = self.state {
            start = start.max(s.window_start);
            end = end.min(s.window_end);
        }
        (start, end)
    }

    /// The state whose rule makes the window narrower than policy ∩ federal, if any.
    fn narrowing_state(&self) -> Option<&'static str> {
        let s = self.state?;
        let start = self.policy.window_start.max(FEDERAL_WINDOW_START);
        let end = self.policy.window_end.min(FEDERAL_WINDOW_END);
        (s.window_start > start || s.window_end < end).then_some(s.state)
    }

    /// The rule that closes this local day, if any.
    fn closed_by(&self, day: Weekday) -> Option<String> {
        if self.policy.no_call_days.contains(&day) {
            return Some("policy no_call_days".to_string());
        }
        let s = self.state?;
        if (s.no_sundays && day == Weekday::Sunday) || (s.no_saturdays && day == Weekday::Saturday)
        {
            let what = if s.no_saturdays {
                "weekdays only"
            } else {
                "no Sunday calls"
            };
            return Some(format!("{} state rule: {what}", s.state));
        }
        None
    }

    /// Instants at which a call may start in `tz` on local `date`: `[start, end - margin)`.
    fn day_span(&self, tz: &TimeZone, date: Date) -> Option<Span> {
        self.closed_by(date.weekday()).is_none().then_some(())?;
        let (start, end) = self.times();
        if start >= end {
            return None;
        }
        let from = instant(tz, date.to_datetime(start))?;
        let close = add_secs(
            instant(tz, date.to_datetime(end))?,
            -i64::from(self.policy.start_margin_s),
        );
        (from < close).then_some(Span {
            start: from,
            end: close,
        })
    }

    /// Callable spans in every candidate zone, covering local dates around `[lo, hi]`.
    fn spans(&self, lo: Timestamp, hi: Timestamp) -> Vec<Span> {
        let mut acc: Option<Vec<Span>> = None;
        for tz in self.zones.time_zones() {
            let mine = self.zone_spans(tz, lo, hi);
            acc = Some(match acc {
                None => mine,
                Some(prev) => intersect(&prev, &mine),
            });
        }
        acc.unwrap_or_default()
    }

    /// Callable spans in one zone, covering local dates around `[lo, hi]`.
    fn zone_spans(&self, tz: &TimeZone, lo: Timestamp, hi: Timestamp) -> Vec<Span> {
        let mut out = Vec::new();
        let mut d = tz.to_datetime(lo).date().yesterday().unwrap_or(Date::MIN);
        let last = tz.to_datetime(hi).date().tomorrow().unwrap_or(Date::MAX);
        while d <= last {
            out.extend(self.day_span(tz, d));
            match d.tomorrow() {
                Ok(n) => d = n,
                Err(_) => break,
            }
        }
        out
    }
}

/// A half-open interval `[start, end)` of instants at which a call may start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: Timestamp,
    end: Timestamp,
}

fn intersect(a: &[Span], b: &[Span]) -> Vec<Span> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while let (Some(x), Some(y)) = (a.get(i), b.get(j)) {
        let start = x.start.max(y.start);
        let end = x.end.min(y.end);
        if start < end {
            out.push(Span { start, end });
        }
        if x.end < y.end {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// The rules plus the history and precomputed windows over a time range.
struct Engine<'r, 'p> {
    rules: &'r Rules<'p>,
    spans: Vec<Span>,
    /// Local dates (first candidate zone) of all placed calls.
    dates: Vec<Date>,
    /// Sorted placement instants of calls with the same subject.
    same_subject: Vec<Timestamp>,
    subject: String,
}

const DAY_S: i64 = 86_400;

impl<'r, 'p> Engine<'r, 'p> {
    fn new(
        rules: &'r Rules<'p>,
        history: &[PastAttempt<'_>],
        subject: &str,
        lo: Timestamp,
        hi: Timestamp,
    ) -> Self {
        let (_, z0) = rules.zones.first();
        let dates = history
            .iter()
            .map(|a| z0.to_datetime(a.at).date())
            .collect();
        let mut same_subject: Vec<Timestamp> = history
            .iter()
            .filter(|a| a.subject == subject)
            .map(|a| a.at)
            .collect();
        same_subject.sort();
        Engine {
            rules,
            spans: rules.spans(lo, hi),
            dates,
            same_subject,
            subject: subject.to_string(),
        }
    }

    fn daily_count(&self, t: Timestamp) -> usize {
        let (_, z0) = self.rules.zones.first();
        let d = z0.to_datetime(t).date();
        self.dates.iter().filter(|x| **x == d).count()
    }

    /// If the state's same-subject cap blocks `t`: (instant it lifts, count, oldest in window).
    fn state_cap(&self, t: Timestamp) -> Option<(Timestamp, usize, Timestamp, u32)> {
        let cap = self.rules.state?.max_per_24h_same_subject?;
        let lo = self
            .same_subject
            .partition_point(|a| *a <= add_secs(t, -DAY_S));
        let hi = self.same_subject.partition_point(|a| *a <= t);
        let count = hi.saturating_sub(lo);
        let cap_us = usize::try_from(cap).unwrap_or(usize::MAX);
        if count < cap_us {
            return None;
        }
        let window = self.same_subject.get(lo..hi)?;
        let lifts = add_secs(*window.get(count - cap_us)?, DAY_S);
        Some((lifts, count, *window.first()?, cap))
    }

    fn in_window(&self, t: Timestamp) -> bool {
        let i = self.spans.partition_point(|s| s.end <= t);
        self.spans.get(i).is_some_and(|s| s.start <= t)
    }

    /// `check(t) == Allowed`.
    fn allowed(&self, t: Timestamp) -> bool {
        self.in_window(t)
            && self.daily_count(t)
                < usize::try_from(self.rules.policy.max_attempts_per_day).unwrap_or(usize::MAX)
            && self.state_cap(t).is_none()
    }

    /// The earliest allowed instant in `[t0, limit)`.
    fn earliest(&self, t0: Timestamp, limit: Timestamp) -> Option<Timestamp> {
        let (_, z0) = self.rules.zones.first();
        let max_day = usize::try_from(self.rules.policy.max_attempts_per_day).unwrap_or(usize::MAX);
        let mut t = t0;
        // Every step moves t strictly forward to a span start, a local midnight or a cap expiry.
        for _ in 0..100_000 {
            if t >= limit {
                return None;
            }
            let i = self.spans.partition_point(|s| s.end <= t);
            let span = self.spans.get(i)?;
            if span.start > t {
                t = span.start;
                continue;
            }
            if self.daily_count(t) >= max_day {
                let next_day = z0.to_datetime(t).date().tomorrow().ok()?;
                t = instant(z0, next_day.to_datetime(Time::midnight()))?;
                continue;
            }
            if let Some((lifts, ..)) = self.state_cap(t) {
                t = lifts;
                continue;
            }
            return Some(t);
        }
        None
    }

    /// Why `t` is not allowed (called only when it is not).
    fn diagnose(&self, t: Timestamp) -> DeferReason {
        let (start, end) = self.rules.times();
        let outside = |name: &str, tz: &TimeZone| DeferReason::OutsideWindow {
            local: tz.to_datetime(t),
            zone: name.to_string(),
            window_start: start,
            window_end: end,
            start_margin_s: self.rules.policy.start_margin_s,
            state: self.rules.narrowing_state().map(str::to_string),
        };
        for (name, tz) in self.rules.zones.iter() {
            let date = tz.to_datetime(t).date();
            if let Some(rule) = self.rules.closed_by(date.weekday()) {
                return DeferReason::NoCallDay {
                    date,
                    zone: name.to_string(),
                    rule,
                };
            }
            if !self
                .rules
                .day_span(tz, date)
                .is_some_and(|s| s.start <= t && t < s.end)
            {
                return outside(name, tz);
            }
        }
        let (z0name, z0) = self.rules.zones.first();
        let attempts = self.daily_count(t);
        let max = self.rules.policy.max_attempts_per_day;
        if attempts >= usize::try_from(max).unwrap_or(usize::MAX) {
            return DeferReason::DailyCap {
                date: z0.to_datetime(t).date(),
                zone: z0name.to_string(),
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                max,
            };
        }
        if let (Some((_, count, oldest, max)), Some(s)) = (self.state_cap(t), self.rules.state) {
            return DeferReason::StateCap {
                state: s.state.to_string(),
                subject: self.subject.clone(),
                attempts: u32::try_from(count).unwrap_or(u32::MAX),
                max,
                oldest,
            };
        }
        outside(z0name, z0)
    }
}

/// May we dial this callee now for `subject`?
///
/// Order: invalid number → `INVALID_NUMBER`; do-not-call → `DO_NOT_CALL`; no consent (when
/// required) → `NO_CONSENT`; zone errors → `INVALID_TIME_ZONE` / `UNKNOWN_TIME_ZONE`; invalid policy
/// → `INVALID_POLICY`; then the window, no-call days and caps give `Allowed` or
/// `Defer { until }`, `until` being the earliest instant ≥ `now` at which `check` returns `Allowed`
/// (searched up to [`HORIZON_DAYS`]; none → `NO_SLOT`; candidate zones without any common window →
/// `UNKNOWN_TIME_ZONE`). `history` = calls placed to this number in any campaign, any order.
pub fn check(
    now: Timestamp,
    callee: &Callee<'_>,
    history: &[PastAttempt<'_>],
    subject: &str,
    policy: &Policy,
) -> Decision {
    let rules = match prepare(callee, policy) {
        Ok(r) => r,
        Err(reason) => return Decision::Refuse { reason },
    };
    let limit = add_secs(now, HORIZON_DAYS * DAY_S);
    let engine = Engine::new(&rules, history, subject, now, limit);
    let open = |spans: &[Span]| spans.iter().any(|s| s.end > now && s.start < limit);
    if !open(&engine.spans) {
        // Ambiguous zones that each have windows but share none: the location is the problem.
        let zones_disagree = rules.zones.is_ambiguous()
            && rules
                .zones
                .time_zones()
                .iter()
                .all(|tz| open(&rules.zone_spans(tz, now, limit)));
        let reason = if zones_disagree {
            RefuseReason::UnknownTimeZone {
                number: rules.number.clone(),
                candidates: rules.zones.names().to_vec(),
            }
        } else {
            RefuseReason::NoSlot {
                days: HORIZON_DAYS as u32,
            }
        };
        return Decision::Refuse { reason };
    }
    match engine.earliest(now, limit) {
        Some(t) if t == now => Decision::Allowed,
        Some(until) => Decision::Defer {
            until,
            reason: engine.diagnose(now),
        },
        None => Decision::Refuse {
            reason: RefuseReason::NoSlot {
                days: HORIZON_DAYS as u32,
            },
        },
    }
}

/// After a placed call ended with `outcome`: when to try again.
///
/// * a final outcome (completed, declined, opted out, invalid number) → `Never`;
/// * `attempts_in_campaign >= max_attempts` → `GiveUp`;
/// * a callee that [`check`] refuses for good (invalid number, do-not-call, no consent, bad zone,
///   invalid policy) → `Never`;
/// * otherwise the earliest slot — a local date plus one of [`Policy::retry_times`] in the first
///   candidate zone, at least [`MIN_RETRY_GAP_S`] after `now` — at which [`check`] returns
///   `Allowed` (slots blocked by the window, a no-call day or a cap are skipped). A retry time in a
///   DST gap is moved forward by the gap (jiff "compatible"), one in a fold takes the earlier
///   instant. A slot at or after `first_attempt` + `give_up_after_days` calendar days (in the first
///   candidate zone) → `GiveUp` naming that date.
#[allow(clippy::too_many_arguments)]
pub fn next_retry(
    now: Timestamp,
    outcome: Outcome,
    first_attempt: Timestamp,
    attempts_in_campaign: u32,
    callee: &Callee<'_>,
    history: &[PastAttempt<'_>],
    subject: &str,
    policy: &Policy,
) -> Retry {
    if !outcome.is_retryable() {
        return Retry::Never {
            reason: format!("the call ended with outcome {outcome}, which is final"),
        };
    }
    if attempts_in_campaign >= policy.max_attempts {
        return Retry::GiveUp {
            reason: format!(
                "{attempts_in_campaign} attempts made; the campaign allows {} (max_attempts)",
                policy.max_attempts
            ),
        };
    }
    let rules = match prepare(callee, policy) {
        Ok(r) => r,
        Err(reason) => {
            return Retry::Never {
                reason: reason.to_string(),
            };
        }
    };
    let (z0name, z0) = rules.zones.first();
    let first_local = first_attempt.to_zoned(z0.clone());
    let deadline = first_local
        .checked_add(i64::from(policy.give_up_after_days).days())
        .map(|z| z.timestamp())
        .unwrap_or(Timestamp::MAX);
    let earliest = add_secs(now, MIN_RETRY_GAP_S);
    let search_end = deadline.min(add_secs(now, RETRY_SEARCH_DAYS * DAY_S));
    let engine = Engine::new(&rules, history, subject, earliest, search_end);
    let deadline_reason = || Retry::GiveUp {
        reason: format!(
            "no retry slot left before {} in {z0name}: give_up_after_days = {} counted from the first attempt on {}",
            z0.to_datetime(deadline).strftime("%Y-%m-%d %H:%M"),
            policy.give_up_after_days,
            first_local.strftime("%Y-%m-%d %H:%M"),
        ),
    };
    let mut times = policy.retry_times.clone();
    times.sort();
    times.dedup();
    let mut date = z0.to_datetime(earliest).date();
    for _ in 0..=RETRY_SEARCH_DAYS + 1 {
        let mut slots: Vec<Timestamp> = times
            .iter()
            .filter_map(|rt| instant(z0, date.to_datetime(*rt)))
            .collect();
        slots.sort();
        slots.dedup();
        for slot in slots {
            if slot < earliest {
                continue;
            }
            if slot >= deadline {
                return deadline_reason();
            }
            if slot >= search_end {
                return Retry::GiveUp {
                    reason: format!("no allowed retry slot in the next {RETRY_SEARCH_DAYS} days"),
                };
            }
            if engine.allowed(slot) {
                return Retry::At { at: slot };
            }
        }
        match date.tomorrow() {
            Ok(d) => date = d,
            Err(_) => break,
        }
    }
    if earliest >= deadline {
        return deadline_reason();
    }
    Retry::GiveUp {
        reason: format!("no allowed retry slot in the next {RETRY_SEARCH_DAYS} days"),
    }
}

#[cfg(test)]
mod tests;
