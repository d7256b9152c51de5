//! Unit tests with concrete facts.

use jiff::{civil::date, tz::TimeZoneDatabase};

use super::*;

fn ts(s: &str) -> Timestamp {
    s.parse()
        .unwrap_or_else(|e| panic!("bad timestamp {s}: {e}"))
}

/// Local wall clock in `zone` -> instant.
fn local(zone: &str, s: &str) -> Timestamp {
    let dt: DateTime = s
        .parse()
        .unwrap_or_else(|e| panic!("bad datetime {s}: {e}"));
    dt.in_tz(zone)
        .unwrap_or_else(|e| panic!("{zone}: {e}"))
        .timestamp()
}

fn callee(number: &str) -> Callee<'_> {
    Callee {
        number,
        timezone: None,
        consent: true,
        do_not_call: false,
    }
}

fn names(z: &Zones) -> Vec<&str> {
    z.names().iter().map(String::as_str).collect()
}

fn zones_of(number: &str) -> Vec<String> {
    resolve_zones(number, None)
        .map(|z| z.names().to_vec())
        .unwrap_or_else(|e| panic!("{number}: {e}"))
}

const MIAMI: &str = "+13055550100";
const NYC: &str = "+12125550100";
const PENSACOLA: &str = "+18504321234";
const TALLAHASSEE: &str = "+18502221234";
const OKC: &str = "+14052345678";
const BIRMINGHAM_AL: &str = "+12052345678";
const LONDON: &str = "+442079460000";
const BERLIN: &str = "+4930123456";

// ---- zones and states -------------------------------------------------------------------------

#[test]
fn miami_is_new_york_time_and_florida() {
    let z = resolve_zones(MIAMI, None).expect("zones");
    assert_eq!(names(&z), ["America/New_York"]);
    assert_eq!(
        z.source(),
        &ZoneSource::NumberPrefix {
            prefix: "1305".into()
        }
    );
    assert!(!z.is_ambiguous());
    assert_eq!(us_state(MIAMI), Some("FL"));
    assert_eq!(us_state("+1 (305) 555-0100"), Some("FL"));
    assert_eq!(us_state("+1 305 555 0100 ext. 12"), Some("FL"));
    assert_eq!(us_state("13055550100"), None);
}

#[test]
fn area_code_850_is_split_by_exchange() {
    // libphonenumber does not leave 850 ambiguous: the area code defaults to Eastern, and the
    // exchanges of the western panhandle (Pensacola 432, …) are listed as Central.
    assert_eq!(zones_of(TALLAHASSEE), ["America/New_York"]);
    assert_eq!(zones_of(PENSACOLA), ["America/Chicago"]);
    assert_eq!(us_state(PENSACOLA), Some("FL"));
    assert_eq!(us_state(TALLAHASSEE), Some("FL"));
}

#[test]
fn florida_cuts_the_window_at_20_00() {
    let p = Policy::default();
    let c = callee(PENSACOLA);
    // 19:58 CDT: allowed (19:58 + 60 s < 20:00).
    assert_eq!(
        check(
            local("America/Chicago", "2026-06-10T19:58"),
            &c,
            &[],
            "c1",
            &p
        ),
        Decision::Allowed
    );
    // 19:59:30: within the 60 s margin -> next morning 09:00 (policy start; FL allows 08:00).
    let d = check(
        local("America/Chicago", "2026-06-10T19:59:30"),
        &c,
        &[],
        "c1",
        &p,
    );
    let Decision::Defer { until, reason } = d else {
        panic!("expected defer, got {d:?}")
    };
    assert_eq!(until, local("America/Chicago", "2026-06-11T09:00"));
    assert_eq!(reason.code(), "OUTSIDE_WINDOW");
    let msg = reason.to_string();
    assert!(msg.contains("too close to the end"), "{msg}");
    assert!(
        msg.contains(
            "19:59:30 on Wednesday 2026-06-10 in America/Chicago, window 09:00–20:00 (FL rule)"
        ),
        "{msg}"
    );
    // 20:30 in Pensacola is still 21:30 in Tallahassee's zone; the Pensacola number is Central.
    let d = check(
        local("America/Chicago", "2026-06-10T20:30"),
        &c,
        &[],
        "c1",
        &p,
    );
    assert!(
        matches!(
            d,
            Decision::Defer {
                reason: DeferReason::OutsideWindow { .. },
                ..
            }
        ),
        "{d:?}"
    );
    // Without state rules, 20:30 is fine.
    let p2 = Policy {
        apply_state_rules: false,
        ..Policy::default()
    };
    assert_eq!(
        check(
            local("America/Chicago", "2026-06-10T20:30"),
            &c,
            &[],
            "c1",
            &p2
        ),
        Decision::Allowed
    );
}

#[test]
fn oklahoma() {
    assert_eq!(zones_of(OKC), ["America/Chicago"]);
    assert_eq!(us_state(OKC), Some("OK"));
    let r = state_rule("ok").expect("OK rule");
    assert_eq!(
        (r.window_start, r.window_end),
        (Time::constant(8, 0, 0, 0), Time::constant(20, 0, 0, 0))
    );
    assert_eq!(r.max_per_24h_same_subject, Some(3));
}

#[test]
fn international_numbers() {
    let z = resolve_zones(LONDON, None).expect("zones");
    assert_eq!(names(&z), ["Europe/London"]);
    assert_eq!(zones_of(BERLIN), ["Europe/Berlin"]);
    // A German mobile is not geographic: the country's single zone.
    let z = resolve_zones("+4915123456789", None).expect("zones");
    assert_eq!(names(&z), ["Europe/Berlin"]);
    assert_eq!(z.source(), &ZoneSource::Country { calling_code: 49 });
    assert_eq!(us_state(LONDON), None);
    // An Australian mobile could be anywhere in the country (Perth to Lord Howe).
    let z = resolve_zones("+61412345678", None).expect("zones");
    assert!(z.is_ambiguous());
    assert!(names(&z).contains(&"Australia/Lord_Howe") && names(&z).contains(&"Australia/Perth"));
}

#[test]
fn contact_zone_overrides_and_invalid_names_error() {
    let z = resolve_zones(MIAMI, Some("America/Los_Angeles")).expect("zones");
    assert_eq!(names(&z), ["America/Los_Angeles"]);
    assert_eq!(z.source(), &ZoneSource::Contact);
    // blank counts as absent
    assert_eq!(
        names(&resolve_zones(MIAMI, Some("  ")).expect("zones")),
        ["America/New_York"]
    );
    let e = resolve_zones(MIAMI, Some("Mars/Olympus_Mons")).expect_err("invalid");
    assert_eq!(
        e,
        ZoneError::InvalidTimeZone {
            name: "Mars/Olympus_Mons".into()
        }
    );
    assert!(e.to_string().contains("\"Mars/Olympus_Mons\""), "{e}");
    let c = Callee {
        timezone: Some("Mars/Olympus_Mons"),
        ..callee(MIAMI)
    };
    let d = check(ts("2026-06-10T15:00Z"), &c, &[], "c1", &Policy::default());
    let Decision::Refuse { reason } = d else {
        panic!("{d:?}")
    };
    assert_eq!(reason.code(), "INVALID_TIME_ZONE");
    assert!(reason.to_string().contains("Mars/Olympus_Mons"));
    // The contact zone decides the window; the FL area code still brings FL's 20:00 cut.
    let c = Callee {
        timezone: Some("America/Los_Angeles"),
        ..callee(MIAMI)
    };
    assert_eq!(
        check(
            local("America/Los_Angeles", "2026-06-10T19:00"),
            &c,
            &[],
            "c1",
            &Policy::default()
        ),
        Decision::Allowed
    );
    let d = check(
        local("America/Los_Angeles", "2026-06-10T20:00"),
        &c,
        &[],
        "c1",
        &Policy::default(),
    );
    assert!(matches!(d, Decision::Defer { .. }), "{d:?}");
}

#[test]
fn invalid_numbers() {
    for n in [
        "",
        "13055550100",
        "+1305",
        "+999123",
        "hello",
        "+1305555010x",
    ] {
        assert!(
            matches!(resolve_zones(n, None), Err(ZoneError::InvalidNumber { .. })),
            "{n}"
        );
        let d = check(
            ts("2026-06-10T15:00Z"),
            &callee(n),
            &[],
            "c1",
            &Policy::default(),
        );
        assert!(
            matches!(&d, Decision::Refuse { reason } if reason.code() == "INVALID_NUMBER"),
            "{n}: {d:?}"
        );
    }
}

#[test]
fn ambiguous_zones_use_the_overlap() {
    // 208-2xx (Idaho): libphonenumber lists Boise (Mountain) and Los_Angeles (Pacific).
    let n = "+12082001234";
    let z = resolve_zones(n, None).expect("zones");
    assert_eq!(names(&z), ["America/Boise", "America/Los_Angeles"]);
    let p = Policy::default();
    let c = callee(n);
    // 08:30 PT = 09:30 MT: fine in Denver, too early in LA.
    let d = check(
        local("America/Los_Angeles", "2026-06-10T08:30"),
        &c,
        &[],
        "c1",
        &p,
    );
    let Decision::Defer { until, reason } = d else {
        panic!("{d:?}")
    };
    assert_eq!(until, local("America/Los_Angeles", "2026-06-10T09:00"));
    assert!(
        reason.to_string().contains("in America/Los_Angeles"),
        "{reason}"
    );
    // 20:00 PT = 21:00 MT: too late in Boise.
    let d = check(
        local("America/Los_Angeles", "2026-06-10T20:00"),
        &c,
        &[],
        "c1",
        &p,
    );
    let Decision::Defer { until, reason } = d else {
        panic!("{d:?}")
    };
    assert_eq!(until, local("America/Los_Angeles", "2026-06-11T09:00"));
    assert!(reason.to_string().contains("in America/Boise"), "{reason}");
}

#[test]
fn no_common_window_is_unknown_time_zone() {
    // A Bahamas mobile is non-geographic: every zone of +1, from Guam to St John's.
    let n = "+12423591234";
    let z = resolve_zones(n, None).expect("zones");
    assert!(z.len() > 10, "{:?}", z.names());
    let p = Policy {
        window_end: Time::constant(11, 0, 0, 0),
        retry_times: vec![Time::constant(10, 0, 0, 0)],
        ..Policy::default()
    };
    let d = check(ts("2026-06-10T15:00Z"), &callee(n), &[], "c1", &p);
    let Decision::Refuse { reason } = d else {
        panic!("{d:?}")
    };
    assert_eq!(reason.code(), "UNKNOWN_TIME_ZONE");
    let msg = reason.to_string();
    assert!(
        msg.contains("Pacific/Guam") && msg.contains("set a time zone on the contact"),
        "{msg}"
    );
    // With the full default window the zones still share a short overlap.
    let d = check(
        ts("2026-06-10T15:00Z"),
        &callee(n),
        &[],
        "c1",
        &Policy::default(),
    );
    assert!(
        matches!(d, Decision::Defer { .. } | Decision::Allowed),
        "{d:?}"
    );
}

// ---- DST ----------------------------------------------------------------------------------------

#[test]
fn dst_spring_forward_new_york() {
    let p = Policy::default();
    let c = callee(NYC);
    // 2026-03-08: clocks go 02:00 EST -> 03:00 EDT. 09:00 EDT = 13:00Z (not 14:00Z).
    let d = check(ts("2026-03-08T07:30Z"), &c, &[], "c1", &p);
    assert!(
        matches!(d, Decision::Defer { until, .. } if until == ts("2026-03-08T13:00Z")),
        "{d:?}"
    );
    assert!(matches!(
        check(ts("2026-03-08T12:59:59Z"), &c, &[], "c1", &p),
        Decision::Defer { .. }
    ));
    assert_eq!(
        check(ts("2026-03-08T13:00Z"), &c, &[], "c1", &p),
        Decision::Allowed
    );
    // end: 21:00 EDT = 01:00Z next day, last start 00:59:00Z
    assert_eq!(
        check(ts("2026-03-09T00:58:59Z"), &c, &[], "c1", &p),
        Decision::Allowed
    );
    let d = check(ts("2026-03-09T00:59Z"), &c, &[], "c1", &p);
    assert!(
        matches!(d, Decision::Defer { until, .. } if until == ts("2026-03-09T13:00Z")),
        "{d:?}"
    );
    // the day before is still EST: 09:00 EST = 14:00Z
    let d = check(ts("2026-03-07T13:30Z"), &c, &[], "c1", &p);
    assert!(
        matches!(d, Decision::Defer { until, .. } if until == ts("2026-03-07T14:00Z")),
        "{d:?}"
    );
}

#[test]
fn dst_fall_back_new_york() {
    let p = Policy::default();
    let c = callee(NYC);
    // 2026-11-01: 02:00 EDT -> 01:00 EST. 09:00 EST = 14:00Z.
    let d = check(ts("2026-11-01T05:30Z"), &c, &[], "c1", &p); // 01:30 EDT, the first one
    assert!(
        matches!(d, Decision::Defer { until, .. } if until == ts("2026-11-01T14:00Z")),
        "{d:?}"
    );
    let d = check(ts("2026-11-01T13:30Z"), &c, &[], "c1", &p); // 08:30 EST
    let Decision::Defer { until, reason } = d else {
        panic!("{d:?}")
    };
    assert_eq!(until, ts("2026-11-01T14:00Z"));
    assert_eq!(
        reason.to_string(),
        "outside the calling window: 08:30 on Sunday 2026-11-01 in America/New_York, window 09:00–21:00"
    );
    // 21:00 EST = 02:00Z next day
    assert_eq!(
        check(ts("2026-11-02T01:58Z"), &c, &[], "c1", &p),
        Decision::Allowed
    );
    let d = check(ts("2026-11-02T01:59:30Z"), &c, &[], "c1", &p);
    assert!(
        matches!(d, Decision::Defer { until, .. } if until == ts("2026-11-02T14:00Z")),
        "{d:?}"
    );
}

#[test]
fn local_times_in_gaps_and_folds_use_compatible_disambiguation() {
    let ny = jiff::tz::db().get("America/New_York").expect("tz");
    // 02:30 does not exist on 2026-03-08: moved forward by the 1 h gap, 03:30 EDT.
    assert_eq!(
        instant(&ny, "2026-03-08T02:30".parse().expect("dt")),
        Some(ts("2026-03-08T07:30Z"))
    );
    // 01:30 happens twice on 2026-11-01: the earlier one (EDT).
    assert_eq!(
        instant(&ny, "2026-11-01T01:30".parse().expect("dt")),
        Some(ts("2026-11-01T05:30Z"))
    );
    // Retry slots on the spring-forward day: 10:00 EDT = 14:00Z.
    let c = callee(NYC);
    let now = ts("2026-03-07T23:30Z"); // 18:30 EST on Saturday; the 18:00 slot has passed
    let r = next_retry(
        now,
        Outcome::NoAnswer,
        now,
        1,
        &c,
        &[],
        "c1",
        &Policy::default(),
    );
    assert_eq!(
        r,
        Retry::At {
            at: ts("2026-03-08T14:00Z")
        }
    );
    // ... and on the fall-back day 10:00 EST = 15:00Z.
    let now = ts("2026-10-31T22:30Z"); // 18:30 EDT on Saturday
    let r = next_retry(
        now,
        Outcome::NoAnswer,
        now,
        1,
        &c,
        &[],
        "c1",
        &Policy::default(),
    );
    assert_eq!(
        r,
        Retry::At {
            at: ts("2026-11-01T15:00Z")
        }
    );
}

// ---- caps ---------------------------------------------------------------------------------------

fn attempt(at: Timestamp, subject: &str) -> PastAttempt<'_> {
    PastAttempt {
        at,
        subject,
        outcome: Some(Outcome::NoAnswer),
    }
}

#[test]
fn florida_fourth_same_subject_call_in_24h_is_deferred() {
    let p = Policy {
        max_attempts_per_day: 10,
        ..Policy::default()
    };
    let c = callee(MIAMI);
    let z = "America/New_York";
    let h = [
        attempt(local(z, "2026-06-10T10:00"), "camp-1"),
        attempt(local(z, "2026-06-10T11:00"), "camp-1"),
        attempt(local(z, "2026-06-10T12:00"), "camp-1"),
    ];
    let d = check(local(z, "2026-06-10T13:00"), &c, &h, "camp-1", &p);
    let Decision::Defer { until, reason } = d else {
        panic!("{d:?}")
    };
    assert_eq!(until, local(z, "2026-06-11T10:00"));
    assert_eq!(reason.code(), "STATE_CAP");
    assert!(
        reason
            .to_string()
            .starts_with("FL allows at most 3 calls on the same subject in 24 hours"),
        "{reason}"
    );
    assert_eq!(check(until, &c, &h, "camp-1", &p), Decision::Allowed);
    // another subject is not capped by the state rule
    assert_eq!(
        check(local(z, "2026-06-10T13:00"), &c, &h, "camp-2", &p),
        Decision::Allowed
    );
    // the same in New York (no state cap)
    assert_eq!(
        check(local(z, "2026-06-10T13:00"), &callee(NYC), &h, "camp-1", &p),
        Decision::Allowed
    );
    // rolling, not per day: 18:00, 19:00 yesterday and 09:30 today block until 18:00 today
    let h = [
        attempt(local(z, "2026-06-10T18:00"), "camp-1"),
        attempt(local(z, "2026-06-10T19:00"), "camp-1"),
        attempt(local(z, "2026-06-11T09:30"), "camp-1"),
    ];
    let d = check(local(z, "2026-06-11T10:00"), &c, &h, "camp-1", &p);
    assert!(
        matches!(d, Decision::Defer { until, .. } if until == local(z, "2026-06-11T18:00")),
        "{d:?}"
    );
    // if that lands outside the window, the window decides
    let h = [
        attempt(local(z, "2026-06-10T19:59:30"), "camp-1"),
        attempt(local(z, "2026-06-11T09:00"), "camp-1"),
        attempt(local(z, "2026-06-11T09:10"), "camp-1"),
    ];
    // lifts at 19:59:30, inside the 60 s margin before 20:00; next morning 09:00 only 09:10 counts
    let d = check(local(z, "2026-06-11T10:00"), &c, &h, "camp-1", &p);
    assert!(
        matches!(d, Decision::Defer { until, .. } if until == local(z, "2026-06-12T09:00")),
        "{d:?}"
    );
}

#[test]
fn daily_cap_counts_all_campaigns_and_defers_to_the_next_day() {
    let p = Policy::default();
    let c = callee(NYC);
    let z = "America/New_York";
    let h = [
        attempt(local(z, "2026-06-10T09:05"), "a"),
        attempt(local(z, "2026-06-10T11:00"), "b"),
        attempt(local(z, "2026-06-10T15:00"), "c"),
        attempt(local(z, "2026-06-09T15:00"), "c"),
    ];
    let d = check(local(z, "2026-06-10T16:00"), &c, &h, "d", &p);
    let Decision::Defer { until, reason } = d else {
        panic!("{d:?}")
    };
    assert_eq!(until, local(z, "2026-06-11T09:00"));
    assert_eq!(reason.code(), "DAILY_CAP");
    assert_eq!(
        reason.to_string(),
        "daily cap reached: 3 calls already placed to this number on 2026-06-10 (America/New_York), max 3 per day"
    );
}

#[test]
fn sunday_in_alabama_is_deferred_to_monday() {
    assert_eq!(us_state(BIRMINGHAM_AL), Some("AL"));
    assert_eq!(zones_of(BIRMINGHAM_AL), ["America/Chicago"]);
    let c = callee(BIRMINGHAM_AL);
    let z = "America/Chicago";
    let d = check(
        local(z, "2026-03-15T12:00"),
        &c,
        &[],
        "c1",
        &Policy::default(),
    );
    let Decision::Defer { until, reason } = d else {
        panic!("{d:?}")
    };
    assert_eq!(until, local(z, "2026-03-16T09:00"));
    assert_eq!(reason.code(), "NO_CALL_DAY");
    assert_eq!(
        reason.to_string(),
        "no calls on Sunday 2026-03-15 in America/Chicago (AL state rule: no Sunday calls)"
    );
    // Saturday is fine, Sunday in Georgia is fine
    assert_eq!(
        check(
            local(z, "2026-03-14T12:00"),
            &c,
            &[],
            "c1",
            &Policy::default()
        ),
        Decision::Allowed
    );
    assert_eq!(
        check(
            local("America/New_York", "2026-03-15T12:00"),
            &callee("+14045551234"),
            &[],
            "c1",
            &Policy::default()
        ),
        Decision::Allowed
    );
}

#[test]
fn south_dakota_weekdays_only_and_policy_no_call_days() {
    let sd = "+16052345678";
    assert_eq!(us_state(sd), Some("SD"));
    let z = resolve_zones(sd, None).expect("zones");
    let (zone, _) = z.first();
    let d = check(
        local(zone, "2026-03-14T12:00"),
        &callee(sd),
        &[],
        "c1",
        &Policy::default(),
    );
    assert!(
        matches!(d, Decision::Defer { until, .. } if until == local(zone, "2026-03-16T09:00")),
        "{d:?}"
    );
    let p = Policy {
        no_call_days: vec![Weekday::Wednesday],
        ..Policy::default()
    };
    let d = check(
        local("America/New_York", "2026-06-10T12:00"),
        &callee(NYC),
        &[],
        "c1",
        &p,
    );
    let Decision::Defer { until, reason } = d else {
        panic!("{d:?}")
    };
    assert_eq!(until, local("America/New_York", "2026-06-11T09:00"));
    assert!(
        reason.to_string().contains("policy no_call_days"),
        "{reason}"
    );
}

#[test]
fn refusals_in_order() {
    let p = Policy::default();
    let now = ts("2026-06-10T15:00Z");
    let dnc = Callee {
        do_not_call: true,
        consent: false,
        ..callee(NYC)
    };
    let code = |d: Decision| match d {
        Decision::Refuse { reason } => reason.code(),
        other => panic!("{other:?}"),
    };
    assert_eq!(code(check(now, &dnc, &[], "c", &p)), "DO_NOT_CALL");
    let nc = Callee {
        consent: false,
        ..callee(NYC)
    };
    assert_eq!(code(check(now, &nc, &[], "c", &p)), "NO_CONSENT");
    let p2 = Policy {
        require_consent: false,
        ..Policy::default()
    };
    assert_eq!(check(now, &nc, &[], "c", &p2), Decision::Allowed);
    let bad = Policy {
        window_start: Time::constant(7, 0, 0, 0),
        ..Policy::default()
    };
    assert_eq!(
        code(check(now, &callee(NYC), &[], "c", &bad)),
        "INVALID_POLICY"
    );
    // SD weekdays only + policy no-call on weekdays: never
    let p3 = Policy {
        no_call_days: vec![
            Weekday::Monday,
            Weekday::Tuesday,
            Weekday::Wednesday,
            Weekday::Thursday,
            Weekday::Friday,
        ],
        ..Policy::default()
    };
    assert_eq!(
        code(check(now, &callee("+16052345678"), &[], "c", &p3)),
        "NO_SLOT"
    );
}

// ---- retries -------------------------------------------------------------------------------------

#[test]
fn next_retry_basics() {
    let p = Policy::default();
    let c = callee(NYC);
    let z = "America/New_York";
    let first = local(z, "2026-06-10T09:30");
    // final outcomes
    for o in [
        Outcome::Completed,
        Outcome::Declined,
        Outcome::OptedOut,
        Outcome::InvalidNumber,
    ] {
        assert!(
            matches!(
                next_retry(first, o, first, 1, &c, &[], "c", &p),
                Retry::Never { .. }
            ),
            "{o}"
        );
    }
    // next slot at least 30 min later: 09:45 -> 10:00 is only 15 min away -> 14:00
    let now = local(z, "2026-06-10T09:45");
    let h = [attempt(first, "c")];
    assert_eq!(
        next_retry(now, Outcome::NoAnswer, first, 1, &c, &h, "c", &p),
        Retry::At {
            at: local(z, "2026-06-10T14:00")
        }
    );
    let now = local(z, "2026-06-10T09:15");
    assert_eq!(
        next_retry(now, Outcome::Busy, first, 1, &c, &h, "c", &p),
        Retry::At {
            at: local(z, "2026-06-10T10:00")
        }
    );
    // max attempts
    assert!(matches!(
        next_retry(now, Outcome::Busy, first, 6, &c, &h, "c", &p),
        Retry::GiveUp { .. }
    ));
    // DNC -> never
    let dnc = Callee {
        do_not_call: true,
        ..c
    };
    assert!(matches!(
        next_retry(now, Outcome::Busy, first, 1, &dnc, &h, "c", &p),
        Retry::Never { .. }
    ));
    // daily cap reached today -> tomorrow 10:00
    let h3 = [
        attempt(first, "c"),
        attempt(local(z, "2026-06-10T10:00"), "x"),
        attempt(local(z, "2026-06-10T14:00"), "y"),
    ];
    let now = local(z, "2026-06-10T14:05");
    assert_eq!(
        next_retry(now, Outcome::Voicemail, first, 1, &c, &h3, "c", &p),
        Retry::At {
            at: local(z, "2026-06-11T10:00")
        }
    );
    // deadline: first attempt + 5 days = 2026-06-15 09:30; after 18:00 on the 14th nothing is left
    let now = local(z, "2026-06-14T18:30");
    let r = next_retry(now, Outcome::NoAnswer, first, 2, &c, &h, "c", &p);
    let Retry::GiveUp { reason } = r else {
        panic!("{r:?}")
    };
    assert!(
        reason.contains("2026-06-15 09:30") && reason.contains("give_up_after_days = 5"),
        "{reason}"
    );
    let now = local(z, "2026-06-14T17:00");
    assert_eq!(
        next_retry(now, Outcome::NoAnswer, first, 2, &c, &h, "c", &p),
        Retry::At {
            at: local(z, "2026-06-14T18:00")
        }
    );
}

#[test]
fn next_retry_skips_sunday_in_alabama() {
    let z = "America/Chicago";
    let c = callee(BIRMINGHAM_AL);
    let first = local(z, "2026-03-13T18:05");
    let now = local(z, "2026-03-14T18:10"); // Saturday after the 18:00 slot
    let r = next_retry(
        now,
        Outcome::NoAnswer,
        first,
        2,
        &c,
        &[attempt(first, "c")],
        "c",
        &Policy::default(),
    );
    assert_eq!(
        r,
        Retry::At {
            at: local(z, "2026-03-16T10:00")
        }
    );
}

// ---- policy ---------------------------------------------------------------------------------------

#[test]
fn policy_validation_names_the_field() {
    let t = |h, m| Time::constant(h, m, 0, 0);
    let cases: Vec<(Policy, &str, &str)> = vec![
        (
            Policy {
                window_start: t(7, 30),
                ..Policy::default()
            },
            "window_start",
            "window_start 07:30 is earlier than 08:00, the federal limit",
        ),
        (
            Policy {
                window_end: t(21, 30),
                ..Policy::default()
            },
            "window_end",
            "window_end 21:30 is later than 21:00",
        ),
        (
            Policy {
                window_start: t(12, 0),
                window_end: t(10, 0),
                ..Policy::default()
            },
            "window_end",
            "window_start 12:00 is not before window_end 10:00",
        ),
        (
            Policy {
                retry_times: vec![],
                ..Policy::default()
            },
            "retry_times",
            "retry_times is empty",
        ),
        (
            Policy {
                retry_times: vec![t(8, 0), t(21, 0)],
                ..Policy::default()
            },
            "retry_times",
            "retry_times: none",
        ),
        (
            Policy {
                max_attempts_per_day: 0,
                ..Policy::default()
            },
            "max_attempts_per_day",
            "max_attempts_per_day",
        ),
        (
            Policy {
                give_up_after_days: 0,
                ..Policy::default()
            },
            "give_up_after_days",
            "give_up_after_days",
        ),
        (
            Policy {
                max_attempts: 0,
                ..Policy::default()
            },
            "max_attempts",
            "max_attempts must",
        ),
        (
            Policy {
                no_call_days: vec![
                    Weekday::Monday,
                    Weekday::Tuesday,
                    Weekday::Wednesday,
                    Weekday::Thursday,
                    Weekday::Friday,
                    Weekday::Saturday,
                    Weekday::Sunday,
                ],
                ..Policy::default()
            },
            "no_call_days",
            "no_call_days lists all seven days",
        ),
        (
            Policy {
                start_margin_s: 43_200,
                ..Policy::default()
            },
            "start_margin_s",
            "start_margin_s 43200",
        ),
    ];
    for (p, field, msg) in cases {
        let e = p.validate().expect_err(field);
        assert_eq!(e.field(), field, "{e}");
        assert!(e.to_string().starts_with(msg), "{e} / {msg}");
    }
    assert_eq!(Policy::default().validate(), Ok(()));
}

#[test]
fn policy_serde() {
    let p: Policy = serde_json::from_str("{}").expect("empty");
    assert_eq!(p, Policy::default());
    let p: Policy = serde_json::from_str(
        r#"{"window_start":"10:00","window_end":"20:30:00","no_call_days":["sunday","Sat"],"retry_times":["11:00"]}"#,
    )
    .expect("policy");
    assert_eq!(p.window_start, Time::constant(10, 0, 0, 0));
    assert_eq!(p.window_end, Time::constant(20, 30, 0, 0));
    assert_eq!(p.no_call_days, [Weekday::Sunday, Weekday::Saturday]);
    let json = serde_json::to_value(&p).expect("json");
    assert_eq!(
        json["no_call_days"],
        serde_json::json!(["sunday", "saturday"])
    );
    assert_eq!(json["window_start"], "10:00:00");
    let back: Policy = serde_json::from_value(json).expect("roundtrip");
    assert_eq!(back, p);
    assert!(serde_json::from_str::<Policy>(r#"{"window_stat":"10:00"}"#).is_err());
    let e = serde_json::from_str::<Policy>(r#"{"no_call_days":["funday"]}"#).expect_err("bad day");
    assert!(e.to_string().contains("funday"), "{e}");
}

#[test]
fn decision_serde_and_codes() {
    let d = check(
        ts("2026-11-01T13:30Z"),
        &callee(NYC),
        &[],
        "c1",
        &Policy::default(),
    );
    let json = serde_json::to_value(&d).expect("json");
    assert_eq!(json["decision"], "defer");
    assert_eq!(json["until"], "2026-11-01T14:00:00Z");
    assert_eq!(json["reason"]["code"], "OUTSIDE_WINDOW");
    assert_eq!(json["reason"]["zone"], "America/New_York");
    let back: Decision = serde_json::from_value(json).expect("roundtrip");
    assert_eq!(back, d);
    let r = RefuseReason::DoNotCall;
    assert_eq!(serde_json::to_value(&r).expect("json")["code"], r.code());
    let r = RefuseReason::NoSlot { days: 14 };
    assert_eq!(serde_json::to_value(&r).expect("json")["code"], r.code());
    assert_eq!(
        serde_json::to_value(Decision::Allowed).expect("json"),
        serde_json::json!({"decision": "allowed"})
    );
    let r = Retry::At {
        at: ts("2026-01-01T00:00Z"),
    };
    assert_eq!(serde_json::to_value(&r).expect("json")["retry"], "at");
}

#[test]
fn outcomes() {
    assert_eq!("no-answer".parse::<Outcome>(), Ok(Outcome::NoAnswer));
    assert_eq!("no_answer".parse::<Outcome>(), Ok(Outcome::NoAnswer));
    assert_eq!("Busy".parse::<Outcome>(), Ok(Outcome::Busy));
    assert!("ringing".parse::<Outcome>().is_err());
    for o in Outcome::ALL {
        assert_eq!(o.as_str().parse::<Outcome>(), Ok(o));
        assert_eq!(serde_json::to_value(o).expect("json"), o.as_str());
    }
    let retryable: Vec<_> = Outcome::ALL
        .into_iter()
        .filter(|o| o.is_retryable())
        .collect();
    assert_eq!(
        retryable,
        [
            Outcome::NoAnswer,
            Outcome::Busy,
            Outcome::Failed,
            Outcome::Voicemail
        ]
    );
}

// ---- generated data -------------------------------------------------------------------------------

#[test]
fn every_table_zone_loads_in_the_bundled_tzdb() {
    let bundled = TimeZoneDatabase::bundled();
    let mut n = 0;
    let mut last = "";
    for (prefix, zones) in zone_table::all_prefixes() {
        assert!(prefix > last, "table not sorted at {prefix}");
        last = prefix;
        assert!(
            !zones.is_empty() && prefix.bytes().all(|b| b.is_ascii_digit()),
            "{prefix}"
        );
        for z in zones {
            assert!(
                bundled.get(z).is_ok(),
                "{z} (prefix {prefix}) not in jiff's bundled tzdb"
            );
            assert!(
                jiff::tz::db().get(z).is_ok(),
                "{z} (prefix {prefix}) not in jiff's tzdb"
            );
            n += 1;
        }
    }
    assert!(n > 3000, "{n}");
}

#[test]
fn inference_matches_phonenumbers_oracle() {
    let mut checked = 0;
    let mut mismatches = Vec::new();
    for (number, expected) in zone_table::ORACLE_TZ {
        // The Rust `phonenumber` metadata may lag the Python package: skip numbers it rejects.
        let Some(parsed) = zones::parse_number(number) else {
            continue;
        };
        let got = zones::infer(&parsed).map(|(z, _)| z).unwrap_or_default();
        checked += 1;
        if got != *expected {
            mismatches.push(format!(
                "{number}: got {got:?}, phonenumbers says {expected:?}"
            ));
        }
    }
    assert!(checked > 400, "only {checked} oracle numbers parsed");
    assert!(
        mismatches.is_empty(),
        "{} of {checked} differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn nanp_state_table() {
    let usps = [
        "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "FL", "GA", "HI", "ID", "IL", "IN", "IA",
        "KS", "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH", "NJ",
        "NM", "NY", "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT", "VT",
        "VA", "WA", "WV", "WI", "WY", "DC",
    ];
    let table = zone_table::NANP_STATES;
    assert!(table.len() > 300, "{}", table.len());
    assert!(table.windows(2).all(|w| w[0].0 < w[1].0));
    for (npa, st) in table {
        assert!(usps.contains(st), "{npa} {st}");
    }
    for st in usps {
        assert!(table.iter().any(|(_, s)| *s == st), "no area code for {st}");
    }
    // Canadian and Caribbean area codes are not US states.
    assert_eq!(us_state("+14165550100"), None); // Toronto
    assert_eq!(us_state("+17875550100"), None); // Puerto Rico
    assert_eq!(us_state("+12125550100"), Some("NY"));
    assert_eq!(us_state("+14105550100"), Some("MD"));
}

#[test]
fn state_rule_table_is_sane() {
    for r in state_rules() {
        assert!(
            r.window_start >= FEDERAL_WINDOW_START && r.window_end <= FEDERAL_WINDOW_END,
            "{}",
            r.state
        );
        assert!(
            r.window_start < r.window_end && !r.source.is_empty(),
            "{}",
            r.state
        );
        assert_eq!(state_rule(r.state), Some(r));
    }
    for st in ["FL", "OK", "MD"] {
        let r = state_rule(st).expect(st);
        assert_eq!(r.max_per_24h_same_subject, Some(3), "{st}");
        assert_eq!(r.window_end, Time::constant(20, 0, 0, 0), "{st}");
    }
    for st in ["AL", "LA", "MS"] {
        assert!(state_rule(st).expect(st).no_sundays, "{st}");
    }
    let sd = state_rule("SD").expect("SD");
    assert!(sd.no_saturdays && sd.no_sundays);
    assert_eq!(
        state_rule("TX").map(|r| r.window_start),
        Some(Time::constant(9, 0, 0, 0))
    );
    assert_eq!(state_rule("NY"), None);
    let _ = date(2026, 1, 1);
}
