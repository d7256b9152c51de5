//! TwiML for a bidirectional Media Stream:
//! `<Response>[<Say>..</Say>]<Connect><Stream url=..><Parameter name= value=/>..</Stream></Connect></Response>`.
//!
//! Structurally identical to what twilio-python's `VoiceResponse`/`Connect`/`Stream`/`Parameter`
//! render (checked by `conformance/check_twilio.py`).

use std::fmt::Write as _;

/// Why a `<Stream url>` would be refused by Twilio.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TwimlError {
    /// Not an absolute URL at all.
    #[error("stream url is not a valid absolute URL: {0}")]
    InvalidUrl(String),
    /// Twilio error 31922: `wss` is the only supported scheme.
    #[error("stream url must use the wss:// scheme, got {0}:// (Twilio error 31922)")]
    NotWss(String),
    /// Twilio error 31920: `<Stream>` does not support query strings; use `<Parameter>`.
    #[error(
        "stream url must not carry a query string; pass values as <Parameter> (Twilio error 31920)"
    )]
    QueryString,
    /// A fragment is never sent to the server and is not accepted either.
    #[error("stream url must not carry a fragment")]
    Fragment,
}

/// Check that `url` is acceptable as `<Stream url>`: absolute `wss://` URL with a
/// host, no query string (not even an empty `?`) and no fragment.
pub fn validate_stream_url(url: &str) -> Result<(), TwimlError> {
    // The WHATWG parser behind `url` forgives things Twilio may not (whitespace,
    // backslashes, `wss:///host`): refuse them on the raw string first.
    if url
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
    {
        return Err(TwimlError::InvalidUrl(
            "contains whitespace, a control character or a backslash".to_owned(),
        ));
    }
    if let Some((_, rest)) = url.split_once("://")
        && (rest.is_empty() || rest.starts_with('/'))
    {
        return Err(TwimlError::InvalidUrl("missing host".to_owned()));
    }
    let parsed = url::Url::parse(url).map_err(|e| TwimlError::InvalidUrl(e.to_string()))?;
    if parsed.scheme() != "wss" {
        return Err(TwimlError::NotWss(parsed.scheme().to_owned()));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(TwimlError::InvalidUrl("missing host".to_owned()));
    }
    if parsed.query().is_some() {
        return Err(TwimlError::QueryString);
    }
    if parsed.fragment().is_some() {
        return Err(TwimlError::Fragment);
    }
    Ok(())
}

/// `<Response>[<Say>..</Say>]<Connect><Stream url=..><Parameter name= value=/>..</Stream></Connect></Response>`
#[derive(Clone, Debug, Default)]
pub struct ConnectStream {
    /// `wss://` URL without a query string.
    pub url: String,
    /// `<Parameter>`s, delivered in `start.customParameters`.
    pub parameters: Vec<(String, String)>,
    /// Optional `<Say>` spoken before the stream connects.
    pub say: Option<String>,
    /// Optional `statusCallback` attribute of `<Stream>`.
    pub status_callback: Option<String>,
}

impl ConnectStream {
    /// Render the TwiML document (with the XML declaration). Does not validate
    /// the URL: call [`validate_stream_url`] when the URL comes from configuration.
    pub fn to_xml(&self) -> String {
        let mut out = String::with_capacity(256);
        out.push_str(r#"<?xml version="1.0" encoding="UTF-8"?><Response>"#);
        if let Some(say) = &self.say {
            out.push_str("<Say>");
            escape_into(&mut out, say, false);
            out.push_str("</Say>");
        }
        out.push_str("<Connect><Stream url=\"");
        escape_into(&mut out, &self.url, true);
        out.push('"');
        if let Some(cb) = &self.status_callback {
            out.push_str(" statusCallback=\"");
            escape_into(&mut out, cb, true);
            out.push('"');
        }
        if self.parameters.is_empty() {
            out.push_str(" />");
        } else {
            out.push('>');
            for (name, value) in &self.parameters {
                out.push_str("<Parameter name=\"");
                escape_into(&mut out, name, true);
                out.push_str("\" value=\"");
                escape_into(&mut out, value, true);
                out.push_str("\" />");
            }
            out.push_str("</Stream>");
        }
        out.push_str("</Connect></Response>");
        out
    }
}

/// Where a `<Dial>` connects the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DialTarget {
    /// `<Number>`: an E.164 number.
    Number(String),
    /// `<Sip>`: a `sip:` URI.
    Sip(String),
    /// `<Conference>`: a named conference room (warm transfer).
    Conference {
        name: String,
        /// `startConferenceOnEnter`
        start_on_enter: bool,
        /// `endConferenceOnExit`
        end_on_exit: bool,
    },
}

/// `<Response>[<Say>..</Say>]<Dial ..><Number|Sip|Conference>..</..></Dial></Response>`: what a
/// live call is updated to when the agent transfers it to a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dial {
    /// Spoken to the caller before dialing (Twilio's voice), if any.
    pub say: Option<String>,
    /// `callerId`: the number the dialed party sees.
    pub caller_id: Option<String>,
    /// `timeout`: seconds to let the dialed party ring.
    pub timeout_s: Option<u32>,
    pub target: DialTarget,
}

impl Dial {
    /// Render the TwiML document (with the XML declaration).
    pub fn to_xml(&self) -> String {
        let mut out = String::with_capacity(256);
        out.push_str(r#"<?xml version="1.0" encoding="UTF-8"?><Response>"#);
        if let Some(say) = &self.say {
            out.push_str("<Say>");
            escape_into(&mut out, say, false);
            out.push_str("</Say>");
        }
        out.push_str("<Dial");
        if let Some(c) = &self.caller_id {
            out.push_str(" callerId=\"");
            escape_into(&mut out, c, true);
            out.push('"');
        }
        if let Some(t) = self.timeout_s {
            let _ = write!(out, " timeout=\"{t}\"");
        }
        out.push('>');
        match &self.target {
            DialTarget::Number(n) => {
                out.push_str("<Number>");
                escape_into(&mut out, n, false);
                out.push_str("</Number>");
            }
            DialTarget::Sip(u) => {
                out.push_str("<Sip>");
                escape_into(&mut out, u, false);
                out.push_str("</Sip>");
            }
            DialTarget::Conference {
                name,
                start_on_enter,
                end_on_exit,
            } => {
                let _ = write!(
                    out,
                    "<Conference startConferenceOnEnter=\"{start_on_enter}\" endConferenceOnExit=\"{end_on_exit}\">"
                );
                escape_into(&mut out, name, false);
                out.push_str("</Conference>");
            }
        }
        out.push_str("</Dial></Response>");
        out
    }
}

/// Escape `s` for XML 1.0 text or a double-quoted attribute value.
///
/// `& < > " '` become entities. In attributes, TAB/LF/CR become character
/// references so a parser returns them unchanged (instead of normalising them
/// to spaces). Characters XML 1.0 cannot represent at all (other C0 controls,
/// U+FFFE, U+FFFF) are dropped.
fn escape_into(out: &mut String, s: &str, attribute: bool) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' if attribute => {
                let _ = write!(out, "&#{};", u32::from(c));
            }
            '\t' | '\n' | '\r' => out.push(c),
            '\u{0}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => {}
            _ => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_stream() {
        let cs = ConnectStream {
            url: "wss://voice.example.com/media-stream".into(),
            ..Default::default()
        };
        assert_eq!(
            cs.to_xml(),
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://voice.example.com/media-stream" /></Connect></Response>"#
        );
    }

    #[test]
    fn conformance_doc_example_with_escaping() {
        // CONFORMANCE.md §1.2 (twilio 9.13.0 output, attribute order aside)
        let cs = ConnectStream {
            url: "wss://voice.example.com/media-stream".into(),
            parameters: vec![
                ("tenant".into(), "acme & co".into()),
                ("callerNumber".into(), "+14158675310".into()),
            ],
            say: None,
            status_callback: Some("https://voice.example.com/stream-status".into()),
        };
        assert_eq!(
            cs.to_xml(),
            concat!(
                r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect>"#,
                r#"<Stream url="wss://voice.example.com/media-stream" statusCallback="https://voice.example.com/stream-status">"#,
                r#"<Parameter name="tenant" value="acme &amp; co" />"#,
                r#"<Parameter name="callerNumber" value="+14158675310" />"#,
                r#"</Stream></Connect></Response>"#
            )
        );
    }

    #[test]
    fn say_and_all_special_characters() {
        let cs = ConnectStream {
            url: "wss://h/m".into(),
            parameters: vec![("q\"'<>&".into(), "a\"b'c<d>e&f\ng\th".into())],
            say: Some("Tom & Jerry's <\"show\">".into()),
            status_callback: None,
        };
        let xml = cs.to_xml();
        assert!(xml.contains("<Say>Tom &amp; Jerry&apos;s &lt;&quot;show&quot;&gt;</Say>"));
        assert!(xml.contains(
            r#"<Parameter name="q&quot;&apos;&lt;&gt;&amp;" value="a&quot;b&apos;c&lt;d&gt;e&amp;f&#10;g&#9;h" />"#
        ));
        assert!(xml.starts_with(r#"<?xml version="1.0" encoding="UTF-8"?><Response><Say>"#));
        assert!(xml.ends_with("</Stream></Connect></Response>"));
    }

    #[test]
    fn invalid_xml_chars_dropped() {
        let cs = ConnectStream {
            url: "wss://h/m".into(),
            say: Some("a\u{0}b\u{1b}c\u{fffe}d\ne".into()),
            ..Default::default()
        };
        assert!(cs.to_xml().contains("<Say>abcd\ne</Say>"));
    }

    #[test]
    fn stream_url_validation() {
        assert_eq!(
            validate_stream_url("wss://voice.example.com/media-stream"),
            Ok(())
        );
        assert_eq!(
            validate_stream_url("WSS://voice.example.com:8443/m"),
            Ok(())
        );
        assert_eq!(
            validate_stream_url("ws://voice.example.com/m"),
            Err(TwimlError::NotWss("ws".into()))
        );
        assert_eq!(
            validate_stream_url("https://voice.example.com/m"),
            Err(TwimlError::NotWss("https".into()))
        );
        assert_eq!(
            validate_stream_url("wss://voice.example.com/m?tenant=acme"),
            Err(TwimlError::QueryString)
        );
        assert_eq!(
            validate_stream_url("wss://voice.example.com/m?"),
            Err(TwimlError::QueryString)
        );
        assert_eq!(
            validate_stream_url("wss://voice.example.com/m#x"),
            Err(TwimlError::Fragment)
        );
        for bad in [
            "",
            "voice.example.com/m",
            "wss://",
            "wss:///m",
            "wss:\\\\h\\m",
            " wss://h/m",
            "wss://h/m\n",
            "wss://h/a b",
            "not a url",
        ] {
            assert!(
                matches!(
                    validate_stream_url(bad),
                    Err(TwimlError::InvalidUrl(_) | TwimlError::NotWss(_))
                ),
                "{bad:?}"
            );
        }
        // the error message names the Twilio error code
        assert!(
            TwimlError::QueryString.to_string().contains("31920")
                && TwimlError::NotWss("ws".into())
                    .to_string()
                    .contains("31922")
        );
    }

    #[test]
    fn dial_documents() {
        let d = Dial {
            say: Some("Connecting you to a person & more".into()),
            caller_id: Some("+14155550100".into()),
            timeout_s: Some(20),
            target: DialTarget::Number("+14155550123".into()),
        };
        assert_eq!(
            d.to_xml(),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Say>Connecting you to a person &amp; more</Say>\
             <Dial callerId=\"+14155550100\" timeout=\"20\"><Number>+14155550123</Number></Dial></Response>"
        );
        let c = Dial {
            say: None,
            caller_id: None,
            timeout_s: None,
            target: DialTarget::Conference {
                name: "vb-1".into(),
                start_on_enter: true,
                end_on_exit: false,
            },
        };
        assert!(c.to_xml().contains(
            "<Dial><Conference startConferenceOnEnter=\"true\" endConferenceOnExit=\"false\">vb-1</Conference></Dial>"
        ));
        let s = Dial {
            target: DialTarget::Sip("sip:desk@example.com".into()),
            ..c
        };
        assert!(s.to_xml().contains("<Sip>sip:desk@example.com</Sip>"));
    }
}
