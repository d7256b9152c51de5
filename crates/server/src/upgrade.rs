//! The server side of a WebSocket upgrade (RFC 6455 §4.2) under axum, handing the raw
//! connection to tokio-websockets.
//!
//! axum's `WebSocketUpgrade` wraps the connection in tokio-tungstenite, whose std-I/O
//! adapter registers two wakers and zero-fills a read buffer on every message; at 50
//! Twilio frames a second per call that was a visible share of the bridge's CPU
//! (docs/BENCHMARKS.md). This module does the same handshake checks and answers
//! `101 Switching Protocols` itself; errors are JSON like every other endpoint's.

use crate::app::ApiError;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use hyper_util::rt::TokioIo;
use tokio_websockets::{Limits, WebSocketStream};
use voxbridge_realtime::io::OneWrite;

/// The socket an accepted upgrade yields.
pub type ServerSocket = WebSocketStream<OneWrite<TokioIo<hyper::upgrade::Upgraded>>>;

/// A checked upgrade request, not yet answered.
pub struct Upgrade {
    accept: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

fn bad(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

/// Whether the comma-separated header `name` holds `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Check the handshake headers of `req` (RFC 6455 §4.2.1) and take its connection.
pub fn prepare(req: &mut Request) -> Result<Upgrade, ApiError> {
    let headers = req.headers();
    if !has_token(headers, header::CONNECTION, "upgrade")
        || !has_token(headers, header::UPGRADE, "websocket")
    {
        return Err(bad(
            "WEBSOCKET_REQUIRED",
            "this endpoint is a WebSocket: send Connection: Upgrade and Upgrade: websocket",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(bad("WEBSOCKET_VERSION", "Sec-WebSocket-Version must be 13"));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(HeaderValue::as_bytes)
        .filter(|k| {
            base64::engine::general_purpose::STANDARD
                .decode(k)
                .is_ok_and(|raw| raw.len() == 16)
        })
        .ok_or_else(|| {
            bad(
                "WEBSOCKET_KEY",
                "Sec-WebSocket-Key must be the base64 of 16 bytes",
            )
        })?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key);
    let accept = HeaderValue::from_str(&accept)
        .map_err(|_| bad("WEBSOCKET_KEY", "Sec-WebSocket-Key is not usable"))?;
    let on_upgrade = req
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                "NOT_UPGRADABLE",
                "this connection cannot be upgraded (HTTP/1.1 is required)",
            )
        })?;
    Ok(Upgrade { accept, on_upgrade })
}

impl Upgrade {
    /// Answer `101` and run `handle` on the socket once the client has it. Incoming
    /// messages longer than `max_message` bytes close the socket with 1009.
    pub fn on_upgrade<F, Fut>(self, max_message: usize, handle: F) -> Response
    where
        F: FnOnce(ServerSocket) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let socket = tokio_websockets::ServerBuilder::new()
                        .limits(Limits::default().max_payload_len(Some(max_message)))
                        .serve(OneWrite::new(TokioIo::new(upgraded)));
                    handle(socket).await;
                }
                Err(e) => tracing::debug!(error = %e, "WebSocket upgrade did not complete"),
            }
        });
        let mut response = Response::new(axum::body::Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = response.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::SEC_WEBSOCKET_ACCEPT, self.accept);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request {
        let mut b = axum::http::Request::builder().uri("/twilio/media");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(axum::body::Body::empty()).expect("request")
    }

    const GOOD: [(&str, &str); 4] = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    fn code(req: &mut Request) -> &'static str {
        match prepare(req) {
            Ok(_) => "ok",
            Err(e) => e.code,
        }
    }

    #[test]
    fn handshake_headers_are_checked() {
        // Everything right but no hyper connection behind the request (as under oneshot).
        assert_eq!(code(&mut request(&GOOD)), "NOT_UPGRADABLE");
        assert_eq!(code(&mut request(&GOOD[1..])), "WEBSOCKET_REQUIRED");
        let mut h = GOOD;
        h[2].1 = "8";
        assert_eq!(code(&mut request(&h)), "WEBSOCKET_VERSION");
        h = GOOD;
        h[3].1 = "c2hvcnQ="; // "short": 5 bytes
        assert_eq!(code(&mut request(&h)), "WEBSOCKET_KEY");
        assert_eq!(code(&mut request(&GOOD[..3])), "WEBSOCKET_KEY");
    }

    #[test]
    fn accept_key_is_the_rfc_example() {
        // RFC 6455 §1.3: this key gives "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(
            b"dGhlIHNhbXBsZSBub25jZQ==",
        );
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}
