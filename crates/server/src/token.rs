//! Per-call stream tokens.
//!
//! The TwiML carries our call id and a token as `<Parameter>`s; Twilio
//! hands them back in `start.customParameters`. The token is
//! `{issued_ms}.{HMAC(secret, call_id, issued_ms)}`: any node sharing the
//! secret can check it without shared state, it binds the call id, and it
//! expires, so a captured `start` cannot be replayed later to open model
//! sessions on our key. (Each node also refuses a second claim of the same
//! call id, see [`crate::app`].)

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], call_id: &str, issued_ms: u64) -> String {
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return String::new(); // HMAC accepts any key length
    };
    mac.update(b"voxbridge-stream:");
    mac.update(call_id.as_bytes());
    mac.update(b":");
    mac.update(issued_ms.to_string().as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// The token for `call_id`, issued at `now_ms` (Unix milliseconds).
pub fn stream_token(secret: &[u8], call_id: &str, now_ms: u64) -> String {
    format!("{now_ms}.{}", mac(secret, call_id, now_ms))
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    BadSignature,
    Expired,
}

/// Check a token presented on the media socket at `now_ms`; it is valid
/// for `ttl_ms` after issue (and up to 5 s "early", for clock skew).
pub fn verify_stream_token(
    secret: &[u8],
    call_id: &str,
    token: &str,
    now_ms: u64,
    ttl_ms: u64,
) -> Result<(), TokenError> {
    let (issued, sig) = token.split_once('.').ok_or(TokenError::Malformed)?;
    let issued_ms: u64 = issued.parse().map_err(|_| TokenError::Malformed)?;
    let expected = mac(secret, call_id, issued_ms);
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(sig.as_bytes())) {
        return Err(TokenError::BadSignature);
    }
    if now_ms + 5_000 < issued_ms || now_ms.saturating_sub(issued_ms) > ttl_ms {
        return Err(TokenError::Expired);
    }
    Ok(())
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_the_call_id_the_secret_and_the_time() {
        let t = stream_token(b"secret", "call-1", 1_000_000);
        let ok = |id: &str, tok: &str, now| verify_stream_token(b"secret", id, tok, now, 30_000);
        assert_eq!(ok("call-1", &t, 1_000_500), Ok(()));
        assert_eq!(ok("call-2", &t, 1_000_500), Err(TokenError::BadSignature));
        assert_eq!(
            verify_stream_token(b"other", "call-1", &t, 1_000_500, 30_000),
            Err(TokenError::BadSignature)
        );
        assert_eq!(ok("call-1", "", 1_000_500), Err(TokenError::Malformed));
        assert_eq!(
            ok("call-1", &t[1..], 1_000_500),
            Err(TokenError::BadSignature)
        );
        assert_eq!(ok("call-1", &t, 1_031_000), Err(TokenError::Expired));
        // A forged issue time breaks the signature.
        let forged = t.replacen("1000000", "1030000", 1);
        assert_eq!(
            ok("call-1", &forged, 1_031_000),
            Err(TokenError::BadSignature)
        );
    }
}
