//! Opening the Realtime WebSocket.

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The socket type returned by [`connect`].
pub type RealtimeSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why the model socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid Realtime URL {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("invalid API key header value")]
    ApiKey,
    #[error("WebSocket handshake with {url} failed: {source}")]
    Handshake {
        url: String,
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
}

/// `{base}?model={model}` (or `&model=` when the base has a query).
pub fn realtime_url(base: &str, model: &str) -> Result<url::Url, ConnectError> {
    let mut url = ws_base(base)?;
    url.query_pairs_mut().append_pair("model", model);
    Ok(url)
}

/// `{base}?call_id={call_id}` (or `&call_id=`): the sideband socket of a
/// SIP call accepted through the Calls API. No `model`: it was set at accept.
pub fn sideband_url(base: &str, call_id: &str) -> Result<url::Url, ConnectError> {
    if call_id.is_empty()
        || !call_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ConnectError::Url {
            url: base.to_owned(),
            reason: format!("call id {call_id:?} is not [A-Za-z0-9_-]+"),
        });
    }
    let mut url = ws_base(base)?;
    url.query_pairs_mut().append_pair("call_id", call_id);
    Ok(url)
}

fn ws_base(base: &str) -> Result<url::Url, ConnectError> {
    let url = url::Url::parse(base).map_err(|e| ConnectError::Url {
        url: base.to_owned(),
        reason: e.to_string(),
    })?;
    if !matches!(url.scheme(), "ws" | "wss") {
        return Err(ConnectError::Url {
            url: base.to_owned(),
            reason: "scheme must be ws or wss".into(),
        });
    }
    Ok(url)
}

/// Open the GA Realtime socket: `Authorization: Bearer <key>` and no
/// `OpenAI-Beta` header (the beta shape is retired; the header alone makes
/// the server close the socket).
pub async fn connect(
    base: &str,
    model: &str,
    api_key: &str,
) -> Result<RealtimeSocket, ConnectError> {
    open(realtime_url(base, model)?, api_key).await
}

/// Attach to the sideband socket of an accepted SIP call
/// (`wss://api.openai.com/v1/realtime?call_id=…`), with the same
/// authentication as [`connect`]. The socket carries events only (no audio:
/// that flows over SIP), e.g. `response.create` for the greeting, function
/// calls, transcripts and `input_audio_buffer.dtmf_event_received`.
pub async fn connect_sideband(
    base: &str,
    call_id: &str,
    api_key: &str,
) -> Result<RealtimeSocket, ConnectError> {
    open(sideband_url(base, call_id)?, api_key).await
}

async fn open(url: url::Url, api_key: &str) -> Result<RealtimeSocket, ConnectError> {
    let url_str = url.to_string();
    let mut request = url_str
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectError::Url {
            url: url_str.clone(),
            reason: e.to_string(),
        })?;
    let mut auth =
        HeaderValue::from_str(&format!("Bearer {api_key}")).map_err(|_| ConnectError::ApiKey)?;
    auth.set_sensitive(true);
    request.headers_mut().insert("Authorization", auth);
    // The read buffer is reserved and zero-filled up front (128 KiB by
    // default); audio deltas are a few KiB and the buffer grows when needed.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20))
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024);
    let (socket, _response) =
        tokio_tungstenite::connect_async_with_config(request, Some(config), true)
            .await
            .map_err(|e| ConnectError::Handshake {
                url: url_str,
                source: Box::new(e),
            })?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_carries_the_model() {
        let u = realtime_url("wss://api.openai.com/v1/realtime", "gpt-realtime-2.1").expect("url");
        assert_eq!(
            u.as_str(),
            "wss://api.openai.com/v1/realtime?model=gpt-realtime-2.1"
        );
        assert!(realtime_url("https://api.openai.com/v1/realtime", "m").is_err());
        assert!(realtime_url("not a url", "m").is_err());
    }

    #[test]
    fn sideband_url_carries_the_call_id() {
        let u = sideband_url("wss://api.openai.com/v1/realtime", "rtc_u1_9c65").expect("url");
        assert_eq!(
            u.as_str(),
            "wss://api.openai.com/v1/realtime?call_id=rtc_u1_9c65"
        );
        let u = sideband_url("ws://127.0.0.1:9/v1/realtime?x=1", "rtc_1").expect("url");
        assert_eq!(u.as_str(), "ws://127.0.0.1:9/v1/realtime?x=1&call_id=rtc_1");
        assert!(sideband_url("https://api.openai.com/v1/realtime", "rtc_1").is_err());
        assert!(sideband_url("wss://api.openai.com/v1/realtime", "").is_err());
        assert!(sideband_url("wss://api.openai.com/v1/realtime", "a&model=x").is_err());
    }
}
