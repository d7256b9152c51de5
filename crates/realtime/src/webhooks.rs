//! OpenAI webhooks: Standard Webhooks signature verification and the
//! `realtime.call.incoming` event.
//!
//! OpenAI signs its webhooks the Standard Webhooks way
//! (github.com/standard-webhooks/standard-webhooks, `spec/standard-webhooks.md`;
//! the reference library is the `standardwebhooks` Python package):
//!
//! - the secret is `whsec_` + base64(key bytes); the prefix is optional and the
//!   rest is base64-decoded either way (what `standardwebhooks.Webhook` does);
//! - three headers: `webhook-id`, `webhook-timestamp` (unix seconds) and
//!   `webhook-signature`, a space-separated list of `<version>,<base64>`
//!   entries of which only `v1` (HMAC-SHA256) is defined; other versions are
//!   ignored, and one matching `v1` entry is enough (key rotation sends two);
//! - the signed content is `{id}.{timestamp}.{raw body}`: verify the bytes as
//!   received, before any JSON parsing;
//! - the timestamp must be within [`DEFAULT_TOLERANCE_SECS`] of now, in both
//!   directions.
//!
//! Conformance: `conformance/check_webhooks.py` signs vectors with the
//! official `standardwebhooks` package (cross-checked with the `openai`
//! package's verifier) and `tests/webhook_vectors.rs` checks that
//! [`WebhookVerifier`] reaches the same verdict on every one.

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The `whsec_` prefix of a serialized secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// How far `webhook-timestamp` may be from now, either way (5 minutes, as in
/// the spec, `standardwebhooks` and the `openai` SDK).
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;
/// Header names (lower case, as HTTP/2 and axum give them).
pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// The event type of an incoming SIP call.
pub const REALTIME_CALL_INCOMING: &str = "realtime.call.incoming";

/// Lenient base64 for secrets and signatures: padding optional (the
/// reference library appends `==` before decoding), non-zero trailing bits
/// tolerated. The alphabet is still strict.
const LENIENT_B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Why a webhook was refused. [`WebhookError::code`] is stable (it goes into
/// the `{"error","code"}` HTTP body and into logs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("missing or empty {0} header")]
    MissingHeader(&'static str),
    #[error("webhook-timestamp {0:?} is not a whole number of unix seconds")]
    InvalidTimestamp(String),
    #[error("webhook timestamp is {age_secs} s old (tolerance {tolerance_secs} s)")]
    TimestampTooOld { age_secs: i64, tolerance_secs: i64 },
    #[error("webhook timestamp is {ahead_secs} s in the future (tolerance {tolerance_secs} s)")]
    TimestampTooNew {
        ahead_secs: i64,
        tolerance_secs: i64,
    },
    #[error("no v1 entry of webhook-signature matches the body")]
    NoMatchingSignature,
    #[error("invalid webhook secret: {0}")]
    InvalidSecret(&'static str),
    #[error("invalid webhook payload: {0}")]
    InvalidPayload(String),
}

impl WebhookError {
    /// `MISSING_HEADER`, `INVALID_TIMESTAMP`, `TIMESTAMP_TOO_OLD`,
    /// `TIMESTAMP_TOO_NEW`, `NO_MATCHING_SIGNATURE`, `INVALID_SECRET`,
    /// `INVALID_PAYLOAD`.
    pub fn code(&self) -> &'static str {
        match self {
            WebhookError::MissingHeader(_) => "MISSING_HEADER",
            WebhookError::InvalidTimestamp(_) => "INVALID_TIMESTAMP",
            WebhookError::TimestampTooOld { .. } => "TIMESTAMP_TOO_OLD",
            WebhookError::TimestampTooNew { .. } => "TIMESTAMP_TOO_NEW",
            WebhookError::NoMatchingSignature => "NO_MATCHING_SIGNATURE",
            WebhookError::InvalidSecret(_) => "INVALID_SECRET",
            WebhookError::InvalidPayload(_) => "INVALID_PAYLOAD",
        }
    }
}

/// Verifies (and, for emulators, produces) Standard Webhooks signatures.
/// The key never appears in `Debug` output.
#[derive(Clone)]
pub struct WebhookVerifier {
    key: Vec<u8>,
    tolerance_secs: i64,
}

impl std::fmt::Debug for WebhookVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookVerifier")
            .field("key", &format_args!("<{} bytes>", self.key.len()))
            .field("tolerance_secs", &self.tolerance_secs)
            .finish()
    }
}

impl WebhookVerifier {
    /// From a serialized secret, `whsec_<base64>` (the prefix is optional, as
    /// in the reference library; surrounding whitespace is ignored).
    ///
    /// Note: without the prefix the `openai` Python SDK uses the string bytes
    /// as the key instead of decoding them, so the two libraries disagree on
    /// such secrets; OpenAI issues `whsec_` secrets, which both decode.
    pub fn new(secret: &str) -> Result<Self, WebhookError> {
        let secret = secret.trim();
        let b64 = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
        if b64.is_empty() {
            return Err(WebhookError::InvalidSecret("the secret is empty"));
        }
        let key = LENIENT_B64
            .decode(b64)
            .map_err(|_| WebhookError::InvalidSecret("not whsec_ followed by base64"))?;
        Self::from_key(key)
    }

    /// From raw key bytes.
    pub fn from_key(key: Vec<u8>) -> Result<Self, WebhookError> {
        if key.is_empty() {
            return Err(WebhookError::InvalidSecret("the key is empty"));
        }
        Ok(WebhookVerifier {
            key,
            tolerance_secs: DEFAULT_TOLERANCE_SECS,
        })
    }

    /// Replace the timestamp tolerance (seconds, both directions; negative
    /// values count as 0).
    pub fn with_tolerance(mut self, secs: i64) -> Self {
        self.tolerance_secs = secs.max(0);
        self
    }

    pub fn tolerance_secs(&self) -> i64 {
        self.tolerance_secs
    }

    /// The secret in `whsec_<base64>` form (for emulators and tests).
    pub fn secret(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.key))
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
        // HMAC accepts keys of any length; `from_key` guarantees non-empty.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }

    /// The `v1,<base64>` signature of `body` for `id` at `timestamp` (unix
    /// seconds), as a sender puts it in `webhook-signature`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!(
            "v1,{}",
            STANDARD.encode(self.mac(id, &timestamp.to_string(), body))
        )
    }

    /// Check one delivery. `id`, `timestamp` and `signature_header` are the
    /// header values (empty = missing), `body` the raw request body, and
    /// `now_unix` the current time in unix seconds.
    ///
    /// Order of checks (as in the reference library): headers present,
    /// timestamp well-formed and within tolerance, then signatures.
    pub fn verify(
        &self,
        id: &str,
        timestamp: &str,
        signature_header: &str,
        body: &[u8],
        now_unix: i64,
    ) -> Result<(), WebhookError> {
        if id.is_empty() {
            return Err(WebhookError::MissingHeader(HEADER_ID));
        }
        if timestamp.is_empty() {
            return Err(WebhookError::MissingHeader(HEADER_TIMESTAMP));
        }
        if signature_header.trim().is_empty() {
            return Err(WebhookError::MissingHeader(HEADER_SIGNATURE));
        }
        let ts = parse_timestamp(timestamp)?;
        let age = now_unix.saturating_sub(ts);
        if age > self.tolerance_secs {
            return Err(WebhookError::TimestampTooOld {
                age_secs: age,
                tolerance_secs: self.tolerance_secs,
            });
        }
        let ahead = ts.saturating_sub(now_unix);
        if ahead > self.tolerance_secs {
            return Err(WebhookError::TimestampTooNew {
                ahead_secs: ahead,
                tolerance_secs: self.tolerance_secs,
            });
        }
        // Sign the timestamp exactly as received (it is all digits here).
        let expected = self.mac(id, timestamp, body);
        for candidate in v1_signatures(signature_header) {
            if bool::from(candidate.as_slice().ct_eq(&expected)) {
                return Ok(());
            }
        }
        Err(WebhookError::NoMatchingSignature)
    }

    /// [`WebhookVerifier::verify`] with the three headers taken from `headers`
    /// (a header that is not visible ASCII counts as missing).
    pub fn verify_headers(
        &self,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
        now_unix: i64,
    ) -> Result<(), WebhookError> {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        self.verify(
            get(HEADER_ID),
            get(HEADER_TIMESTAMP),
            get(HEADER_SIGNATURE),
            body,
            now_unix,
        )
    }
}

/// Unix seconds: ASCII digits only (no sign, fraction or spaces), at most 18
/// of them so the value fits an `i64` with room for arithmetic.
fn parse_timestamp(s: &str) -> Result<i64, WebhookError> {
    if s.is_empty() || s.len() > 18 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(WebhookError::InvalidTimestamp(s.chars().take(32).collect()));
    }
    s.parse::<i64>()
        .map_err(|_| WebhookError::InvalidTimestamp(s.to_owned()))
}

/// The decoded `v1` signatures of a `webhook-signature` header: entries are
/// separated by any run of whitespace; an entry is `<version>,<base64>`;
/// other versions, entries without a comma and undecodable base64 are
/// skipped (they can never match).
pub fn v1_signatures(header: &str) -> impl Iterator<Item = Vec<u8>> + '_ {
    header.split_ascii_whitespace().filter_map(|entry| {
        let (version, sig) = entry.split_once(',')?;
        if version != "v1" {
            return None;
        }
        LENIENT_B64.decode(sig).ok()
    })
}

/// The current time in unix seconds (0 if the clock is before 1970).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// One header of the SIP INVITE, as OpenAI forwards it. Untrusted.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct SipHeader {
    pub name: String,
    pub value: String,
}

/// `realtime.call.incoming` (openai-python
/// `types/webhooks/realtime_call_incoming_webhook_event.py`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingCall {
    /// The event id (`evt_…`), not the webhook id.
    pub event_id: String,
    pub created_at: i64,
    /// Pass unchanged to the Calls API and the sideband socket.
    pub call_id: String,
    /// In INVITE order, repeated entries kept; authorization headers excluded.
    pub sip_headers: Vec<SipHeader>,
    /// `srtp`, `rtp`, something newer, or absent when unknown.
    pub sip_media_security: Option<String>,
}

/// A verified webhook body, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEvent {
    RealtimeCallIncoming(IncomingCall),
    /// Any other event type (OpenAI sends many; acknowledge and ignore).
    Other {
        id: String,
        kind: String,
    },
}

#[derive(Deserialize)]
struct RawEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    created_at: Option<i64>,
    #[serde(default)]
    data: Option<RawCallData>,
}

#[derive(Deserialize)]
struct RawCallData {
    call_id: String,
    sip_headers: Vec<SipHeader>,
    #[serde(default)]
    sip_media_security: Option<String>,
}

impl WebhookEvent {
    /// Parse a (verified) webhook body. `realtime.call.incoming` must carry
    /// `created_at`, `data.call_id` and `data.sip_headers`; other event types
    /// only need `id` and `type`.
    pub fn parse(body: &[u8]) -> Result<Self, WebhookError> {
        #[derive(Deserialize)]
        struct Head {
            id: String,
            #[serde(rename = "type")]
            kind: String,
        }
        let head: Head = serde_json::from_slice(body)
            .map_err(|e| WebhookError::InvalidPayload(e.to_string()))?;
        if head.kind != REALTIME_CALL_INCOMING {
            return Ok(WebhookEvent::Other {
                id: head.id,
                kind: head.kind,
            });
        }
        let raw: RawEvent = serde_json::from_slice(body)
            .map_err(|e| WebhookError::InvalidPayload(format!("{REALTIME_CALL_INCOMING}: {e}")))?;
        let created_at = raw.created_at.ok_or_else(|| {
            WebhookError::InvalidPayload(format!("{REALTIME_CALL_INCOMING}: missing created_at"))
        })?;
        let data = raw.data.ok_or_else(|| {
            WebhookError::InvalidPayload(format!("{REALTIME_CALL_INCOMING}: missing data"))
        })?;
        if data.call_id.is_empty() {
            return Err(WebhookError::InvalidPayload(format!(
                "{REALTIME_CALL_INCOMING}: empty data.call_id"
            )));
        }
        debug_assert_eq!(raw.kind, REALTIME_CALL_INCOMING);
        Ok(WebhookEvent::RealtimeCallIncoming(IncomingCall {
            event_id: raw.id,
            created_at,
            call_id: data.call_id,
            sip_headers: data.sip_headers,
            sip_media_security: data.sip_media_security,
        }))
    }

    /// The event id (`evt_…`).
    pub fn id(&self) -> &str {
        match self {
            WebhookEvent::RealtimeCallIncoming(c) => &c.event_id,
            WebhookEvent::Other { id, .. } => id,
        }
    }

    /// The event type.
    pub fn kind(&self) -> &str {
        match self {
            WebhookEvent::RealtimeCallIncoming(_) => REALTIME_CALL_INCOMING,
            WebhookEvent::Other { kind, .. } => kind,
        }
    }
}

/// SIP compact header forms (RFC 3261 §7.3.3) for the headers we read.
fn compact_form(name: &str) -> Option<&'static str> {
    const PAIRS: &[(&str, &str)] = &[("to", "t"), ("from", "f"), ("call-id", "i")];
    PAIRS
        .iter()
        .find(|(long, _)| long.eq_ignore_ascii_case(name))
        .map(|(_, short)| *short)
}

impl IncomingCall {
    /// The first SIP header called `name` (case-insensitive; `To`, `From`
    /// and `Call-ID` also match their compact forms `t`, `f`, `i`).
    pub fn sip_header(&self, name: &str) -> Option<&str> {
        let compact = compact_form(name);
        self.sip_headers
            .iter()
            .find(|h| {
                h.name.trim().eq_ignore_ascii_case(name)
                    || compact.is_some_and(|c| h.name.trim().eq_ignore_ascii_case(c))
            })
            .map(|h| h.value.as_str())
    }

    /// The dialled number in E.164 (`+14155550123`), from the `To` header.
    pub fn to_number(&self) -> Option<String> {
        self.sip_header("To").and_then(e164_from_sip_header)
    }

    /// The caller's number in E.164, from the `From` header (untrusted).
    pub fn from_number(&self) -> Option<String> {
        self.sip_header("From").and_then(e164_from_sip_header)
    }
}

/// The user part of the URI in a SIP `To`/`From`/`Contact` header value
/// (`"Name" <sip:user@host;uri-params>;tag=…`, `sip:user@host`,
/// `<tel:+1…;phone-context=…>`), percent-decoded. `None` when there is no
/// `sip:`/`sips:`/`tel:` URI or it has no user part.
pub fn sip_uri_user(value: &str) -> Option<String> {
    let mut rest = value.trim();
    // A quoted display name may contain `<`, `;` or `@`: skip it first.
    if let Some(after) = rest.strip_prefix('"') {
        let mut escaped = false;
        let mut end = None;
        for (i, c) in after.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        rest = after[end? + 1..].trim_start();
    }
    let uri = if let Some(open) = rest.find('<') {
        let inner = &rest[open + 1..];
        &inner[..inner.find('>')?]
    } else {
        // addr-spec without brackets: `;…` after it are header parameters.
        rest.split(';').next().unwrap_or("")
    };
    let uri = uri.trim();
    let colon = uri.find(':')?;
    let (scheme, after) = (&uri[..colon], &uri[colon + 1..]);
    let user = if scheme.eq_ignore_ascii_case("tel") {
        after.split(';').next().unwrap_or("")
    } else if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
        let (userinfo, _host) = after.split_once('@')?;
        // user params (`;isub=…`) and a password (`:…`) are not the number.
        userinfo.split([';', ':']).next().unwrap_or("")
    } else {
        return None;
    };
    let user = percent_decode(user)?;
    (!user.is_empty()).then_some(user)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The E.164 number (`+` and 3 to 15 digits, the first not 0) in a SIP
/// header value, ignoring the visual separators `-`, `.`, `(`, `)` and
/// spaces that `tel:` URIs allow. A user part without `+` is not E.164 and
/// gives `None` (use [`sip_uri_user`] for the raw user).
pub fn e164_from_sip_header(value: &str) -> Option<String> {
    let user = sip_uri_user(value)?;
    let digits_part = user.strip_prefix('+')?;
    let mut out = String::with_capacity(16);
    out.push('+');
    for c in digits_part.chars() {
        match c {
            '0'..='9' => out.push(c),
            '-' | '.' | '(' | ')' | ' ' => {}
            _ => return None,
        }
    }
    let n = out.len() - 1;
    if !(3..=15).contains(&n) || out.as_bytes()[1] == b'0' {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The fixed vector of the standard-webhooks repository
    // (libraries/python/tests/test_webhooks.py::test_sign_function), reproduced
    // with the standardwebhooks 1.1.0 package (CONFORMANCE.md §3).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn v() -> WebhookVerifier {
        WebhookVerifier::new(SECRET).expect("secret")
    }

    fn verify(sig: &str, now: i64) -> Result<(), WebhookError> {
        v().verify(ID, &TS.to_string(), sig, BODY, now)
    }

    #[test]
    fn upstream_vector_signs_and_verifies() {
        assert_eq!(v().sign(ID, TS, BODY), SIG);
        assert_eq!(verify(SIG, TS), Ok(()));
        // the secret without its prefix decodes the same
        let bare = WebhookVerifier::new(&SECRET[SECRET_PREFIX.len()..]).expect("bare");
        assert_eq!(bare.sign(ID, TS, BODY), SIG);
        // round trip of the serialized secret
        assert_eq!(
            WebhookVerifier::new(&v().secret())
                .expect("again")
                .sign(ID, TS, BODY),
            SIG
        );
        assert!(!format!("{:?}", v()).contains("MfKQ"));
    }

    #[test]
    fn any_v1_entry_may_match_and_other_versions_are_ignored() {
        let other = WebhookVerifier::new("whsec_c29tZS1vdGhlci1rZXktc29tZS1vdGhlci1rZXkhISE=")
            .expect("other")
            .sign(ID, TS, BODY);
        assert_eq!(verify(&format!("{other} {SIG}"), TS), Ok(()));
        assert_eq!(verify(&format!("{SIG} {other}"), TS), Ok(()));
        // several spaces, tabs, leading and trailing blanks
        assert_eq!(verify(&format!("  {other}   \t{SIG}  "), TS), Ok(()));
        // the same bytes under another version are not a v1 signature
        let v2 = SIG.replacen("v1,", "v2,", 1);
        assert_eq!(
            verify(&v2, TS),
            Err(WebhookError::NoMatchingSignature),
            "v2-only"
        );
        assert_eq!(verify(&format!("{v2} {SIG}"), TS), Ok(()));
        assert_eq!(
            verify(&format!("v1a,{} {other}", &SIG[3..]), TS),
            Err(WebhookError::NoMatchingSignature)
        );
        // garbage entries are skipped, not fatal
        assert_eq!(verify(&format!("nocomma v1,!!! , {SIG}"), TS), Ok(()));
        assert_eq!(
            verify("nocomma v1,!!!", TS),
            Err(WebhookError::NoMatchingSignature)
        );
        // unpadded base64 is the same signature
        assert_eq!(verify(SIG.trim_end_matches('='), TS), Ok(()));
        // a truncated or modified signature is not
        assert_eq!(
            verify(&SIG[..SIG.len() - 4], TS),
            Err(WebhookError::NoMatchingSignature)
        );
        let flipped = SIG.replacen("g0hM", "g0hN", 1);
        assert_eq!(verify(&flipped, TS), Err(WebhookError::NoMatchingSignature));
    }

    #[test]
    fn tampering_is_detected() {
        let v = v();
        let ts = TS.to_string();
        assert_eq!(
            v.verify(ID, &ts, SIG, br#"{"test": 2432232315}"#, TS),
            Err(WebhookError::NoMatchingSignature)
        );
        assert_eq!(
            v.verify(ID, &ts, SIG, br#"{"test":2432232314}"#, TS),
            Err(WebhookError::NoMatchingSignature),
            "re-serialized JSON is not the raw body"
        );
        assert_eq!(
            v.verify("msg_other", &ts, SIG, BODY, TS),
            Err(WebhookError::NoMatchingSignature)
        );
        assert_eq!(
            v.verify(ID, &(TS + 1).to_string(), SIG, BODY, TS),
            Err(WebhookError::NoMatchingSignature)
        );
        let other = WebhookVerifier::new("whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=").expect("other");
        assert_eq!(
            other.verify(ID, &ts, SIG, BODY, TS),
            Err(WebhookError::NoMatchingSignature)
        );
    }

    #[test]
    fn timestamp_window_is_300_s_both_ways() {
        assert_eq!(verify(SIG, TS + 300), Ok(()));
        assert_eq!(verify(SIG, TS - 300), Ok(()));
        let e = verify(SIG, TS + 301).expect_err("old");
        assert_eq!(e.code(), "TIMESTAMP_TOO_OLD");
        assert_eq!(
            e,
            WebhookError::TimestampTooOld {
                age_secs: 301,
                tolerance_secs: 300
            }
        );
        let e = verify(SIG, TS - 301).expect_err("new");
        assert_eq!(e.code(), "TIMESTAMP_TOO_NEW");
        // far off in either direction, no overflow
        assert_eq!(
            verify(SIG, i64::MAX).map_err(|e| e.code()),
            Err("TIMESTAMP_TOO_OLD")
        );
        assert_eq!(
            verify(SIG, i64::MIN).map_err(|e| e.code()),
            Err("TIMESTAMP_TOO_NEW")
        );
        // a custom tolerance
        let strict = v().with_tolerance(10);
        assert_eq!(
            strict
                .verify(ID, &TS.to_string(), SIG, BODY, TS + 11)
                .map_err(|e| e.code()),
            Err("TIMESTAMP_TOO_OLD")
        );
        // the window is checked before the signature
        assert_eq!(
            verify("v1,AAAA", TS + 1000).map_err(|e| e.code()),
            Err("TIMESTAMP_TOO_OLD")
        );
    }

    #[test]
    fn header_errors() {
        let v = v();
        let ts = TS.to_string();
        for (id, t, s, header) in [
            ("", ts.as_str(), SIG, HEADER_ID),
            (ID, "", SIG, HEADER_TIMESTAMP),
            (ID, ts.as_str(), "", HEADER_SIGNATURE),
            (ID, ts.as_str(), "   ", HEADER_SIGNATURE),
        ] {
            let e = v.verify(id, t, s, BODY, TS).expect_err("missing");
            assert_eq!(e, WebhookError::MissingHeader(header));
            assert_eq!(e.code(), "MISSING_HEADER");
        }
        for bad in [
            "abc",
            "1614265330.5",
            "-5",
            "+1614265330",
            " 1614265330",
            "1e9",
            "9999999999999999999999",
        ] {
            let e = v.verify(ID, bad, SIG, BODY, TS).expect_err(bad);
            assert_eq!(e.code(), "INVALID_TIMESTAMP", "{bad}");
        }
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(HEADER_ID, ID.parse().expect("hv"));
        headers.insert(HEADER_TIMESTAMP, ts.parse().expect("hv"));
        assert_eq!(
            v.verify_headers(&headers, BODY, TS),
            Err(WebhookError::MissingHeader(HEADER_SIGNATURE))
        );
        headers.insert("Webhook-Signature", SIG.parse().expect("hv"));
        assert_eq!(v.verify_headers(&headers, BODY, TS), Ok(()));
    }

    #[test]
    fn secrets() {
        for bad in ["", "whsec_", "   ", "whsec_!!!!", "whsec_abc def"] {
            let e = WebhookVerifier::new(bad).expect_err(bad);
            assert_eq!(e.code(), "INVALID_SECRET", "{bad:?}");
        }
        assert!(WebhookVerifier::from_key(Vec::new()).is_err());
        // unpadded and padded forms of the same key agree
        let a = WebhookVerifier::new("whsec_dGVzdC1rZXk=").expect("padded");
        let b = WebhookVerifier::new("whsec_dGVzdC1rZXk").expect("unpadded");
        assert_eq!(a.sign(ID, TS, BODY), b.sign(ID, TS, BODY));
        // whitespace around an env var value is ignored
        let c = WebhookVerifier::new(" whsec_dGVzdC1rZXk=\n").expect("trimmed");
        assert_eq!(a.sign(ID, TS, BODY), c.sign(ID, TS, BODY));
    }

    const EVENT: &str = r#"{"object":"event","id":"evt_685343a1381c819085d44c354e1b330e","type":"realtime.call.incoming","created_at":1750287018,"data":{"call_id":"rtc_u1_9c6574da8b8a41a18da9308f4ad974ce","sip_headers":[{"name":"From","value":"sip:+142555512112@sip.example.com"},{"name":"To","value":"sip:+18005551212@sip.example.com"},{"name":"Call-ID","value":"03782086-4ce9-44bf-8b0d-4e303d2cc590"}],"sip_media_security":"srtp"}}"#;

    #[test]
    fn parses_realtime_call_incoming() {
        let ev = WebhookEvent::parse(EVENT.as_bytes()).expect("parse");
        assert_eq!(ev.id(), "evt_685343a1381c819085d44c354e1b330e");
        assert_eq!(ev.kind(), REALTIME_CALL_INCOMING);
        let WebhookEvent::RealtimeCallIncoming(call) = ev else {
            panic!("not a call")
        };
        assert_eq!(call.call_id, "rtc_u1_9c6574da8b8a41a18da9308f4ad974ce");
        assert_eq!(call.created_at, 1750287018);
        assert_eq!(call.sip_media_security.as_deref(), Some("srtp"));
        assert_eq!(
            call.sip_header("to"),
            Some("sip:+18005551212@sip.example.com")
        );
        assert_eq!(
            call.sip_header("CALL-ID"),
            Some("03782086-4ce9-44bf-8b0d-4e303d2cc590")
        );
        assert_eq!(call.sip_header("Contact"), None);
        assert_eq!(call.to_number().as_deref(), Some("+18005551212"));
        assert_eq!(call.from_number().as_deref(), Some("+142555512112"));

        let other = WebhookEvent::parse(
            br#"{"id":"evt_1","type":"response.completed","created_at":1,"data":{"id":"resp_1"}}"#,
        )
        .expect("other");
        assert_eq!(
            other,
            WebhookEvent::Other {
                id: "evt_1".into(),
                kind: "response.completed".into()
            }
        );
        // no sip_media_security, compact header names
        let ev = WebhookEvent::parse(br#"{"id":"e","type":"realtime.call.incoming","created_at":5,"data":{"call_id":"rtc_1","sip_headers":[{"name":"t","value":"<tel:+1-415-555-0123>"}]}}"#)
            .expect("compact");
        let WebhookEvent::RealtimeCallIncoming(call) = ev else {
            panic!("not a call")
        };
        assert_eq!(call.sip_media_security, None);
        assert_eq!(call.to_number().as_deref(), Some("+14155550123"));
    }

    #[test]
    fn bad_payloads() {
        for body in [
            &b"not json"[..],
            br#"{"type":"realtime.call.incoming"}"#,
            br#"{"id":"e","type":"realtime.call.incoming","created_at":5}"#,
            br#"{"id":"e","type":"realtime.call.incoming","data":{"call_id":"c","sip_headers":[]}}"#,
            br#"{"id":"e","type":"realtime.call.incoming","created_at":5,"data":{"sip_headers":[]}}"#,
            br#"{"id":"e","type":"realtime.call.incoming","created_at":5,"data":{"call_id":"","sip_headers":[]}}"#,
            br#"{"id":"e","type":"realtime.call.incoming","created_at":"5","data":{"call_id":"c","sip_headers":[]}}"#,
            br#"{"id":"e","type":"realtime.call.incoming","created_at":5,"data":{"call_id":"c","sip_headers":[{"name":"To"}]}}"#,
        ] {
            let e = WebhookEvent::parse(body).expect_err(&String::from_utf8_lossy(body));
            assert_eq!(e.code(), "INVALID_PAYLOAD");
        }
    }

    #[test]
    fn to_number_extraction() {
        let cases: &[(&str, Option<&str>)] = &[
            ("sip:+18005551212@sip.example.com", Some("+18005551212")),
            (
                "<sip:+14155550123@sip.example.com>;tag=abc123",
                Some("+14155550123"),
            ),
            (
                "\"Acme Support\" <sip:+14155550123@sip.example.com;user=phone>;tag=x",
                Some("+14155550123"),
            ),
            (
                "\"A <weird>; name@x\" <sip:+14155550123@h>",
                Some("+14155550123"),
            ),
            (
                "Bob <sips:+442071838750@trunk.example.com:5061;transport=tls>",
                Some("+442071838750"),
            ),
            ("<SIP:+14155550123@Example.COM>", Some("+14155550123")),
            (
                "sip:+14155550123@sip.example.com;tag=1",
                Some("+14155550123"),
            ),
            ("<sip:+14155550123;isub=12@h>", Some("+14155550123")),
            ("<sip:%2B14155550123@h>", Some("+14155550123")),
            (
                "tel:+1-415-555-0123;phone-context=example.com",
                Some("+14155550123"),
            ),
            ("<tel:+1.415.555.0123>", Some("+14155550123")),
            ("  <sip:+14155550123@h>  ", Some("+14155550123")),
            ("sip:14155550123@h", None),
            ("sip:alice@example.com", None),
            ("sip:example.com", None),
            ("<mailto:+14155550123@h>", None),
            ("", None),
            ("<sip:+0123@h>", None),
            ("<sip:+12@h>", None),
            ("<sip:+1234567890123456@h>", None),
            ("<sip:+1415abc@h>", None),
            ("<sip:+14155550123@h", None),
            ("\"unterminated <sip:+14155550123@h>", None),
            ("<sip:%ZZ@h>", None),
        ];
        for (value, want) in cases {
            assert_eq!(e164_from_sip_header(value).as_deref(), *want, "{value:?}");
        }
        assert_eq!(
            sip_uri_user("<sip:alice@example.com>;tag=1").as_deref(),
            Some("alice")
        );
        assert_eq!(
            sip_uri_user("sip:14155550123@h").as_deref(),
            Some("14155550123")
        );
    }
}
