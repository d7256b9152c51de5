//! Where is the callee? Time-zone candidates from the contact record or from the number.

use jiff::tz::TimeZone;
use phonenumber::{Mode, Type as PhoneNumberType};
use serde::{Deserialize, Serialize};

use crate::zone_table;

/// How [`Zones`] were found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ZoneSource {
    /// The contact record named the zone; it wins over inference.
    Contact,
    /// libphonenumber's map matched this digit prefix (country code + area code / exchange).
    NumberPrefix { prefix: String },
    /// Only the country is known (non-geographic number, e.g. a mobile in most countries, or no
    /// finer entry): every zone of the country calling code is a candidate.
    Country { calling_code: u16 },
}

/// Candidate time zones of a callee: one or more, never empty.
///
/// Several candidates mean the location is ambiguous; the rules then take the most restrictive
/// overlap: an instant is callable only if it is callable in every candidate zone.
#[derive(Clone, Debug)]
pub struct Zones {
    names: Vec<String>,
    zones: Vec<TimeZone>,
    source: ZoneSource,
}

impl Zones {
    /// IANA names, in the same order as [`Zones::time_zones`].
    pub fn names(&self) -> &[String] {
        &self.names
    }
    /// The jiff time zones.
    pub fn time_zones(&self) -> &[TimeZone] {
        &self.zones
    }
    /// How the zones were found.
    pub fn source(&self) -> &ZoneSource {
        &self.source
    }
    /// Number of candidates (at least 1).
    pub fn len(&self) -> usize {
        self.zones.len()
    }
    /// Always false: a `Zones` has at least one candidate.
    pub fn is_empty(&self) -> bool {
        self.zones.is_empty()
    }
    /// More than one candidate.
    pub fn is_ambiguous(&self) -> bool {
        self.zones.len() > 1
    }
    /// The first candidate: the zone whose local calendar counts the daily cap and places retry
    /// slots (candidates from the table are sorted by name, so this is deterministic).
    pub fn first(&self) -> (&str, &TimeZone) {
        // Both vectors are non-empty by construction.
        (self.names[0].as_str(), &self.zones[0])
    }
    /// Iterate `(name, zone)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &TimeZone)> {
        self.names.iter().map(String::as_str).zip(self.zones.iter())
    }
}

/// Why [`resolve_zones`] failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ZoneError {
    #[error(
        "the contact's time zone {name:?} is not a known IANA time zone name (e.g. \"America/New_York\")"
    )]
    InvalidTimeZone { name: String },
    #[error("{number:?} is not a valid phone number in E.164 form (e.g. \"+13055550100\")")]
    InvalidNumber { number: String },
    #[error("no time zone is known for {number}; set a time zone on the contact")]
    UnknownZone { number: String },
}

/// A parsed, valid number.
pub(crate) struct Parsed {
    /// E.164 without '+'.
    pub digits: String,
    pub calling_code: u16,
    pub geographic: bool,
}

/// Country calling codes whose mobile numbers are geographic (libphonenumber's
/// `GEO_MOBILE_COUNTRIES`: Mexico, Argentina, Brazil, Indonesia, China).
const GEO_MOBILE_COUNTRIES: [u16; 5] = [52, 54, 55, 62, 86];

/// Parse and validate with libphonenumber's metadata (the `phonenumber` crate).
pub(crate) fn parse_number(number: &str) -> Option<Parsed> {
    let n = number.trim();
    if !n.starts_with('+') {
        return None;
    }
    let parsed = phonenumber::parse(None, n).ok()?;
    if !parsed.is_valid() {
        return None;
    }
    let e164 = parsed.format().mode(Mode::E164).to_string();
    let digits = e164.strip_prefix('+')?.to_string();
    let calling_code = parsed.code().value();
    let geographic = match parsed.number_type(&phonenumber::metadata::DATABASE) {
        PhoneNumberType::FixedLine | PhoneNumberType::FixedLineOrMobile => true,
        PhoneNumberType::Mobile => GEO_MOBILE_COUNTRIES.contains(&calling_code),
        _ => false,
    };
    Some(Parsed {
        digits,
        calling_code,
        geographic,
    })
}

/// Longest-prefix lookup of `digits` in the generated table (libphonenumber semantics).
fn lookup(digits: &str) -> Option<(&str, &'static [&'static str])> {
    let max = digits.len().min(zone_table::ZONE_PREFIX_MAX_LEN);
    (1..=max).rev().find_map(|len| {
        let p = digits.get(..len)?;
        zone_table::zones_for_prefix(p).map(|z| (p, z))
    })
}

/// The inferred candidate zone names for a valid number and how they were found,
/// as `phonenumbers.timezone.time_zones_for_number` does it.
pub(crate) fn infer(p: &Parsed) -> Option<(Vec<&'static str>, ZoneSource)> {
    let cc = p.calling_code.to_string();
    let (prefix, names) = if p.geographic {
        lookup(&p.digits)?
    } else {
        lookup(&cc)?
    };
    let source = if p.geographic && prefix.len() > cc.len() {
        ZoneSource::NumberPrefix {
            prefix: prefix.to_string(),
        }
    } else {
        ZoneSource::Country {
            calling_code: p.calling_code,
        }
    };
    Some((names.to_vec(), source))
}

/// Where the callee is: the contact's zone if given (an invalid IANA name is an error), else the
/// zones libphonenumber's time-zone map gives for the number (longest prefix; non-geographic
/// numbers such as most mobiles get every zone of their country).
///
/// An empty or blank `contact_tz` counts as absent.
pub fn resolve_zones(number: &str, contact_tz: Option<&str>) -> Result<Zones, ZoneError> {
    resolve_with(number, contact_tz, None)
}

/// [`resolve_zones`], reusing an already parsed number.
pub(crate) fn resolve_with(
    number: &str,
    contact_tz: Option<&str>,
    parsed: Option<Parsed>,
) -> Result<Zones, ZoneError> {
    if let Some(name) = contact_tz.map(str::trim).filter(|n| !n.is_empty()) {
        let tz = jiff::tz::db()
            .get(name)
            .map_err(|_| ZoneError::InvalidTimeZone {
                name: name.to_string(),
            })?;
        return Ok(Zones {
            names: vec![name.to_string()],
            zones: vec![tz],
            source: ZoneSource::Contact,
        });
    }
    let parsed =
        parsed
            .or_else(|| parse_number(number))
            .ok_or_else(|| ZoneError::InvalidNumber {
                number: number.to_string(),
            })?;
    let unknown = || ZoneError::UnknownZone {
        number: number.to_string(),
    };
    let (candidates, source) = infer(&parsed).ok_or_else(unknown)?;
    let mut names = Vec::with_capacity(candidates.len());
    let mut zones = Vec::with_capacity(candidates.len());
    for name in candidates {
        // Every name in the table loads (tested); skip defensively rather than fail.
        if let Ok(tz) = jiff::tz::db().get(name) {
            names.push(name.to_string());
            zones.push(tz);
        }
    }
    if zones.is_empty() {
        return Err(unknown());
    }
    Ok(Zones {
        names,
        zones,
        source,
    })
}

/// The US state (USPS code) of a NANP number's area code: `+1NPA…` with an area code that
/// libphonenumber places in the US. Separators (spaces, `-`, `.`, parentheses) are ignored; other
/// forms (extensions, vanity letters) go through the full parser.
pub fn us_state(number: &str) -> Option<&'static str> {
    let simple = number.trim().strip_prefix('+').and_then(|rest| {
        let mut digits = String::with_capacity(12);
        for c in rest.chars() {
            match c {
                '0'..='9' => digits.push(c),
                ' ' | '-' | '.' | '(' | ')' => {}
                _ => return None,
            }
        }
        Some(digits)
    });
    match simple {
        Some(digits) => state_of_digits(&digits),
        None => state_of_digits(&parse_number(number)?.digits),
    }
}

/// [`us_state`] for E.164 digits without `+` ("13055550100").
pub(crate) fn state_of_digits(digits: &str) -> Option<&'static str> {
    if digits.len() != 11 || !digits.starts_with('1') {
        return None;
    }
    let npa: u16 = digits.get(1..4)?.parse().ok()?;
    zone_table::NANP_STATES
        .binary_search_by_key(&npa, |(a, _)| *a)
        .ok()
        .and_then(|i| zone_table::NANP_STATES.get(i))
        .map(|(_, s)| *s)
}
