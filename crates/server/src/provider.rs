//! The model side of a call, behind a trait: the call session only sees a [`ModelLink`] (a
//! socket of Realtime-shaped events) and a [`CallControl`], so a newer OpenAI voice API (or
//! another vendor) is added by implementing [`ModelProvider`], not by touching the session.

use std::sync::Arc;

use voxbridge_realtime::calls::{AcceptSession, CallsClient, CallsError};

use crate::session::{BoxFuture, CallControl, CallSettings, ModelFuture, ModelLink};
use crate::ws::{self, WsOut};

/// Why a SIP call could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum SipError {
    /// The call is gone (the caller hung up first): not an error for us.
    #[error("the call is gone")]
    Gone,
    #[error("{0}")]
    Failed(String),
}

impl From<CallsError> for SipError {
    fn from(e: CallsError) -> Self {
        if e.is_gone() {
            SipError::Gone
        } else {
            SipError::Failed(e.to_string())
        }
    }
}

/// An accepted SIP call: its control, and the opener of its control socket.
pub type AcceptedSip = (Arc<dyn CallControl>, ModelFuture);

/// A realtime voice model provider.
pub trait ModelProvider: Send + Sync {
    /// For logs.
    fn name(&self) -> &'static str;

    /// Open a session for a call whose audio flows through this server (Media Streams),
    /// configured with `settings` (the first `session.update` is sent by the opener).
    fn open_media_session(&self, settings: Arc<CallSettings>) -> ModelFuture;

    /// Take a call the carrier connected to the provider (SIP connector): accept it with the
    /// agent's session, returning the control of the call and the opener of its control
    /// socket (the session is already configured; nothing is sent first).
    fn accept_sip_call(
        &self,
        call_id: &str,
        settings: &CallSettings,
    ) -> BoxFuture<Result<AcceptedSip, SipError>>;

    /// Decline a SIP call with a SIP status (486 busy, 480 unavailable, …).
    fn reject_sip_call(&self, call_id: &str, status: u16) -> BoxFuture<Result<(), SipError>>;
}

/// The OpenAI Realtime API (GA): WebSocket sessions, and the Realtime Calls API with its
/// sideband socket for SIP connector calls.
pub struct OpenAiRealtime {
    /// `OPENAI_REALTIME_URL`.
    pub ws_base: String,
    pub api_key: String,
    /// Realtime Calls API client (`OPENAI_API_BASE`).
    pub calls: CallsClient,
}

impl OpenAiRealtime {
    pub fn new(ws_base: &str, rest_base: &str, api_key: &str) -> Result<Self, CallsError> {
        Ok(OpenAiRealtime {
            ws_base: ws_base.to_owned(),
            api_key: api_key.to_owned(),
            calls: CallsClient::new(rest_base, api_key)?,
        })
    }
}

impl ModelProvider for OpenAiRealtime {
    fn name(&self) -> &'static str {
        "openai-realtime"
    }

    fn open_media_session(&self, settings: Arc<CallSettings>) -> ModelFuture {
        let base = self.ws_base.clone();
        let key = self.api_key.clone();
        Box::pin(async move {
            let model = settings.session.model.clone();
            let socket = voxbridge_realtime::connect(&base, &model, &key)
                .await
                .map_err(|e| e.to_string())?;
            let mut link = ws::from_tws(socket);
            link.send(WsOut::Text(CallSettings::session_update(
                settings.initial_session(),
            )))
            .await
            .map_err(|e| e.to_string())?;
            Ok(ModelLink {
                link,
                session_update_sent: true,
            })
        })
    }

    fn accept_sip_call(
        &self,
        call_id: &str,
        settings: &CallSettings,
    ) -> BoxFuture<Result<AcceptedSip, SipError>> {
        let calls = self.calls.clone();
        let call_id = call_id.to_owned();
        let accept = AcceptSession::from_session(&settings.session);
        let base = self.ws_base.clone();
        let key = self.api_key.clone();
        Box::pin(async move {
            calls.accept(&call_id, &accept).await?;
            let control: Arc<dyn CallControl> = Arc::new(crate::control::SipControl {
                calls,
                call_id: call_id.clone(),
            });
            let opener: ModelFuture = Box::pin(async move {
                let socket = voxbridge_realtime::connect::connect_sideband(&base, &call_id, &key)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(ModelLink {
                    link: ws::from_tws(socket),
                    session_update_sent: true,
                })
            });
            Ok((control, opener))
        })
    }

    fn reject_sip_call(&self, call_id: &str, status: u16) -> BoxFuture<Result<(), SipError>> {
        let calls = self.calls.clone();
        let call_id = call_id.to_owned();
        Box::pin(async move {
            calls.reject(&call_id, Some(status)).await?;
            Ok(())
        })
    }
}
