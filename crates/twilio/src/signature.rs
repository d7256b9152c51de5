//! `X-Twilio-Signature`: HMAC-SHA1 over the URL + sorted params, base64.
//!
//! Mirrors `twilio.request_validator.RequestValidator` (twilio-python 9.13.0):
//!
//! * form webhooks: `base64(HMAC-SHA1(auth_token, url + concat(for key in sorted(set(keys)):
//!   for value in sorted(set(values of key)): key + value)))`;
//! * JSON webhooks: Twilio appends `bodySHA256=<hex sha256(raw body)>` to the URL's query and
//!   signs the URL alone (no params);
//! * validation tries the URL with the scheme's default port added and with any port removed,
//!   because Twilio's signing side is inconsistent about it.
//!
//! All comparisons of secrets-derived values are constant-time (`subtle`). No function here
//! panics on any input.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

/// Name of the HTTP header that carries the signature.
pub const SIGNATURE_HEADER: &str = "X-Twilio-Signature";

/// Compute Twilio's signature of a request: base64(HMAC-SHA1(auth_token,
/// url + for each key sorted (then each distinct value sorted): key + value)).
///
/// Keys and values are sorted by Unicode code point (byte order of UTF-8), and a
/// value repeated under the same key counts once, exactly as twilio-python does.
pub fn compute_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    // Sorting the pairs sorts by key, then by value within a key; dedup removes
    // repeated identical (key, value) pairs (twilio-python's `sorted(set(values))`).
    pairs.sort_unstable();
    pairs.dedup();

    let mut mac = new_mac(auth_token);
    mac.update(url.as_bytes());
    for (k, v) in pairs {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    BASE64.encode(mac.finalize().into_bytes())
}

/// Validate a signature in constant time, trying the URL as given, with the
/// scheme's default port added (https/wss 443, http/ws 80) and with the port
/// removed, as Twilio's own validator does.
pub fn validate_signature(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    signature: &str,
) -> bool {
    let mut ok = Choice::from(0u8);
    for candidate in url_variants(url) {
        let computed = compute_signature(auth_token, &candidate, params);
        ok |= computed.as_bytes().ct_eq(signature.as_bytes());
    }
    bool::from(ok)
}

/// Lower-case hex SHA-256 of a raw request body (the `bodySHA256` query value).
pub fn body_sha256_hex(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(hex_digit(b >> 4));
        out.push(hex_digit(b & 0x0f));
    }
    out
}

/// Validate a JSON-body webhook: `url_with_body_sha256` must carry
/// `bodySHA256=<hex>` in its query, that value must equal `sha256(body)`
/// (constant-time), and `signature` must be the signature of the URL with no
/// params (with the same port variants as [`validate_signature`]).
///
/// Returns `false` when the URL has no `bodySHA256` parameter.
pub fn validate_json_request(
    auth_token: &str,
    url_with_body_sha256: &str,
    body: &[u8],
    signature: &str,
) -> bool {
    let Some(claimed) = query_param(url_with_body_sha256, "bodySHA256") else {
        return false;
    };
    let actual = body_sha256_hex(body);
    let body_ok = actual.as_bytes().ct_eq(claimed.as_bytes());
    let sig_ok = Choice::from(u8::from(validate_signature(
        auth_token,
        url_with_body_sha256,
        &[],
        signature,
    )));
    bool::from(body_ok & sig_ok)
}

fn new_mac(auth_token: &str) -> Hmac<Sha1> {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail for it.
    #[allow(clippy::expect_used)]
    Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("HMAC takes keys of any length")
}

fn hex_digit(n: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(n & 0x0f)])
}

/// The first value of query parameter `name` (percent-decoded), like Python's
/// `parse_qs(urlparse(url).query)[name][0]`.
fn query_param(url: &str, name: &str) -> Option<String> {
    let without_fragment = url.split('#').next().unwrap_or(url);
    let (_, query) = without_fragment.split_once('?')?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The URL as given, with the default port added (if it has no port) and with
/// its port removed (if it has one). Works on the raw string so that nothing
/// else in the URL (case, percent-encoding, trailing `?`) is normalised: the
/// signature covers the exact bytes Twilio requested.
fn url_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_owned()];
    let Some(parts) = split_authority(url) else {
        return out;
    };
    match parts.port {
        Some(_) => out.push(format!("{}{}{}", parts.before, parts.host, parts.after)),
        None => {
            if let Some(port) = default_port(parts.scheme) {
                out.push(format!(
                    "{}{}:{}{}",
                    parts.before, parts.host, port, parts.after
                ));
            }
        }
    }
    out
}

fn default_port(scheme: &str) -> Option<u16> {
    if scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("wss") {
        Some(443)
    } else if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("ws") {
        Some(80)
    } else {
        None
    }
}

struct AuthorityParts<'a> {
    scheme: &'a str,
    /// `scheme://` plus any `userinfo@`.
    before: &'a str,
    /// Host (IPv6 literals keep their brackets).
    host: &'a str,
    /// Digits of an explicit port.
    port: Option<&'a str>,
    /// Path, query and fragment.
    after: &'a str,
}

fn split_authority(url: &str) -> Option<AuthorityParts<'_>> {
    let scheme_end = url.find("://")?;
    let scheme = &url[..scheme_end];
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        return None;
    }
    let auth_start = scheme_end + 3;
    let rest = &url[auth_start..];
    let auth_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..auth_len];
    let after = &rest[auth_len..];

    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let host_port = &authority[host_start..];
    // A ':' after the closing bracket of an IPv6 literal (or anywhere, for other hosts).
    let search_from = host_port.rfind(']').map_or(0, |i| i + 1);
    let (host, port) = match host_port[search_from..].rfind(':') {
        Some(i) => {
            let colon = search_from + i;
            let digits = &host_port[colon + 1..];
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                // "host:" or "host:abc": no usable port; leave the URL alone.
                return None;
            }
            (&host_port[..colon], Some(digits))
        }
        None => (host_port, None),
    };
    if host.is_empty() {
        return None;
    }
    Some(AuthorityParts {
        scheme,
        before: &url[..auth_start + host_start],
        host,
        port,
        after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "12345";
    const UPSTREAM_URI: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn upstream_params() -> Vec<(String, String)> {
        p(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
            ("Caller", "+14158675309"),
        ])
    }

    fn voice_params() -> Vec<(String, String)> {
        p(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("AccountSid", "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"),
            ("From", "+14158675310"),
            ("To", "+18005551212"),
            ("CallStatus", "ringing"),
            ("Direction", "inbound"),
        ])
    }

    // --- upstream vectors: twilio/twilio-python tests/unit/test_request_validator.py ---

    #[test]
    fn upstream_form_vector() {
        let sig = compute_signature(TOKEN, UPSTREAM_URI, &upstream_params());
        assert_eq!(sig, "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
        assert!(validate_signature(
            TOKEN,
            UPSTREAM_URI,
            &upstream_params(),
            &sig
        ));
    }

    #[test]
    fn upstream_vector_signed_with_port() {
        let with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2";
        assert_eq!(
            compute_signature(TOKEN, with_port, &upstream_params()),
            "kvajT1Ptam85bY51eRf/AJRuM3w="
        );
        // Twilio signed with :443, we know the URL without it (and vice versa).
        assert!(validate_signature(
            TOKEN,
            UPSTREAM_URI,
            &upstream_params(),
            "kvajT1Ptam85bY51eRf/AJRuM3w="
        ));
        assert!(validate_signature(
            TOKEN,
            with_port,
            &upstream_params(),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
    }

    #[test]
    fn upstream_repeated_keys() {
        let params = p(&[
            ("Sid", "CA123"),
            ("SidAccount", "AC123"),
            ("Digits", "5678"),
            ("Digits", "1234"),
        ]);
        let sig = compute_signature(TOKEN, UPSTREAM_URI, &params);
        assert_eq!(sig, "IK+Dwps556ElfBT0I3Rgjkr1wJU=");
        assert!(validate_signature(TOKEN, UPSTREAM_URI, &params, &sig));
        // order of the pairs in the request does not matter
        let mut reversed = params.clone();
        reversed.reverse();
        assert_eq!(compute_signature(TOKEN, UPSTREAM_URI, &reversed), sig);
        // a duplicated identical value counts once (python: sorted(set(values)))
        let mut dup = params.clone();
        dup.push(("Digits".into(), "1234".into()));
        assert_eq!(compute_signature(TOKEN, UPSTREAM_URI, &dup), sig);
    }

    #[test]
    fn upstream_json_body_vector() {
        let body = br#"{"property": "value", "boolean": true}"#;
        let hash = body_sha256_hex(body);
        assert_eq!(
            hash,
            "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
        );
        let uri = format!("{UPSTREAM_URI}&bodySHA256={hash}");
        assert_eq!(
            compute_signature(TOKEN, &uri, &[]),
            "a9nBmqA0ju/hNViExpshrM61xv4="
        );
        assert!(validate_json_request(
            TOKEN,
            &uri,
            body,
            "a9nBmqA0ju/hNViExpshrM61xv4="
        ));
        // tampered body
        assert!(!validate_json_request(
            TOKEN,
            &uri,
            br#"{"property": "value", "boolean": false}"#,
            "a9nBmqA0ju/hNViExpshrM61xv4="
        ));
        // wrong signature
        assert!(!validate_json_request(
            TOKEN,
            &uri,
            body,
            "a9nBmqA0ju/hNViExpshrM61xv5="
        ));
        // no bodySHA256 in the URL
        assert!(!validate_json_request(
            TOKEN,
            UPSTREAM_URI,
            body,
            &compute_signature(TOKEN, UPSTREAM_URI, &[])
        ));
    }

    // --- vectors from CONFORMANCE.md §1.1 (tw_sig.py, twilio 9.13.0) ---

    #[test]
    fn voice_webhook_vector() {
        let url = "https://example.com/twilio/voice?tenant=acme";
        let sig = compute_signature(TOKEN, url, &voice_params());
        assert_eq!(sig, "GIQlbxgBLJTNa/xMWTWI365XBXM=");
        assert!(validate_signature(TOKEN, url, &voice_params(), &sig));
        assert!(validate_signature(
            TOKEN,
            "https://example.com:443/twilio/voice?tenant=acme",
            &voice_params(),
            &sig
        ));
    }

    #[test]
    fn json_vector_from_conformance_doc() {
        let body = br#"{"CallSid":"CA1234567890ABCDE","event":"test"}"#;
        let hash = body_sha256_hex(body);
        assert_eq!(
            hash,
            "6429adb65fccbce0b8bbbd21d93d6de5c51576af868a21e82433ec537602aeff"
        );
        let url = format!("https://example.com/twilio/json?bodySHA256={hash}");
        assert_eq!(
            compute_signature(TOKEN, &url, &[]),
            "RrSlUzWzBlkO6od3XKY4lNbg8qg="
        );
        assert!(validate_json_request(
            TOKEN,
            &url,
            body,
            "RrSlUzWzBlkO6od3XKY4lNbg8qg="
        ));
    }

    #[test]
    fn wss_handshake_vector() {
        let url = "wss://voice.example.com/media-stream";
        assert_eq!(
            compute_signature(TOKEN, url, &[]),
            "n2Kygn8Vr09ZrsTai2J2SLE/CLY="
        );
        assert!(validate_signature(
            TOKEN,
            url,
            &[],
            "n2Kygn8Vr09ZrsTai2J2SLE/CLY="
        ));
        // signed with the explicit default wss port, validated without it
        let with_port = compute_signature(TOKEN, "wss://voice.example.com:443/media-stream", &[]);
        assert!(validate_signature(TOKEN, url, &[], &with_port));
        // the https URL is a different URL
        assert!(!validate_signature(
            TOKEN,
            "https://voice.example.com/media-stream",
            &[],
            "n2Kygn8Vr09ZrsTai2J2SLE/CLY="
        ));
    }

    // --- negative cases ---

    #[test]
    fn tampered_requests_fail() {
        let url = "https://example.com/twilio/voice?tenant=acme";
        let sig = "GIQlbxgBLJTNa/xMWTWI365XBXM=";
        let mut params = voice_params();
        params[3].1 = "+18005550000".into();
        assert!(!validate_signature(TOKEN, url, &params, sig));
        let mut extra = voice_params();
        extra.push(("Foo".into(), "bar".into()));
        assert!(!validate_signature(TOKEN, url, &extra, sig));
        assert!(!validate_signature(
            TOKEN,
            "https://example.com/twilio/voice?tenant=acmf",
            &voice_params(),
            sig
        ));
        assert!(!validate_signature("54321", url, &voice_params(), sig));
        assert!(!validate_signature(
            TOKEN,
            "http://example.com/twilio/voice?tenant=acme",
            &voice_params(),
            sig
        ));
        // a different explicit port is not the default port
        assert!(!validate_signature(
            TOKEN,
            "https://example.com:8443/twilio/voice?tenant=acme",
            &voice_params(),
            &compute_signature(
                TOKEN,
                "https://example.com:444/twilio/voice?tenant=acme",
                &voice_params()
            )
        ));
    }

    #[test]
    fn garbage_signatures_fail_without_panicking() {
        let url = "https://example.com/twilio/voice?tenant=acme";
        let good = "GIQlbxgBLJTNa/xMWTWI365XBXM=";
        for sig in [
            "",
            " ",
            "GIQlbxgBLJTNa/xMWTWI365XBXM",
            "GIQlbxgBLJTNa/xMWTWI365XBXM==",
            " GIQlbxgBLJTNa/xMWTWI365XBXM=",
            "giqlbxgbljtna/xmwtwi365xbxm=",
            "not base64 at all!!",
            "\u{0}\u{ffff}é",
            &"A".repeat(10_000),
        ] {
            assert!(
                !validate_signature(TOKEN, url, &voice_params(), sig),
                "{sig:?}"
            );
            assert!(!validate_json_request(TOKEN, url, b"{}", sig), "{sig:?}");
        }
        assert!(validate_signature(TOKEN, url, &voice_params(), good));
    }

    #[test]
    fn odd_urls_never_panic() {
        let sig = "GIQlbxgBLJTNa/xMWTWI365XBXM=";
        for url in [
            "",
            "://",
            "https://",
            "https://:443",
            "https://host:",
            "https://host:abc/x",
            "https://user:pw@host/x",
            "https://user:pw@host:443/x",
            "https://[::1]/x",
            "https://[::1]:443/x",
            "https://[::1",
            "wss://h?bodySHA256=%zz",
            "h?bodySHA256=",
            "é://ü:1/ä?bodySHA256=ö#ß",
            "mailto:someone@example.com",
        ] {
            assert!(!validate_signature(TOKEN, url, &[], sig), "{url:?}");
            assert!(!validate_json_request(TOKEN, url, b"", sig), "{url:?}");
            let _ = compute_signature(TOKEN, url, &[]);
        }
    }

    #[test]
    fn port_variants() {
        assert_eq!(
            url_variants("https://a.com/x?y=1"),
            ["https://a.com/x?y=1", "https://a.com:443/x?y=1"]
        );
        assert_eq!(
            url_variants("http://a.com"),
            ["http://a.com", "http://a.com:80"]
        );
        assert_eq!(
            url_variants("wss://a.com/m"),
            ["wss://a.com/m", "wss://a.com:443/m"]
        );
        assert_eq!(
            url_variants("ws://a.com/m"),
            ["ws://a.com/m", "ws://a.com:80/m"]
        );
        assert_eq!(
            url_variants("https://a.com:8443/x"),
            ["https://a.com:8443/x", "https://a.com/x"]
        );
        assert_eq!(
            url_variants("https://u:p@[::1]:443/x"),
            ["https://u:p@[::1]:443/x", "https://u:p@[::1]/x"]
        );
        assert_eq!(
            url_variants("https://[::1]/x"),
            ["https://[::1]/x", "https://[::1]:443/x"]
        );
        assert_eq!(url_variants("ftp://a.com/x"), ["ftp://a.com/x"]);
        assert_eq!(url_variants("https://a.com:/x"), ["https://a.com:/x"]);
    }

    #[test]
    fn unicode_params_sort_by_code_point() {
        // python sorts str by code point, which is UTF-8 byte order
        let params = p(&[("Body", "héllo ✓"), ("Ünï", "x"), ("A", "😀")]);
        let mut manual = Hmac::<Sha1>::new_from_slice(TOKEN.as_bytes()).expect("any key length");
        manual.update("https://a.com/sms".as_bytes());
        manual.update("A😀Bodyhéllo ✓Ünïx".as_bytes());
        assert_eq!(
            compute_signature(TOKEN, "https://a.com/sms", &params),
            BASE64.encode(manual.finalize().into_bytes())
        );
    }
}
