//! Contact import (CSV or JSON): every row is checked on its own; good rows are kept, bad ones
//! come back in a per-row report naming the field and the problem. Nothing is written here:
//! the caller stores the good rows in one transaction, so an import is never half-written.
//!
//! CSV: a header row, then one contact per row. Columns (case-insensitive): `phone` (or
//! `phone_number`, `number`, `to`; required), `name`, `timezone` (or `time_zone`, `tz`; an IANA
//! name), `consent` (`true`/`false`, `yes`/`no`, `y`/`n`, `1`/`0`). Every other column becomes
//! a context field the agent's instructions can use.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use voxbridge_store::NewContact;

/// Most contacts one import may carry.
pub const MAX_ROWS: usize = 100_000;

/// A contact as given in a JSON import.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactInput {
    pub phone: String,
    #[serde(default)]
    pub name: Option<String>,
    /// IANA time zone, e.g. `America/Chicago`; inferred from the number when absent.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Prior express consent to be called by an AI voice.
    #[serde(default)]
    pub consent: Option<bool>,
    /// Facts for the agent (`{"appointment": "Tue 10:00"}`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub context: BTreeMap<String, serde_json::Value>,
}

/// One problem with one row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct RowError {
    /// CSV line number (the header is line 1) or JSON index + 1.
    pub row: u64,
    pub phone: Option<String>,
    pub field: String,
    pub code: String,
    pub message: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct ImportReport {
    /// Rows read (header excluded).
    pub received: u64,
    /// Rows kept.
    pub accepted: u64,
    /// Rows refused (each appears at least once in `errors`).
    pub rejected: u64,
    pub errors: Vec<RowError>,
}

/// A problem with the import as a whole (nothing was kept).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImportError {
    #[error("the CSV has no header row")]
    Empty,
    #[error("the CSV header has no phone column (phone, phone_number, number or to)")]
    NoPhoneColumn,
    #[error("the CSV header names column {0:?} twice")]
    DuplicateColumn(String),
    #[error("more than {MAX_ROWS} contacts in one import")]
    TooManyRows,
    #[error("the CSV header cannot be read: {0}")]
    BadHeader(String),
}

/// How rows are checked.
pub struct ImportRules<'a> {
    /// Refuse rows without consent (the campaign's policy requires it).
    pub require_consent: bool,
    /// Numbers already in the campaign.
    pub existing: &'a HashSet<String>,
}

/// Parses and checks a CSV import.
pub fn from_csv(
    text: &str,
    rules: &ImportRules<'_>,
) -> Result<(Vec<NewContact>, ImportReport), ImportError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| ImportError::BadHeader(e.to_string()))?
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    if headers.iter().all(String::is_empty) {
        return Err(ImportError::Empty);
    }
    let mut seen = HashSet::new();
    for h in &headers {
        if !h.is_empty() && !seen.insert(h.as_str()) {
            return Err(ImportError::DuplicateColumn(h.clone()));
        }
    }
    let find = |names: &[&str]| headers.iter().position(|h| names.contains(&h.as_str()));
    let phone_col =
        find(&["phone", "phone_number", "number", "to"]).ok_or(ImportError::NoPhoneColumn)?;
    let name_col = find(&["name"]);
    let tz_col = find(&["timezone", "time_zone", "tz"]);
    let consent_col = find(&["consent"]);
    let known = [Some(phone_col), name_col, tz_col, consent_col];

    let mut checker = Checker::new(rules);
    for (i, record) in reader.records().enumerate() {
        if checker.report.received as usize >= MAX_ROWS {
            return Err(ImportError::TooManyRows);
        }
        // The line the record starts on, counted in the text itself: the csv crate neither
        // counts the blank lines it skips nor starts a record's position after them.
        let line = record
            .as_ref()
            .ok()
            .and_then(|r| r.position())
            .and_then(|p| {
                let at = usize::try_from(p.byte()).ok()?;
                let rest = text.get(at..)?;
                let blank = rest.len() - rest.trim_start_matches(['\r', '\n']).len();
                text.get(..at + blank)
            })
            .map_or(i as u64 + 2, |before| {
                1 + before.bytes().filter(|b| *b == b'\n').count() as u64
            });
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                checker.report.received += 1;
                checker.reject(line, None, "row", "BAD_ROW", e.to_string());
                continue;
            }
        };
        if record.iter().all(str::is_empty) {
            continue; // blank line
        }
        if record.len() > headers.len() {
            checker.report.received += 1;
            checker.reject(
                line,
                None,
                "row",
                "BAD_ROW",
                format!(
                    "{} fields, but the header has {}",
                    record.len(),
                    headers.len()
                ),
            );
            continue;
        }
        let get = |col: Option<usize>| {
            col.and_then(|c| record.get(c))
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let consent = match get(consent_col) {
            None => Ok(None),
            Some(v) => parse_bool(&v).map(Some).ok_or(v),
        };
        let mut context = serde_json::Map::new();
        for (c, h) in headers.iter().enumerate() {
            if known.contains(&Some(c)) || h.is_empty() {
                continue;
            }
            if let Some(v) = record.get(c).filter(|v| !v.is_empty()) {
                context.insert(h.clone(), serde_json::Value::String(v.to_owned()));
            }
        }
        checker.row(
            line,
            get(Some(phone_col)).unwrap_or_default(),
            get(name_col),
            get(tz_col),
            consent,
            context,
        );
    }
    Ok(checker.finish())
}

/// Checks a JSON import.
pub fn from_json(
    rows: &[ContactInput],
    rules: &ImportRules<'_>,
) -> Result<(Vec<NewContact>, ImportReport), ImportError> {
    if rows.len() > MAX_ROWS {
        return Err(ImportError::TooManyRows);
    }
    let mut checker = Checker::new(rules);
    for (i, r) in rows.iter().enumerate() {
        let context = r
            .context
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        checker.row(
            i as u64 + 1,
            r.phone.clone(),
            r.name.clone().filter(|n| !n.trim().is_empty()),
            r.timezone.clone().filter(|t| !t.trim().is_empty()),
            Ok(r.consent),
            context,
        );
    }
    Ok(checker.finish())
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "y" | "1" => Some(true),
        "false" | "no" | "n" | "0" => Some(false),
        _ => None,
    }
}

struct Checker<'a> {
    rules: &'a ImportRules<'a>,
    seen: HashSet<String>,
    kept: Vec<NewContact>,
    report: ImportReport,
}

impl<'a> Checker<'a> {
    fn new(rules: &'a ImportRules<'a>) -> Self {
        Checker {
            rules,
            seen: HashSet::new(),
            kept: Vec::new(),
            report: ImportReport::default(),
        }
    }

    fn reject(
        &mut self,
        row: u64,
        phone: Option<String>,
        field: &str,
        code: &str,
        message: String,
    ) {
        self.report.errors.push(RowError {
            row,
            phone,
            field: field.into(),
            code: code.into(),
            message,
        });
    }

    fn row(
        &mut self,
        row: u64,
        raw_phone: String,
        name: Option<String>,
        timezone: Option<String>,
        consent: Result<Option<bool>, String>,
        context: serde_json::Map<String, serde_json::Value>,
    ) {
        self.report.received += 1;
        let before = self.report.errors.len();
        let phone = match crate::api::parse_e164(raw_phone.trim()) {
            Ok(p) => Some(p),
            Err(_) => {
                let message = if raw_phone.trim().is_empty() {
                    "the phone number is missing".to_owned()
                } else {
                    format!(
                        "{raw_phone:?} is not a valid phone number in E.164 form (+ country code and number)"
                    )
                };
                self.reject(
                    row,
                    Some(raw_phone.clone()),
                    "phone",
                    "INVALID_PHONE",
                    message,
                );
                None
            }
        };
        if let Some(p) = &phone {
            if self.rules.existing.contains(p) {
                self.reject(
                    row,
                    Some(p.clone()),
                    "phone",
                    "DUPLICATE",
                    format!("{p} is already in this campaign"),
                );
            } else if self.seen.contains(p) {
                self.reject(
                    row,
                    Some(p.clone()),
                    "phone",
                    "DUPLICATE",
                    format!("{p} appears on an earlier row of this import"),
                );
            }
        }
        let shown = phone.clone().or(Some(raw_phone));
        match (&timezone, &phone) {
            (Some(tz), _) if jiff::tz::TimeZone::get(tz).is_err() => self.reject(
                row,
                shown.clone(),
                "timezone",
                "UNKNOWN_TIME_ZONE",
                format!("{tz:?} is not an IANA time zone (e.g. America/Chicago)"),
            ),
            (None, Some(p)) => {
                if let Err(e) = voxbridge_compliance::resolve_zones(p, None) {
                    self.reject(
                        row,
                        shown.clone(),
                        "timezone",
                        "UNKNOWN_TIME_ZONE",
                        format!("no timezone given and none can be inferred from the number: {e}"),
                    );
                }
            }
            _ => {}
        }
        let consent = match consent {
            Ok(c) => c,
            Err(v) => {
                self.reject(
                    row,
                    shown.clone(),
                    "consent",
                    "INVALID_CONSENT",
                    format!("consent {v:?} is not one of true/false, yes/no, y/n, 1/0"),
                );
                None
            }
        };
        if self.rules.require_consent && consent != Some(true) && self.report.errors.len() == before
        {
            self.reject(
                row,
                shown.clone(),
                "consent",
                "MISSING_CONSENT",
                "this campaign requires the callee's prior consent to an AI call (consent=true)"
                    .into(),
            );
        }
        if self.report.errors.len() > before {
            self.report.rejected += 1;
            return;
        }
        let Some(phone) = phone else { return };
        self.seen.insert(phone.clone());
        self.kept.push(NewContact {
            row_number: row as i64,
            phone,
            name,
            timezone,
            consent: consent.unwrap_or(false),
            context: serde_json::Value::Object(context),
        });
    }

    fn finish(mut self) -> (Vec<NewContact>, ImportReport) {
        self.report.accepted = self.kept.len() as u64;
        (self.kept, self.report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(existing: &HashSet<String>) -> ImportRules<'_> {
        ImportRules {
            require_consent: true,
            existing,
        }
    }

    #[test]
    fn good_rows_kept_bad_rows_reported() {
        let existing = HashSet::from(["+12125550199".to_string()]);
        let csv = "\u{feff}Phone,Name,TimeZone,Consent,Appointment\n\
            +1 212 555 0100,Ana,America/New_York,yes,Tue 10:00\n\
            12345,Bob,,true,\n\
            +12125550101,Cy,Mars/Olympus,true,\n\
            +12125550100,Dup,,true,\n\
            +12125550102,Dee,,no,\n\
            +12125550103,Eve,,maybe,\n\
            +12125550199,Old,,true,\n\
            \n\
            +442071838750,Fay,,1,Wed\n";
        let (kept, report) = from_csv(csv, &rules(&existing)).expect("parsed");
        assert_eq!(report.received, 8);
        assert_eq!(report.accepted, 2);
        assert_eq!(report.rejected, 6);
        assert_eq!(kept[0].phone, "+12125550100");
        assert_eq!(kept[0].name.as_deref(), Some("Ana"));
        assert_eq!(kept[0].timezone.as_deref(), Some("America/New_York"));
        assert_eq!(kept[0].context["appointment"], "Tue 10:00");
        assert_eq!(kept[0].row_number, 2);
        assert_eq!(kept[1].phone, "+442071838750");
        assert_eq!(kept[1].row_number, 10);
        let codes: Vec<(u64, &str)> = report
            .errors
            .iter()
            .map(|e| (e.row, e.code.as_str()))
            .collect();
        assert_eq!(
            codes,
            vec![
                (3, "INVALID_PHONE"),
                (4, "UNKNOWN_TIME_ZONE"),
                (5, "DUPLICATE"),
                (6, "MISSING_CONSENT"),
                (7, "INVALID_CONSENT"),
                (8, "DUPLICATE"),
            ]
        );
        assert!(report.errors[1].message.contains("Mars/Olympus"));
    }

    #[test]
    fn whole_file_problems() {
        let none = HashSet::new();
        assert_eq!(from_csv("", &rules(&none)).err(), Some(ImportError::Empty));
        assert_eq!(
            from_csv("name,consent\nAna,true\n", &rules(&none)).err(),
            Some(ImportError::NoPhoneColumn)
        );
        assert_eq!(
            from_csv("phone,Phone\n", &rules(&none)).err(),
            Some(ImportError::DuplicateColumn("phone".into()))
        );
        // a row longer than the header is a row error, not a file error
        let (kept, report) =
            from_csv("phone,consent\n+12125550100,true,extra\n", &rules(&none)).expect("ok");
        assert!(kept.is_empty());
        assert_eq!(report.errors[0].code, "BAD_ROW");
    }

    #[test]
    fn json_rows_and_consent_off() {
        let none = HashSet::new();
        let rows: Vec<ContactInput> = serde_json::from_value(serde_json::json!([
            {"phone": "+12125550100", "context": {"n": 1}},
            {"phone": "+12125550101", "consent": true, "timezone": "America/Chicago"},
        ]))
        .expect("rows");
        let (kept, report) = from_json(&rows, &rules(&none)).expect("ok");
        assert_eq!((report.accepted, report.rejected), (1, 1));
        assert_eq!(report.errors[0].code, "MISSING_CONSENT");
        assert_eq!(kept[0].timezone.as_deref(), Some("America/Chicago"));
        let lax = ImportRules {
            require_consent: false,
            existing: &none,
        };
        let (kept, _) = from_json(&rows, &lax).expect("ok");
        assert_eq!(kept.len(), 2);
        assert!(!kept[0].consent);
        assert_eq!(kept[0].context["n"], 1);
    }
}
