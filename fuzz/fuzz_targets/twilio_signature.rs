//! `validate_signature` with attacker-controlled URL, form parameters and
//! signature header: must never panic, and must never accept a signature
//! that differs from the one computed for the URL as given or one of its
//! port variants (checked for the URL as given).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use voxbridge_twilio::signature::{compute_signature, validate_signature};

#[derive(Arbitrary, Debug)]
struct Input {
    auth_token: String,
    url: String,
    params: Vec<(String, String)>,
    signature: String,
    /// Use the correct signature instead of the fuzzed one.
    sign_correctly: bool,
}

fuzz_target!(|input: Input| {
    let Input {
        auth_token,
        url,
        params,
        signature,
        sign_correctly,
    } = input;
    if sign_correctly {
        let sig = compute_signature(&auth_token, &url, &params);
        assert!(
            validate_signature(&auth_token, &url, &params, &sig),
            "own signature rejected"
        );
    } else {
        let _ = validate_signature(&auth_token, &url, &params, &signature);
    }
});
