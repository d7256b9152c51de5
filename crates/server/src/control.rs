//! Call control for the tools, one implementation per transport:
//!
//! - Media Streams calls are controlled through Twilio's REST API: a transfer updates the live
//!   call with new TwiML (`<Dial><Number>`/`<Sip>` for a cold transfer; for a warm one the
//!   caller is moved into a conference and the person is dialed in as a participant), which
//!   also ends the media stream; a hang-up sets `Status=completed`.
//! - SIP connector calls are controlled through the Realtime Calls API: `/refer` hands the
//!   SIP leg to the person, `/hangup` ends it.

use std::sync::Arc;

use voxbridge_realtime::calls::CallsClient;
use voxbridge_twilio::rest::{TwilioClient, TwilioError, UpdateCall};
use voxbridge_twilio::twiml::{Dial, DialTarget};

use crate::session::{BoxFuture, CallControl};
use crate::tools::TransferTarget;

/// Twilio REST control of one Media Streams call.
pub struct TwilioControl {
    pub client: TwilioClient,
    /// The caller's call (Twilio's `CallSid`).
    pub call_sid: String,
    /// Caller id shown to the person a call is transferred to.
    pub caller_id: Option<String>,
    /// Our call id, to name the conference of a warm transfer.
    pub call_id: String,
}

impl TwilioControl {
    pub fn new(
        client: TwilioClient,
        call_sid: String,
        caller_id: Option<String>,
        call_id: String,
    ) -> Arc<Self> {
        Arc::new(TwilioControl {
            client,
            call_sid,
            caller_id,
            call_id,
        })
    }
}

/// `sip:`/`sips:` URIs go in `<Sip>`, anything else in `<Number>`.
fn dial_target(to: &str) -> DialTarget {
    if to.starts_with("sip:") || to.starts_with("sips:") {
        DialTarget::Sip(to.to_owned())
    } else {
        DialTarget::Number(to.to_owned())
    }
}

/// A conference name Twilio accepts in a URL path (letters and digits).
pub fn conference_name(call_id: &str) -> String {
    let id: String = call_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    format!("vb{id}")
}

impl CallControl for TwilioControl {
    fn transfer(&self, target: TransferTarget) -> BoxFuture<Result<String, String>> {
        let client = self.client.clone();
        let call_sid = self.call_sid.clone();
        let caller_id = self.caller_id.clone();
        let conference = conference_name(&self.call_id);
        Box::pin(async move {
            if !target.warm {
                let twiml = Dial {
                    say: None,
                    caller_id,
                    timeout_s: Some(30),
                    target: dial_target(&target.to),
                }
                .to_xml();
                let req = UpdateCall {
                    twiml: Some(twiml),
                    ..UpdateCall::default()
                };
                client
                    .update_call(&call_sid, &req)
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(format!("dialing {}", target.to));
            }
            // Warm: the caller waits in a conference (which ends when the caller leaves), the
            // person is dialed in and joins it on answering.
            let from =
                caller_id.ok_or("a warm transfer needs a caller id (TWILIO_PHONE_NUMBER)")?;
            let twiml = Dial {
                say: None,
                caller_id: None,
                timeout_s: None,
                target: DialTarget::Conference {
                    name: conference.clone(),
                    start_on_enter: true,
                    end_on_exit: true,
                },
            }
            .to_xml();
            let req = UpdateCall {
                twiml: Some(twiml),
                ..UpdateCall::default()
            };
            client
                .update_call(&call_sid, &req)
                .await
                .map_err(|e| e.to_string())?;
            client
                .add_participant(&conference, &from, &target.to, false, None)
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!("conference {conference} with {}", target.to))
        })
    }

    fn hangup(&self) -> BoxFuture<Result<(), String>> {
        let client = self.client.clone();
        let call_sid = self.call_sid.clone();
        Box::pin(async move {
            match client.hangup(&call_sid).await {
                Ok(_) => Ok(()),
                // Already over (the stream's end finished it first).
                Err(TwilioError::Api { status: 404, .. }) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

/// Realtime Calls API control of one SIP connector call.
pub struct SipControl {
    pub calls: CallsClient,
    pub call_id: String,
}

/// A transfer target as a SIP REFER target: `sip:` URIs as they are, numbers as `tel:`.
pub fn refer_uri(to: &str) -> String {
    if to.starts_with("sip:") || to.starts_with("sips:") || to.starts_with("tel:") {
        to.to_owned()
    } else {
        format!("tel:{to}")
    }
}

impl CallControl for SipControl {
    fn transfer(&self, target: TransferTarget) -> BoxFuture<Result<String, String>> {
        let calls = self.calls.clone();
        let call_id = self.call_id.clone();
        Box::pin(async move {
            let uri = refer_uri(&target.to);
            calls
                .refer(&call_id, &uri)
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!("referred to {uri}"))
        })
    }

    fn hangup(&self) -> BoxFuture<Result<(), String>> {
        let calls = self.calls.clone();
        let call_id = self.call_id.clone();
        Box::pin(async move {
            match calls.hangup(&call_id).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_gone() => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(refer_uri("+14155550100"), "tel:+14155550100");
        assert_eq!(refer_uri("sip:desk@example.com"), "sip:desk@example.com");
        assert!(matches!(dial_target("sip:a@b"), DialTarget::Sip(_)));
        assert!(matches!(dial_target("+1415"), DialTarget::Number(_)));
        assert_eq!(conference_name("0193-abcd-ef"), "vb0193abcdef".to_string());
    }
}
