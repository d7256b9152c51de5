//! Per-call stream tokens.
//!
//! The TwiML carries our call id and a token as `<Parameter>`s; Twilio
//! hands them back in `start.customParameters`. The token is an HMAC of the
//! call id under a server secret, so any node that shares the secret can
//! check it without shared state, and a media socket cannot claim a call it
//! was not given.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The token for `call_id`.
pub fn stream_token(secret: &[u8], call_id: &str) -> String {
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(), // HMAC accepts any key length
    };
    mac.update(b"voxbridge-stream:");
    mac.update(call_id.as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// Constant-time check of a token presented on the media socket.
pub fn verify_stream_token(secret: &[u8], call_id: &str, token: &str) -> bool {
    let expected = stream_token(secret, call_id);
    !expected.is_empty() && expected.as_bytes().ct_eq(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_the_call_id_and_the_secret() {
        let t = stream_token(b"secret", "call-1");
        assert!(verify_stream_token(b"secret", "call-1", &t));
        assert!(!verify_stream_token(b"secret", "call-2", &t));
        assert!(!verify_stream_token(b"other", "call-1", &t));
        assert!(!verify_stream_token(b"secret", "call-1", ""));
        assert!(!verify_stream_token(b"secret", "call-1", &t[1..]));
    }
}
