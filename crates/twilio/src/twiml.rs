//! TwiML builder (being written).

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
    /// Render the TwiML document.
    pub fn to_xml(&self) -> String {
        String::new()
    }
}
