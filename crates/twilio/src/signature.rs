//! X-Twilio-Signature (HMAC-SHA1 over URL + sorted params, base64).
//! (being written)

/// Compute Twilio's signature of a request: base64(HMAC-SHA1(auth_token,
/// url + for each key sorted (then each value sorted): key + value)).
pub fn compute_signature(_auth_token: &str, _url: &str, _params: &[(String, String)]) -> String {
    String::new()
}

/// Validate a signature in constant time, trying the URL with and without
/// the scheme's default port as Twilio's own validator does.
pub fn validate_signature(
    _auth_token: &str,
    _url: &str,
    _params: &[(String, String)],
    _signature: &str,
) -> bool {
    false
}
