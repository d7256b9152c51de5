//! TwiML documents as Twilio reads them, for the emulated calls of
//! [`crate::twilio_api`]: a strict XML reader, and the verbs the emulator
//! executes after a call update (`Twiml=` / `Url=`), a `<Redirect>` or a
//! `<Dial action>` response.
//!
//! What is understood:
//!
//! * `<Say>` (text, `loop`), `<Pause length>`, `<Hangup/>`, `<Reject/>`,
//!   `<Redirect method>url</Redirect>`;
//! * `<Dial>` with `action`, `method`, `callerId`, `timeout` (default 30 s),
//!   `timeLimit`, and either a bare number as its text or the nouns
//!   `<Number>`, `<Sip>` (each with `statusCallback`, `statusCallbackEvent`,
//!   `statusCallbackMethod`) or one `<Conference>` (`startConferenceOnEnter`,
//!   `endConferenceOnExit`, `muted`, `beep`, `participantLabel`; `waitUrl` and
//!   the conference callbacks are accepted and ignored);
//! * `<Connect><Stream url>` with its `<Parameter>`s.
//!
//! Any other verb (`<Play>`, `<Gather>`, `<Record>`, `<Enqueue>`, …) is kept as
//! [`Verb::Other`] and skipped by the emulator with a warning.
//!
//! A document that is not well-formed XML, or whose root is not `<Response>`,
//! is Twilio's error 12100 ("Document parse failure"): [`parse`] returns a
//! [`TwimlError`] and never panics, whatever the input. Attribute values
//! Twilio would warn about (a `timeout` that is not a number, …) fall back to
//! their defaults and are listed in [`Document::warnings`].

use std::fmt;

/// Twilio's "Document parse failure".
pub const DOCUMENT_PARSE_FAILURE: u32 = 12100;
/// Twilio's default `<Dial timeout>`, seconds.
pub const DEFAULT_DIAL_TIMEOUT_SECS: u64 = 30;
/// Deepest element nesting accepted (deeper documents are refused, not recursed into).
const MAX_DEPTH: usize = 64;

/// Why a document cannot be executed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwimlError {
    /// Twilio error code (12100).
    pub code: u32,
    pub message: String,
}

impl fmt::Display for TwimlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Twilio error {}: {}", self.code, self.message)
    }
}

impl std::error::Error for TwimlError {}

fn parse_failure(message: impl Into<String>) -> TwimlError {
    TwimlError {
        code: DOCUMENT_PARSE_FAILURE,
        message: format!("Document parse failure: {}", message.into()),
    }
}

// ---------------------------------------------------------------------------
// XML

/// An XML element: name, attributes in document order, children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
}

/// Element content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    /// Character data (entities resolved, CDATA included verbatim).
    Text(String),
}

impl Element {
    /// The value of attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The child elements.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// All text inside, depth first, concatenated.
    pub fn text(&self) -> String {
        let mut out = String::new();
        self.collect_text(&mut out);
        out
    }

    fn collect_text(&self, out: &mut String) {
        for n in &self.children {
            match n {
                Node::Text(t) => out.push_str(t),
                Node::Element(e) => e.collect_text(out),
            }
        }
    }
}

/// Parse a whole XML document (prolog, one root element, trailing comments) strictly.
pub fn parse_xml(doc: &str) -> Result<Element, TwimlError> {
    let mut r = Reader {
        s: doc.strip_prefix('\u{feff}').unwrap_or(doc),
        i: 0,
    };
    r.misc(true)?;
    if !r.rest().starts_with('<') {
        return Err(parse_failure(if r.rest().is_empty() {
            "empty document".to_string()
        } else {
            "content before the root element".to_string()
        }));
    }
    let root = r.element(0)?;
    r.misc(false)?;
    if !r.rest().is_empty() {
        return Err(parse_failure("content after the root element"));
    }
    Ok(root)
}

struct Reader<'a> {
    s: &'a str,
    i: usize,
}

impl Reader<'_> {
    fn rest(&self) -> &str {
        &self.s[self.i..]
    }

    fn skip_ws(&mut self) {
        let r = self.rest();
        self.i += r.len() - r.trim_start().len();
    }

    /// Skip past `end` (which must occur), returning the text before it.
    fn until(&mut self, end: &str, what: &str) -> Result<String, TwimlError> {
        let r = self.rest();
        let at = r
            .find(end)
            .ok_or_else(|| parse_failure(format!("unterminated {what}")))?;
        let text = r[..at].to_string();
        self.i += at + end.len();
        Ok(text)
    }

    /// Whitespace, comments and processing instructions (and, in the prolog, a DOCTYPE).
    fn misc(&mut self, prolog: bool) -> Result<(), TwimlError> {
        loop {
            self.skip_ws();
            let r = self.rest();
            if r.starts_with("<!--") {
                self.i += 4;
                self.until("-->", "comment")?;
            } else if r.starts_with("<?") {
                self.i += 2;
                self.until("?>", "processing instruction")?;
            } else if prolog && r.starts_with("<!DOCTYPE") {
                self.i += 9;
                self.until(">", "DOCTYPE")?;
            } else {
                return Ok(());
            }
        }
    }

    fn name(&mut self) -> Result<String, TwimlError> {
        let r = self.rest();
        let len = r
            .char_indices()
            .find(|&(i, c)| {
                !(c.is_alphanumeric() || c == '_' || c == ':' || (i > 0 && (c == '-' || c == '.')))
            })
            .map_or(r.len(), |(i, _)| i);
        let name = r[..len].to_string();
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(parse_failure(format!("expected a name at byte {}", self.i)));
        }
        self.i += len;
        Ok(name)
    }

    fn element(&mut self, depth: usize) -> Result<Element, TwimlError> {
        if depth > MAX_DEPTH {
            return Err(parse_failure("elements nested too deeply"));
        }
        // at '<'
        self.i += 1;
        let name = self.name()?;
        let mut attrs: Vec<(String, String)> = Vec::new();
        loop {
            let before = self.i;
            self.skip_ws();
            let r = self.rest();
            if r.starts_with("/>") {
                self.i += 2;
                return Ok(Element {
                    name,
                    attrs,
                    children: Vec::new(),
                });
            }
            if r.starts_with('>') {
                self.i += 1;
                break;
            }
            if r.is_empty() {
                return Err(parse_failure(format!("unterminated <{name}> tag")));
            }
            if self.i == before {
                return Err(parse_failure(format!(
                    "expected whitespace before an attribute of <{name}>"
                )));
            }
            let key = self.name()?;
            self.skip_ws();
            if !self.rest().starts_with('=') {
                return Err(parse_failure(format!(
                    "attribute {key} of <{name}> has no value"
                )));
            }
            self.i += 1;
            self.skip_ws();
            let q = self.rest().chars().next();
            let q = match q {
                Some(c @ ('"' | '\'')) => c,
                _ => {
                    return Err(parse_failure(format!(
                        "attribute {key} of <{name}> is not quoted"
                    )));
                }
            };
            self.i += 1;
            let raw = self.until(&q.to_string(), "attribute value")?;
            if raw.contains('<') {
                return Err(parse_failure(format!(
                    "'<' in the value of attribute {key}"
                )));
            }
            if attrs.iter().any(|(k, _)| *k == key) {
                return Err(parse_failure(format!(
                    "attribute {key} repeated on <{name}>"
                )));
            }
            attrs.push((key, unescape(&raw)?));
        }
        let mut children = Vec::new();
        let mut text = String::new();
        loop {
            let r = self.rest();
            let lt = r
                .find('<')
                .ok_or_else(|| parse_failure(format!("<{name}> is not closed")))?;
            text.push_str(&unescape(&r[..lt])?);
            self.i += lt;
            let r = self.rest();
            if r.starts_with("<!--") {
                self.i += 4;
                self.until("-->", "comment")?;
            } else if r.starts_with("<![CDATA[") {
                self.i += 9;
                text.push_str(&self.until("]]>", "CDATA section")?);
            } else if r.starts_with("<?") {
                self.i += 2;
                self.until("?>", "processing instruction")?;
            } else if r.starts_with("</") {
                self.i += 2;
                let end = self.name()?;
                self.skip_ws();
                if !self.rest().starts_with('>') {
                    return Err(parse_failure(format!("malformed </{end}>")));
                }
                self.i += 1;
                if end != name {
                    return Err(parse_failure(format!("</{end}> does not close <{name}>")));
                }
                if !text.is_empty() {
                    children.push(Node::Text(text));
                }
                return Ok(Element {
                    name,
                    attrs,
                    children,
                });
            } else if r.starts_with("<!") {
                return Err(parse_failure("unexpected markup declaration"));
            } else {
                if !text.is_empty() {
                    children.push(Node::Text(std::mem::take(&mut text)));
                }
                children.push(Node::Element(self.element(depth + 1)?));
            }
        }
    }
}

/// Resolve the five XML entities and character references; anything else is an error.
fn unescape(s: &str) -> Result<String, TwimlError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let semi = rest
            .find(';')
            .filter(|&i| i <= 12)
            .ok_or_else(|| parse_failure("'&' that does not start an entity"))?;
        let ent = &rest[1..semi];
        let c = match ent {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => {
                let n = if let Some(h) = ent.strip_prefix("#x") {
                    u32::from_str_radix(h, 16).ok()
                } else if let Some(d) = ent.strip_prefix('#') {
                    d.parse().ok()
                } else {
                    None
                };
                n.and_then(char::from_u32)
            }
        };
        let c = c.ok_or_else(|| parse_failure(format!("unknown entity &{ent};")))?;
        out.push(c);
        rest = &rest[semi + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Escape text for an XML attribute value or content.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// TwiML

/// One verb of a `<Response>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verb {
    /// `loop` 0 means "until the call ends".
    Say {
        text: String,
        loops: u32,
    },
    Pause {
        secs: u64,
    },
    Hangup,
    /// Ends the call like `<Hangup/>` once it is answered.
    Reject,
    /// `url` as written (may be relative).
    Redirect {
        url: String,
        method: String,
    },
    Dial(Dial),
    /// `<Connect><Stream url>`: the URL and `<Parameter>`s.
    ConnectStream {
        url: String,
        params: Vec<(String, String)>,
    },
    /// A verb the emulator does not execute (skipped with a warning).
    Other {
        name: String,
    },
}

impl Verb {
    /// The TwiML element name.
    pub fn name(&self) -> &str {
        match self {
            Verb::Say { .. } => "Say",
            Verb::Pause { .. } => "Pause",
            Verb::Hangup => "Hangup",
            Verb::Reject => "Reject",
            Verb::Redirect { .. } => "Redirect",
            Verb::Dial(_) => "Dial",
            Verb::ConnectStream { .. } => "Connect",
            Verb::Other { name } => name,
        }
    }
}

/// `<Dial>` and its attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dial {
    /// As written (may be relative).
    pub action: Option<String>,
    /// `GET` or `POST` (default).
    pub method: String,
    pub caller_id: Option<String>,
    pub timeout_secs: u64,
    pub time_limit_secs: Option<u64>,
    /// What to dial; several numbers / SIP URIs ring at once, first to answer wins.
    pub targets: Vec<DialTarget>,
}

/// One noun of a `<Dial>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DialTarget {
    /// A phone number (normalised to E.164 when it is a recognisable US or `+` number).
    Number(Endpoint),
    /// A `sip:` URI.
    Sip(Endpoint),
    Conference(ConferenceTarget),
}

/// A number or SIP URI with its call progress callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub to: String,
    pub status_callback: Option<String>,
    pub status_callback_method: String,
    /// `initiated` `ringing` `answered` `completed` (empty: only `completed`).
    pub status_callback_events: Vec<String>,
}

/// `<Conference>` and the attributes the emulator honours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConferenceTarget {
    pub name: String,
    pub start_conference_on_enter: bool,
    pub end_conference_on_exit: bool,
    pub muted: bool,
    pub beep: String,
    pub label: Option<String>,
}

/// A parsed `<Response>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    pub verbs: Vec<Verb>,
    /// What Twilio would log as warnings (bad attribute values, unknown nouns…).
    pub warnings: Vec<String>,
}

/// Parse a TwiML voice document.
pub fn parse(doc: &str) -> Result<Document, TwimlError> {
    let root = parse_xml(doc)?;
    if root.name != "Response" {
        return Err(parse_failure(format!(
            "the root element is <{}>, not <Response>",
            root.name
        )));
    }
    let mut warnings = Vec::new();
    let mut verbs = Vec::new();
    for n in &root.children {
        match n {
            Node::Text(t) if t.trim().is_empty() => {}
            Node::Text(t) => warnings.push(format!("text outside a verb ignored: {:?}", t.trim())),
            Node::Element(e) => verbs.push(verb(e, &mut warnings)),
        }
    }
    Ok(Document { verbs, warnings })
}

fn method_attr(e: &Element, key: &str, warnings: &mut Vec<String>) -> String {
    match e.attr(key) {
        None => "POST".into(),
        Some(m) if m.eq_ignore_ascii_case("GET") => "GET".into(),
        Some(m) if m.eq_ignore_ascii_case("POST") => "POST".into(),
        Some(m) => {
            warnings.push(format!("<{}> {key}={m:?} is not GET or POST", e.name));
            "POST".into()
        }
    }
}

fn bool_attr(e: &Element, key: &str, default: bool, warnings: &mut Vec<String>) -> bool {
    match e.attr(key) {
        None => default,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(v) => {
            warnings.push(format!("<{}> {key}={v:?} is not true or false", e.name));
            default
        }
    }
}

fn num_attr(e: &Element, key: &str, warnings: &mut Vec<String>) -> Option<u64> {
    let v = e.attr(key)?;
    match v.trim().parse::<u64>() {
        Ok(n) => Some(n),
        Err(_) => {
            warnings.push(format!("<{}> {key}={v:?} is not a number", e.name));
            None
        }
    }
}

fn verb(e: &Element, warnings: &mut Vec<String>) -> Verb {
    match e.name.as_str() {
        "Say" => Verb::Say {
            text: e.text().trim().to_string(),
            loops: num_attr(e, "loop", warnings).map_or(1, |n| n.min(1000) as u32),
        },
        "Pause" => Verb::Pause {
            secs: num_attr(e, "length", warnings).unwrap_or(1),
        },
        "Hangup" => Verb::Hangup,
        "Reject" => Verb::Reject,
        "Redirect" => Verb::Redirect {
            url: e.text().trim().to_string(),
            method: method_attr(e, "method", warnings),
        },
        "Dial" => Verb::Dial(dial(e, warnings)),
        "Connect" => {
            let stream = e.elements().find(|c| c.name == "Stream");
            match stream.and_then(|s| s.attr("url").map(|u| (s, u))) {
                Some((s, url)) => Verb::ConnectStream {
                    url: url.to_string(),
                    params: s
                        .elements()
                        .filter(|p| p.name == "Parameter")
                        .filter_map(|p| {
                            Some((
                                p.attr("name")?.to_string(),
                                p.attr("value").unwrap_or_default().to_string(),
                            ))
                        })
                        .collect(),
                },
                None => Verb::Other {
                    name: "Connect".into(),
                },
            }
        }
        other => Verb::Other {
            name: other.to_string(),
        },
    }
}

fn endpoint(e: &Element, to: String, warnings: &mut Vec<String>) -> Endpoint {
    Endpoint {
        to,
        status_callback: e.attr("statusCallback").map(str::to_string),
        status_callback_method: method_attr(e, "statusCallbackMethod", warnings),
        status_callback_events: e
            .attr("statusCallbackEvent")
            .map(|v| {
                v.split(|c: char| c.is_whitespace() || c == ',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn dial(e: &Element, warnings: &mut Vec<String>) -> Dial {
    let mut targets = Vec::new();
    for c in e.elements() {
        match c.name.as_str() {
            "Number" => {
                let to = normalize_number(c.text().trim());
                targets.push(DialTarget::Number(endpoint(c, to, warnings)));
            }
            "Sip" => {
                let to = c.text().trim().to_string();
                targets.push(DialTarget::Sip(endpoint(c, to, warnings)));
            }
            "Conference" => targets.push(DialTarget::Conference(ConferenceTarget {
                name: c.text().trim().to_string(),
                start_conference_on_enter: bool_attr(c, "startConferenceOnEnter", true, warnings),
                end_conference_on_exit: bool_attr(c, "endConferenceOnExit", false, warnings),
                muted: bool_attr(c, "muted", false, warnings),
                beep: c.attr("beep").unwrap_or("true").to_string(),
                label: c.attr("participantLabel").map(str::to_string),
            })),
            other => warnings.push(format!("<Dial><{other}> is not emulated; ignored")),
        }
    }
    if targets.is_empty() {
        let text: String = e
            .children
            .iter()
            .filter_map(|n| match n {
                Node::Text(t) => Some(t.as_str()),
                Node::Element(_) => None,
            })
            .collect();
        let text = text.trim();
        if !text.is_empty() {
            let to = normalize_number(text);
            targets.push(DialTarget::Number(Endpoint {
                to,
                status_callback: None,
                status_callback_method: "POST".into(),
                status_callback_events: Vec::new(),
            }));
        }
    }
    if targets
        .iter()
        .any(|t| matches!(t, DialTarget::Conference(_)))
        && targets.len() > 1
    {
        warnings
            .push("<Dial> with <Conference> and other nouns: only the conference is used".into());
        targets.retain(|t| matches!(t, DialTarget::Conference(_)));
        targets.truncate(1);
    }
    if targets.len() > 10 {
        warnings.push("<Dial> with more than ten nouns: the rest are ignored".into());
        targets.truncate(10);
    }
    let timeout = num_attr(e, "timeout", warnings).unwrap_or(DEFAULT_DIAL_TIMEOUT_SECS);
    Dial {
        action: e
            .attr("action")
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string),
        method: method_attr(e, "method", warnings),
        caller_id: e.attr("callerId").map(str::to_string),
        timeout_secs: timeout.clamp(1, 600),
        time_limit_secs: num_attr(e, "timeLimit", warnings),
        targets,
    }
}

/// Twilio also accepts unformatted US numbers (`415-123-4567`, `(415) 123-4567`):
/// strip the punctuation and add `+1`. Anything else is kept as written.
pub fn normalize_number(raw: &str) -> String {
    let plus = raw.trim_start().starts_with('+');
    let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
    let only_punct = raw
        .chars()
        .all(|c| c.is_ascii_digit() || " -().+".contains(c));
    if !only_punct || digits.is_empty() {
        return raw.trim().to_string();
    }
    if plus {
        format!("+{digits}")
    } else if digits.len() == 10 {
        format!("+1{digits}")
    } else if digits.len() == 11 && digits.starts_with('1') {
        format!("+{digits}")
    } else {
        digits
    }
}

/// Resolve a (possibly relative) URL against the URL of the document it came from.
pub fn resolve_url(raw: &str, base: Option<&str>) -> Option<String> {
    if let Ok(u) = url::Url::parse(raw) {
        return Some(u.to_string()).filter(|_| matches!(u.scheme(), "http" | "https"));
    }
    let base = url::Url::parse(base?).ok()?;
    let u = base.join(raw).ok()?;
    matches!(u.scheme(), "http" | "https").then(|| u.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_reader_is_strict_and_never_panics() {
        let ok = parse_xml(
            "\u{feff}<?xml version=\"1.0\"?><!-- c --><Response a='1' b = \"x&amp;y\"><Say>Hi &lt;you&gt; &#233;&#x41;<![CDATA[<raw>]]></Say><Pause/></Response>\n<!-- end -->",
        )
        .expect("well-formed");
        assert_eq!(ok.name, "Response");
        assert_eq!(ok.attr("b"), Some("x&y"));
        let say = ok.elements().next().expect("say");
        assert_eq!(say.text(), "Hi <you> éA<raw>");
        for bad in [
            "",
            "   ",
            "hello",
            "<Response>",
            "<Response></Respons>",
            "<Response><Say>a</Response>",
            "<Response><Say>a & b</Say></Response>",
            "<Response><Say>&nbsp;</Say></Response>",
            "<Response a=1/>",
            "<Response a='1' a='2'/>",
            "<Response a='<'/>",
            "<Response/><Response/>",
            "<Response/>trailing",
            "<Response><Say>",
            "<Response><!-- open",
            "<Response><1a/></Response>",
            "<Response ></Response ",
            "<Response a='1'b='2'/>",
            "<Response><![CDATA[x</Response>",
            "<Response>\u{0}<</Response>",
        ] {
            let e = parse(bad).expect_err(bad);
            assert_eq!(e.code, DOCUMENT_PARSE_FAILURE, "{bad}");
        }
        let deep = format!(
            "<Response>{}{}</Response>",
            "<a>".repeat(500),
            "</a>".repeat(500)
        );
        assert_eq!(
            parse(&deep).map_err(|e| e.code),
            Err(DOCUMENT_PARSE_FAILURE)
        );
        assert!(parse("<Hangup/>").is_err(), "root must be <Response>");
        // Arbitrary byte soup: errors, no panics.
        let soup = "<R<e>s'p\"o=n&s;e/></</>&#xZZ;&#99999999;<![CDATA[<!--<?";
        for i in 0..soup.len() {
            for j in i..=soup.len() {
                if let Some(s) = soup.get(i..j) {
                    let _ = parse(s);
                }
            }
        }
    }

    #[test]
    fn dial_nouns_and_attributes() {
        let d = parse(
            r#"<Response>
                 <Say loop="2">Transferring you</Say>
                 <Dial action="/after" method="GET" callerId="+14155550100" timeout="12" timeLimit="60">
                   <Number statusCallback="https://x.example/s" statusCallbackEvent="initiated answered">415-555-0123</Number>
                   <Sip>sip:agent@pbx.example.com;transport=tls</Sip>
                 </Dial>
                 <Dial>(415) 555-0199</Dial>
                 <Dial timeout="soon"><Conference startConferenceOnEnter="false" endConferenceOnExit="true" waitUrl="">room 1</Conference></Dial>
                 <Play>https://x.example/a.mp3</Play>
                 <Hangup/>
               </Response>"#,
        )
        .expect("parses");
        assert_eq!(
            d.verbs[0],
            Verb::Say {
                text: "Transferring you".into(),
                loops: 2
            }
        );
        let Verb::Dial(dial) = &d.verbs[1] else {
            panic!("{:?}", d.verbs[1])
        };
        assert_eq!(dial.action.as_deref(), Some("/after"));
        assert_eq!(dial.method, "GET");
        assert_eq!(dial.caller_id.as_deref(), Some("+14155550100"));
        assert_eq!((dial.timeout_secs, dial.time_limit_secs), (12, Some(60)));
        let DialTarget::Number(n) = &dial.targets[0] else {
            panic!()
        };
        assert_eq!(n.to, "+14155550123");
        assert_eq!(n.status_callback_events, ["initiated", "answered"]);
        assert!(
            matches!(&dial.targets[1], DialTarget::Sip(s) if s.to == "sip:agent@pbx.example.com;transport=tls")
        );
        let Verb::Dial(bare) = &d.verbs[2] else {
            panic!()
        };
        assert!(matches!(&bare.targets[0], DialTarget::Number(n) if n.to == "+14155550199"));
        assert_eq!(bare.timeout_secs, DEFAULT_DIAL_TIMEOUT_SECS);
        let Verb::Dial(conf) = &d.verbs[3] else {
            panic!()
        };
        assert_eq!(conf.timeout_secs, DEFAULT_DIAL_TIMEOUT_SECS);
        let DialTarget::Conference(c) = &conf.targets[0] else {
            panic!()
        };
        assert_eq!(c.name, "room 1");
        assert!(!c.start_conference_on_enter && c.end_conference_on_exit);
        assert_eq!(
            d.verbs[4],
            Verb::Other {
                name: "Play".into()
            }
        );
        assert_eq!(d.verbs[5], Verb::Hangup);
        assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
    }

    #[test]
    fn urls_and_numbers() {
        assert_eq!(
            resolve_url("/dial/done?x=1", Some("https://a.example/voice/x")).as_deref(),
            Some("https://a.example/dial/done?x=1")
        );
        assert_eq!(
            resolve_url("done", Some("https://a.example/voice/x")).as_deref(),
            Some("https://a.example/voice/done")
        );
        assert_eq!(resolve_url("/done", None), None);
        assert_eq!(resolve_url("ftp://a.example/x", None), None);
        assert_eq!(normalize_number("+44 20 7946 0000"), "+442079460000");
        assert_eq!(normalize_number("1-415-555-0100"), "+14155550100");
        assert_eq!(normalize_number("client:bob"), "client:bob");
        assert_eq!(escape("a<'&\">"), "a&lt;&apos;&amp;&quot;&gt;");
    }
}
