//! Opening the Realtime WebSocket.

use crate::io::OneWrite;
use std::sync::OnceLock;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri, header};
use tokio_websockets::{ClientBuilder, Connector, Limits, MaybeTlsStream, WebSocketStream};

/// The socket type returned by [`connect`]: tokio-websockets (async-native framing, no
/// std-I/O adapter, no zero-filled read buffer: the model socket carries ~50 audio
/// messages a second per call), each write gathered into one `send` by [`OneWrite`].
pub type RealtimeSocket = WebSocketStream<OneWrite<MaybeTlsStream<TcpStream>>>;

/// Largest message accepted from the model (a long audio delta is a few hundred KiB).
const MAX_MESSAGE: usize = 16 << 20;

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
        source: Box<tokio_websockets::Error>,
    },
    #[error("TLS set-up for {url} failed: {reason}")]
    Tls { url: String, reason: String },
}

/// One TLS connector (webpki roots, the process's rustls provider) for every `wss://`
/// socket: building the root store per call would repeat the same work.
fn tls_connector() -> Result<&'static Connector, String> {
    static CONNECTOR: OnceLock<Result<Connector, String>> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| Connector::new().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)
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
    let uri: Uri =
        url_str
            .parse()
            .map_err(|e: tokio_tungstenite::tungstenite::http::uri::InvalidUri| {
                ConnectError::Url {
                    url: url_str.clone(),
                    reason: e.to_string(),
                }
            })?;
    let mut auth =
        HeaderValue::from_str(&format!("Bearer {api_key}")).map_err(|_| ConnectError::ApiKey)?;
    auth.set_sensitive(true);
    let handshake = |e: tokio_websockets::Error| ConnectError::Handshake {
        url: url_str.clone(),
        source: Box::new(e),
    };
    let builder = ClientBuilder::from_uri(uri)
        .add_header(header::AUTHORIZATION, auth)
        .map_err(handshake)?
        .limits(Limits::default().max_payload_len(Some(MAX_MESSAGE)));
    // Our own TCP connection, for TCP_NODELAY: the library's leaves Nagle on, which
    // holds each small audio append until the previous one is acknowledged.
    let host = url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_or_known_default().unwrap_or(443);
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| handshake(e.into()))?;
    tcp.set_nodelay(true).map_err(|e| handshake(e.into()))?;
    let connector = if url.scheme() == "wss" {
        tls_connector().map_err(|reason| ConnectError::Tls {
            url: url_str.clone(),
            reason,
        })?
    } else {
        &Connector::Plain
    };
    let stream = connector.wrap(host, tcp).await.map_err(handshake)?;
    let (socket, _response) = builder
        .connect_on(OneWrite::new(stream))
        .await
        .map_err(handshake)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The model socket carries one small message per 20 ms frame: Nagle's algorithm
    /// would hold each until the previous one is acknowledged (a loaded run showed
    /// uplink p99 25 ms with it on).
    #[tokio::test]
    async fn model_socket_has_nagle_off_and_sends_the_key() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let (request, _ws) = tokio_websockets::ServerBuilder::new()
                .accept(tcp)
                .await
                .expect("handshake");
            request
        });
        let socket = connect(&format!("ws://{addr}/v1/realtime"), "gpt-x", "sk-test")
            .await
            .expect("connect");
        match socket.get_ref().get_ref() {
            MaybeTlsStream::Plain(tcp) => assert!(tcp.nodelay().expect("nodelay")),
            _ => panic!("a ws:// URL gives a plain socket"),
        }
        let request = server.await.expect("server task");
        assert_eq!(request.uri().to_string(), "/v1/realtime?model=gpt-x");
        assert_eq!(
            request.headers().get("authorization").map(|v| v.as_bytes()),
            Some(&b"Bearer sk-test"[..])
        );
        assert!(request.headers().get("openai-beta").is_none());
    }

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
