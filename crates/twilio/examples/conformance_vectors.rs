//! Print signature and TwiML vectors computed by OUR code as one JSON document,
//! for `conformance/check_twilio.py` to verify with the official `twilio` package.
//!
//! ```text
//! cargo run -q -p voxbridge-twilio --example conformance_vectors > target/conformance/twilio_vectors.json
//! .venv/bin/python conformance/check_twilio.py target/conformance/twilio_vectors.json
//! ```

use serde_json::{Value, json};
use voxbridge_twilio::signature::{body_sha256_hex, compute_signature};
use voxbridge_twilio::twiml::{ConnectStream, Dial, DialTarget};

const TOKEN: &str = "12345";

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn signature_vector(token: &str, url: &str, params: &[(&str, &str)]) -> Value {
    let params = pairs(params);
    let signature = compute_signature(token, url, &params);
    json!({ "token": token, "url": url, "params": params, "signature": signature })
}

fn json_body_vector(token: &str, base_url: &str, body: &str) -> Value {
    let sep = if base_url.contains('?') { '&' } else { '?' };
    let url = format!(
        "{base_url}{sep}bodySHA256={}",
        body_sha256_hex(body.as_bytes())
    );
    let signature = compute_signature(token, &url, &[]);
    json!({ "token": token, "url": url, "body": body, "signature": signature })
}

fn twiml_vector(cs: &ConnectStream) -> Value {
    json!({
        "input": {
            "url": cs.url,
            "parameters": cs.parameters,
            "say": cs.say,
            "status_callback": cs.status_callback,
        },
        "xml": cs.to_xml(),
    })
}

fn dial_vector(d: &Dial) -> Value {
    let (kind, to, start, end) = match &d.target {
        DialTarget::Number(n) => ("number", n.clone(), None, None),
        DialTarget::Sip(u) => ("sip", u.clone(), None, None),
        DialTarget::Conference {
            name,
            start_on_enter,
            end_on_exit,
        } => (
            "conference",
            name.clone(),
            Some(*start_on_enter),
            Some(*end_on_exit),
        ),
    };
    json!({
        "input": {
            "say": d.say,
            "caller_id": d.caller_id,
            "timeout": d.timeout_s,
            "kind": kind,
            "to": to,
            "start_conference_on_enter": start,
            "end_conference_on_exit": end,
        },
        "xml": d.to_xml(),
    })
}

fn main() {
    let voice = [
        ("CallSid", "CA1234567890ABCDE"),
        ("AccountSid", "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"),
        ("From", "+14158675310"),
        ("To", "+18005551212"),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
    ];
    let signatures = vec![
        // the voice webhook of CONFORMANCE.md §1.1 (expected GIQlbxgBLJTNa/xMWTWI365XBXM=)
        signature_vector(
            TOKEN,
            "https://example.com/twilio/voice?tenant=acme",
            &voice,
        ),
        // query string + explicit default port
        signature_vector(
            TOKEN,
            "https://example.com:443/twilio/voice?tenant=acme&lang=en",
            &voice,
        ),
        // non-default port, plain http
        signature_vector(
            "another-auth-token",
            "http://127.0.0.1:8080/twilio/voice?x=1",
            &voice,
        ),
        // unicode keys and values, repeated keys (incl. a repeated identical value)
        signature_vector(
            TOKEN,
            "https://example.com/twilio/status?tenant=caf%C3%A9",
            &[
                ("Body", "héllo wörld ✓ 😀"),
                ("StatusCallbackEvent", "ringing"),
                ("StatusCallbackEvent", "answered"),
                ("StatusCallbackEvent", "completed"),
                ("StatusCallbackEvent", "answered"),
                ("Ünïcode", "日本語"),
                ("A", "z"),
                ("a", "Z"),
                ("Empty", ""),
            ],
        ),
        // Media Streams WebSocket upgrade: wss URL, no params (expected n2Kygn8Vr09ZrsTai2J2SLE/CLY=)
        signature_vector(TOKEN, "wss://voice.example.com/media-stream", &[]),
        // unicode auth token
        signature_vector("tökén ✓", "https://example.com/x", &[("K", "v")]),
    ];

    let json_bodies = vec![
        json_body_vector(
            TOKEN,
            "https://example.com/twilio/json",
            r#"{"CallSid":"CA1234567890ABCDE","event":"test"}"#,
        ),
        json_body_vector(
            TOKEN,
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            r#"{"property": "value", "boolean": true}"#,
        ),
        json_body_vector(
            TOKEN,
            "https://example.com/events",
            r#"{"greeting":"héllo ✓","nested":{"n":[1,2,3]}}"#,
        ),
    ];

    let url = "wss://voice.example.com/media-stream".to_owned();
    let twiml = vec![
        twiml_vector(&ConnectStream {
            url: url.clone(),
            parameters: pairs(&[("tenant", "acme & co"), ("callerNumber", "+14158675310")]),
            say: None,
            status_callback: Some("https://voice.example.com/stream-status?a=1&b=2".into()),
        }),
        twiml_vector(&ConnectStream {
            url: url.clone(),
            parameters: pairs(&[
                ("quote", r#"say "hi" & it's <fine>"#),
                ("direction", "outbound"),
                ("unicode", "café ✓ 日本語"),
                ("multiline", "line1\nline2\ttabbed\r\nend"),
            ]),
            say: Some("This call may be recorded & it's <monitored> by \"Acme\".".into()),
            status_callback: None,
        }),
        twiml_vector(&ConnectStream {
            url,
            parameters: vec![],
            say: Some("Hello.".into()),
            status_callback: None,
        }),
    ];

    // What a transfer updates a live call to.
    let dial = vec![
        dial_vector(&Dial {
            say: None,
            caller_id: Some("+14155550199".into()),
            timeout_s: Some(30),
            target: DialTarget::Number("+14155550177".into()),
        }),
        dial_vector(&Dial {
            say: Some("Connecting you to a colleague at \"Acme\" & co.".into()),
            caller_id: None,
            timeout_s: None,
            target: DialTarget::Sip("sip:desk@example.com;transport=tls".into()),
        }),
        dial_vector(&Dial {
            say: None,
            caller_id: None,
            timeout_s: None,
            target: DialTarget::Conference {
                name: "vb0193abcdef".into(),
                start_on_enter: true,
                end_on_exit: true,
            },
        }),
    ];

    let doc = json!({
        "signatures": signatures,
        "json_bodies": json_bodies,
        "twiml": twiml,
        "dial": dial,
    });
    match serde_json::to_string_pretty(&doc) {
        Ok(s) => println!("{s}"),
        Err(e) => {
            eprintln!("conformance_vectors: {e}");
            std::process::exit(1);
        }
    }
}
