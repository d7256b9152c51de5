//! Send one fixed `CreateCall` to a (fake) Twilio API base, for `conformance/check_create_call.py`
//! to compare with what the official `twilio` Python client sends for the same parameters.
//!
//! ```text
//! cargo run -q -p voxbridge-twilio --example capture_create_call -- http://127.0.0.1:PORT [url|twiml]
//! ```
//!
//! Variant `url` (default) uses `Url`; `twiml` sends inline `Twiml` instead. No retries, so the
//! capturing server sees exactly one request. Prints the returned call resource; exits 1 on error.

use std::process::ExitCode;

use voxbridge_twilio::rest::{Auth, CreateCall, RetryPolicy, TwilioClient};

const ACCOUNT_SID: &str = "AC00000000000000000000000000000000";
const AUTH_TOKEN: &str = "secret";
const TWIML: &str = r#"<Response><Connect><Stream url="wss://voice.example.com/twilio/media"><Parameter name="call_id" value="abc &amp; def"/></Stream></Connect></Response>"#;

fn request(variant: &str) -> Option<CreateCall> {
    let mut req = CreateCall {
        to: "+14155550100".into(),
        from: "+14155550199".into(),
        url: Some("https://voice.example.com/twilio/voice?call_id=abc".into()),
        twiml: None,
        method: None,
        status_callback: Some("https://voice.example.com/twilio/status?call_id=abc".into()),
        status_callback_events: ["initiated", "ringing", "answered", "completed"]
            .map(String::from)
            .to_vec(),
        status_callback_method: Some("POST".into()),
        timeout_s: Some(30),
        time_limit_s: Some(600),
        machine_detection: Some("Enable".into()),
        async_amd: Some(true),
        async_amd_status_callback: Some("https://voice.example.com/twilio/amd?call_id=abc".into()),
        record: true,
        recording_channels: Some("dual".into()),
        recording_status_callback: Some(
            "https://voice.example.com/twilio/recording?call_id=abc".into(),
        ),
        recording_status_callback_events: vec!["in-progress".into(), "completed".into()],
    };
    match variant {
        "url" => {}
        "twiml" => {
            req.url = None;
            req.twiml = Some(TWIML.into());
        }
        _ => return None,
    }
    Some(req)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(base), variant) = (args.next(), args.next()) else {
        eprintln!("usage: capture_create_call BASE_URL [url|twiml]");
        return ExitCode::from(2);
    };
    let variant = variant.unwrap_or_else(|| "url".to_owned());
    let Some(req) = request(&variant) else {
        eprintln!("unknown variant {variant:?} (url | twiml)");
        return ExitCode::from(2);
    };
    let client = match TwilioClient::new(
        &base,
        ACCOUNT_SID,
        Auth::AccountToken {
            auth_token: AUTH_TOKEN.into(),
        },
    ) {
        Ok(c) => c.with_retry(RetryPolicy::none()),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match client.create_call(&req).await {
        Ok(call) => {
            println!("{call:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("create_call failed [{}]: {e}", e.code());
            ExitCode::FAILURE
        }
    }
}
