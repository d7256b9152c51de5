//! US state calling rules that are stricter than the federal 08:00–21:00 window.
//!
//! **Not legal advice.** This is a small table of the facts collected in
//! `shared/CONFORMANCE.md` §5 ("TCPA / calling-hours facts"), each row citing where it came from.
//! Rows marked "compiled list" come from vendor compilations (dropcowboy.com/state-compliance,
//! Nov 2025; blog.clickpointsoftware.com, Jul 2025) that disagree in places; where they disagree
//! the stricter reading is used. Holiday bans (AL, LA, MS, PA, RI, UT) are not modelled.
//! Deliberately left out: PA (the source row is garbled), WA (its rules are about what happens
//! on and after a call, not hours), ME (≤1 automated call per 8 h; not in the adopted set).
//! Counsel should confirm each row before relying on it.

use jiff::civil::{Time, time};

/// One state's stricter rule. Times are callee-local wall-clock times; `window_end` is exclusive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateRule {
    /// USPS code, e.g. "FL".
    pub state: &'static str,
    /// No call may start before this local time.
    pub window_start: Time,
    /// No call may start at or after this local time.
    pub window_end: Time,
    /// No calls on Sundays.
    pub no_sundays: bool,
    /// No calls on Saturdays (SD and RI allow weekdays only).
    pub no_saturdays: bool,
    /// At most this many calls to a person on the same subject in any rolling 24 h (FL, OK, MD).
    pub max_per_24h_same_subject: Option<u32>,
    /// Where the rule comes from (statute or compiled list, as cited in CONFORMANCE.md §5).
    pub source: &'static str,
}

const fn rule(
    state: &'static str,
    (h0, h1): (i8, i8),
    no_sundays: bool,
    no_saturdays: bool,
    cap: Option<u32>,
    source: &'static str,
) -> StateRule {
    StateRule {
        state,
        window_start: time(h0, 0, 0, 0),
        window_end: time(h1, 0, 0, 0),
        no_sundays,
        no_saturdays,
        max_per_24h_same_subject: cap,
        source,
    }
}

/// Sorted by state code.
static STATE_RULES: &[StateRule] = &[
    rule(
        "AL",
        (8, 20),
        true,
        false,
        None,
        "compiled list (dropcowboy.com): 8–8, no Sundays/holidays",
    ),
    rule(
        "CT",
        (9, 20),
        false,
        false,
        None,
        "compiled list (dropcowboy.com): 9–8 (other lists say 9–9; stricter kept)",
    ),
    rule(
        "FL",
        (8, 20),
        false,
        false,
        Some(3),
        "Fla. Stat. 501.616(6)(a)-(b) as amended by CS/SB 1120 (2021): 8 a.m.–8 p.m., ≤3 calls/24 h same subject",
    ),
    rule(
        "KY",
        (10, 21),
        false,
        false,
        None,
        "compiled list (dropcowboy.com): 10–9",
    ),
    rule(
        "LA",
        (8, 20),
        true,
        false,
        None,
        "compiled list (dropcowboy.com): 8–8, no Sundays/holidays",
    ),
    rule(
        "MA",
        (8, 20),
        false,
        false,
        None,
        "compiled list (dropcowboy.com): 8–8",
    ),
    rule(
        "MD",
        (8, 20),
        false,
        false,
        Some(3),
        "Md. Code, Com. Law 14-4502 (Stop the Spam Calls Act, SB 90, 2023): 8 a.m.–8 p.m., ≤3 calls/24 h same subject",
    ),
    rule(
        "MI",
        (9, 21),
        false,
        false,
        None,
        "compiled list (dropcowboy.com): 9–9",
    ),
    rule(
        "MN",
        (9, 21),
        false,
        false,
        None,
        "compiled list (dropcowboy.com): 9–9",
    ),
    rule(
        "MS",
        (8, 20),
        true,
        false,
        None,
        "compiled list (dropcowboy.com): 8–8, no Sundays",
    ),
    rule(
        "NM",
        (9, 21),
        false,
        false,
        None,
        "compiled list (dropcowboy.com): 9–9",
    ),
    rule(
        "NV",
        (9, 20),
        false,
        false,
        None,
        "compiled list (dropcowboy.com): 9–8",
    ),
    rule(
        "OK",
        (8, 20),
        false,
        false,
        Some(3),
        "15 O.S. 775C.1–775C.4 (Telephone Solicitation Act of 2022, HB 3168): 8 a.m.–8 p.m., ≤3 calls/24 h same subject",
    ),
    rule(
        "RI",
        (9, 18),
        true,
        true,
        None,
        "R.I. Gen. Laws 5-61-3.6 / compiled list (dropcowboy.com): Mon–Fri 9–6 (row truncated; weekdays only kept)",
    ),
    rule(
        "SD",
        (9, 21),
        true,
        true,
        None,
        "SDCL 37-30-28: weekdays between 9 a.m. and 9 p.m.",
    ),
    rule(
        "TX",
        (9, 21),
        false,
        false,
        None,
        "Tex. Bus. & Com. Code 301.051 (legalclarity.org summary): 9 a.m.–9 p.m.; a Sunday noon window is unverified and not applied",
    ),
];

/// The stricter rule for a state (USPS code, any case), if the table has one.
pub fn state_rule(state: &str) -> Option<&'static StateRule> {
    STATE_RULES
        .iter()
        .find(|r| r.state.eq_ignore_ascii_case(state))
}

/// All rules in the table (sorted by state code).
pub fn state_rules() -> &'static [StateRule] {
    STATE_RULES
}
