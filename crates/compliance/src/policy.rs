//! The per-campaign [`Policy`] and its validation.

use jiff::civil::{Time, Weekday, time};
use serde::{Deserialize, Serialize};

use crate::fmt_hm;

/// Federal calling window start: 8 a.m. called-party local time (47 CFR 64.1200(c)(1); 16 CFR 310.4(c)).
pub const FEDERAL_WINDOW_START: Time = time(8, 0, 0, 0);
/// Federal calling window end: no call may start at or after 9 p.m. local time (47 CFR 64.1200(c)(1)).
pub const FEDERAL_WINDOW_END: Time = time(21, 0, 0, 0);

/// Per-campaign calling policy.
///
/// Every field has a default, so the JSON `{}` is [`Policy::default()`]; unknown fields are rejected
/// so a typo does not silently fall back to a default.
///
/// Serde formats: times are jiff civil times, written `"09:00:00"` (reading also accepts `"09:00"`);
/// `no_call_days` are lowercase English day names (`"sunday"`; reading also accepts any case and
/// three-letter forms such as `"Sun"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Earliest local time (callee's zone) a call may start. Default 09:00: stricter than the
    /// federal 08:00 because an 8 a.m. AI call annoys people even where it is legal.
    /// Never earlier than 08:00 ([`Policy::validate`]).
    pub window_start: Time,
    /// End of the calling window, exclusive: no call may START at or after it. Default 21:00, the
    /// federal limit; state rules may cut it further (e.g. 20:00 in FL/OK/MD).
    pub window_end: Time,
    /// Local weekdays on which this campaign never calls (e.g. Sunday for a business that
    /// promised not to). State rules add their own (AL/LA/MS Sundays; SD, RI weekends).
    #[serde(with = "weekday_serde")]
    pub no_call_days: Vec<Weekday>,
    /// Attempts to one NUMBER per callee-local calendar day, counted across ALL campaigns, so that
    /// several campaigns together cannot hammer the same person. Default 3.
    pub max_attempts_per_day: u32,
    /// Callee-local wall-clock times at which a retry may be scheduled after an unanswered call.
    /// Spread over the day (default 10:00, 14:00, 18:00) so retries reach people with different
    /// routines instead of ringing at the same bad moment every day.
    pub retry_times: Vec<Time>,
    /// Stop retrying this many days after the contact's first attempt (default 5): stale
    /// campaigns should end rather than call forever.
    pub give_up_after_days: u32,
    /// Attempts per contact within one campaign (default 6), including the first.
    pub max_attempts: u32,
    /// Require prior express consent (default true). FCC 24-17 (Feb 2024) confirmed that AI
    /// generated voices are "artificial" voices under the TCPA, which need prior express consent
    /// (written consent for telemarketing). Turn off only for exempt calls (e.g. emergencies).
    pub require_consent: bool,
    /// Seconds a call must be able to start before the window closes (default 60). A call whose
    /// start would land within this margin is deferred to the next window, never placed late
    /// (queueing and dialing take time, and the rule is about when the call is initiated).
    pub start_margin_s: u32,
    /// Apply the stricter state rules ([`crate::state_rule`]) chosen by the number's area code
    /// (default true; Oklahoma's statute makes the area code a presumption of location).
    pub apply_state_rules: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            window_start: time(9, 0, 0, 0),
            window_end: time(21, 0, 0, 0),
            no_call_days: Vec::new(),
            max_attempts_per_day: 3,
            retry_times: vec![time(10, 0, 0, 0), time(14, 0, 0, 0), time(18, 0, 0, 0)],
            give_up_after_days: 5,
            max_attempts: 6,
            require_consent: true,
            start_margin_s: 60,
            apply_state_rules: true,
        }
    }
}

/// Why a [`Policy`] is not acceptable. Each message names the offending field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("window_start {} is earlier than 08:00, the federal limit (47 CFR 64.1200(c)(1))", fmt_hm(*.0))]
    WindowStartTooEarly(Time),
    #[error("window_end {} is later than 21:00, the federal limit (47 CFR 64.1200(c)(1))", fmt_hm(*.0))]
    WindowEndTooLate(Time),
    #[error("window_start {} is not before window_end {}", fmt_hm(*.start), fmt_hm(*.end))]
    EmptyWindow { start: Time, end: Time },
    #[error("retry_times is empty: at least one retry time is needed")]
    NoRetryTimes,
    #[error(
        "retry_times: none of them lies inside the window {}–{} (a retry time must be at least start_margin_s = {margin_s} s before window_end)",
        fmt_hm(*.start), fmt_hm(*.end)
    )]
    NoRetryTimeInWindow {
        start: Time,
        end: Time,
        margin_s: u32,
    },
    #[error("max_attempts_per_day must be at least 1")]
    ZeroDailyCap,
    #[error("max_attempts must be at least 1")]
    ZeroMaxAttempts,
    #[error("give_up_after_days must be at least 1")]
    ZeroGiveUpDays,
    #[error("no_call_days lists all seven days: no call could ever be placed")]
    AllDaysNoCall,
    #[error("start_margin_s {margin_s} is not shorter than the window ({window_s} s)")]
    MarginTooLarge { margin_s: u32, window_s: i64 },
}

impl PolicyError {
    /// The [`Policy`] field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            PolicyError::WindowStartTooEarly(_) => "window_start",
            PolicyError::WindowEndTooLate(_) | PolicyError::EmptyWindow { .. } => "window_end",
            PolicyError::NoRetryTimes | PolicyError::NoRetryTimeInWindow { .. } => "retry_times",
            PolicyError::ZeroDailyCap => "max_attempts_per_day",
            PolicyError::ZeroMaxAttempts => "max_attempts",
            PolicyError::ZeroGiveUpDays => "give_up_after_days",
            PolicyError::AllDaysNoCall => "no_call_days",
            PolicyError::MarginTooLarge { .. } => "start_margin_s",
        }
    }
}

/// Seconds since midnight of a civil time (wall clock, ignoring DST).
pub(crate) fn secs_of_day(t: Time) -> i64 {
    i64::from(t.hour()) * 3600 + i64::from(t.minute()) * 60 + i64::from(t.second())
}

impl Policy {
    /// Check the policy against the federal window and for internal consistency.
    ///
    /// [`crate::check`] refuses with `INVALID_POLICY` when this fails, so a misconfigured
    /// campaign stops instead of calling at surprising times.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.window_start < FEDERAL_WINDOW_START {
            return Err(PolicyError::WindowStartTooEarly(self.window_start));
        }
        if self.window_end > FEDERAL_WINDOW_END {
            return Err(PolicyError::WindowEndTooLate(self.window_end));
        }
        if self.window_start >= self.window_end {
            return Err(PolicyError::EmptyWindow {
                start: self.window_start,
                end: self.window_end,
            });
        }
        let window_s = secs_of_day(self.window_end) - secs_of_day(self.window_start);
        if i64::from(self.start_margin_s) >= window_s {
            return Err(PolicyError::MarginTooLarge {
                margin_s: self.start_margin_s,
                window_s,
            });
        }
        if self.retry_times.is_empty() {
            return Err(PolicyError::NoRetryTimes);
        }
        let callable = |t: &Time| {
            *t >= self.window_start
                && secs_of_day(*t) + i64::from(self.start_margin_s) < secs_of_day(self.window_end)
        };
        if !self.retry_times.iter().any(callable) {
            return Err(PolicyError::NoRetryTimeInWindow {
                start: self.window_start,
                end: self.window_end,
                margin_s: self.start_margin_s,
            });
        }
        if self.max_attempts_per_day == 0 {
            return Err(PolicyError::ZeroDailyCap);
        }
        if self.max_attempts == 0 {
            return Err(PolicyError::ZeroMaxAttempts);
        }
        if self.give_up_after_days == 0 {
            return Err(PolicyError::ZeroGiveUpDays);
        }
        let all_days = [
            Weekday::Monday,
            Weekday::Tuesday,
            Weekday::Wednesday,
            Weekday::Thursday,
            Weekday::Friday,
            Weekday::Saturday,
            Weekday::Sunday,
        ];
        if all_days.iter().all(|d| self.no_call_days.contains(d)) {
            return Err(PolicyError::AllDaysNoCall);
        }
        Ok(())
    }
}

/// English name of a weekday ("Monday").
pub(crate) fn weekday_name(d: Weekday) -> &'static str {
    match d {
        Weekday::Monday => "Monday",
        Weekday::Tuesday => "Tuesday",
        Weekday::Wednesday => "Wednesday",
        Weekday::Thursday => "Thursday",
        Weekday::Friday => "Friday",
        Weekday::Saturday => "Saturday",
        Weekday::Sunday => "Sunday",
    }
}

/// Parse "monday" / "Mon" / "MONDAY" (any case).
pub(crate) fn parse_weekday(s: &str) -> Option<Weekday> {
    let l = s.trim().to_ascii_lowercase();
    let d = match l.get(..3)? {
        "mon" => Weekday::Monday,
        "tue" => Weekday::Tuesday,
        "wed" => Weekday::Wednesday,
        "thu" => Weekday::Thursday,
        "fri" => Weekday::Friday,
        "sat" => Weekday::Saturday,
        "sun" => Weekday::Sunday,
        _ => return None,
    };
    let full = weekday_name(d).to_ascii_lowercase();
    (l.len() == 3 || l == full).then_some(d)
}

/// serde for `Vec<Weekday>` as lowercase day names (jiff's `Weekday` has no serde impl).
mod weekday_serde {
    use jiff::civil::Weekday;
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _, ser::SerializeSeq};

    use super::{parse_weekday, weekday_name};

    pub(super) fn serialize<S: Serializer>(days: &[Weekday], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(days.len()))?;
        for d in days {
            seq.serialize_element(&weekday_name(*d).to_ascii_lowercase())?;
        }
        seq.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Weekday>, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        names
            .iter()
            .map(|n| {
                parse_weekday(n).ok_or_else(|| {
                    D::Error::custom(format!(
                        "no_call_days: unknown weekday {n:?} (use e.g. \"sunday\")"
                    ))
                })
            })
            .collect()
    }
}
