//! Outbound audio: local pacing, Twilio marks, and barge-in.
//!
//! A pure state machine (no sockets, no clock of its own): the call session
//! feeds it model audio, Twilio mark echoes and "the caller started
//! speaking", plus the current time; it writes the Twilio and model
//! messages to send into an [`Outbox`].
//!
//! The algorithm follows openai-agents-js's Twilio transport after its
//! PR #1608 (see `shared/PROTOCOLS.md` §c), with a local pacer in front:
//! - audio is cut into 160-byte / 20 ms frames and sent on a monotonic
//!   clock, at most `lead` ahead of what Twilio has played, so Twilio never
//!   buffers seconds of audio and a `clear` silences the agent at once;
//! - playback is tracked per (response, item, content index) with uniquely
//!   named marks (`{item}:{ms}:g{generation}:m{seq}`) and a final
//!   `done:` mark per item; the echoes say how much audio was really heard;
//! - on barge-in the local queue is dropped, Twilio is told to `clear`, the
//!   response is cancelled (unless the server does it itself), every item
//!   is truncated at the acknowledged playback + 50 ms, clamped to the audio
//!   actually sent to Twilio, and late deltas of the cancelled response are
//!   dropped; mark echoes caused by the clear are recognised and ignored;
//! - audio of a response marked uninterruptible (a legally required
//!   disclosure) is never cut.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use std::collections::{HashSet, VecDeque};
use std::time::Duration;
use tokio::time::Instant;
use voxbridge_audio::{BYTES_PER_MS, FRAME_BYTES};
use voxbridge_realtime::client::ClientEvent;
use voxbridge_twilio::media;

/// Safety margin added to the acknowledged playback position on truncate.
pub const TRUNCATE_MARGIN_MS: u64 = 50;
/// Mark echoes remembered after a clear, at most (they arrive at once).
const MAX_CLEARED_MARKS: usize = 4096;
/// Cancelled response ids remembered, at most.
const MAX_DISCARDED: usize = 64;

/// Messages produced by one step, to be written by the session in one go.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Text frames for Twilio (`media`, `mark`, `clear`).
    pub twilio: Vec<String>,
    /// Client events for the model.
    pub model: Vec<String>,
    /// Things the session reports (transcripts aside).
    pub notes: Vec<Note>,
}

impl Outbox {
    pub fn is_empty(&self) -> bool {
        self.twilio.is_empty() && self.model.is_empty() && self.notes.is_empty()
    }
}

/// What happened, for logs, metrics and the event hub.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// Twilio acknowledged the first audio of a response.
    FirstAudioPlayed { response_id: String },
    /// All audio of a protected (uninterruptible) response has played.
    ProtectedPlayed { response_id: String },
    /// The caller interrupted the agent.
    BargeIn {
        response_id: Option<String>,
        truncated: Vec<(String, u64)>,
        cancelled: bool,
        dropped_ms: u64,
    },
    /// The caller spoke over a protected response; it keeps playing.
    BargeInIgnored { response_id: String },
    /// A mark echo we never sent (or already handled).
    UnknownMark { name: String },
}

/// Settings of the pacer.
#[derive(Debug, Clone, Copy)]
pub struct PacerConfig {
    /// How far ahead of Twilio's playback we may send audio.
    pub lead: Duration,
    /// Audio between two playback marks.
    pub mark_interval_ms: u64,
    /// Audio sent per write once a burst is under way: the pacer waits until Twilio's
    /// buffer has fallen to `lead - batch`, then tops it up to `lead` in one write. One
    /// write per 20 ms frame would cost a syscall (and, on loopback, the peer's TCP
    /// receive work) per frame; a 40 ms batch sends half as many, and Twilio still holds
    /// at least `lead - batch` of audio (120 ms by default), so it never runs dry. At least
    /// one frame (20 ms), at most `lead`. (60 ms batches cost about the same CPU under load
    /// and left less margin for a stalled peer.)
    pub batch: Duration,
}

/// Default audio per pacer write (two 20 ms frames).
pub const DEFAULT_BATCH_MS: u64 = 40;

impl Default for PacerConfig {
    fn default() -> Self {
        PacerConfig {
            lead: Duration::from_millis(160),
            mark_interval_ms: 100,
            batch: Duration::from_millis(DEFAULT_BATCH_MS),
        }
    }
}

impl PacerConfig {
    /// How much audio Twilio holds, at least, before the pacer tops it up.
    fn low_water(&self) -> Duration {
        let frame = Duration::from_millis(voxbridge_audio::FRAME_MS);
        self.lead
            .saturating_sub(self.batch.clamp(frame, self.lead.max(frame)))
    }
}

#[derive(Debug)]
struct Item {
    /// Stable small key of this item (frames and marks refer to it).
    key: u64,
    /// Frames of this item still in the local queue.
    queued_frames: u32,
    response_id: String,
    item_id: String,
    content_index: u32,
    /// Audio received from the model (ms).
    received_ms: u64,
    /// Audio sent to Twilio (ms).
    sent_ms: u64,
    /// Audio Twilio confirmed as played, by mark echo (ms).
    played_ms: u64,
    /// `sent_ms` when the last mark was sent.
    last_mark_ms: u64,
    /// The model said the audio of this item is complete.
    audio_done: bool,
    done_mark_sent: bool,
    /// Never cut by barge-in.
    protected: bool,
    /// Bytes of an incomplete frame, waiting for the next delta.
    partial: Vec<u8>,
}

#[derive(Debug)]
enum MarkKind {
    Audio,
    Done,
}

#[derive(Debug)]
struct PendingMark {
    name: String,
    /// Key of the item (its index in `items` is not stable).
    key: u64,
    audio_end_ms: u64,
    kind: MarkKind,
    first: bool,
}

/// One 20 ms frame (or the shorter last one of an item), stored inline:
/// no heap allocation per frame.
#[derive(Debug)]
struct Frame {
    key: u64,
    len: u8,
    bytes: [u8; FRAME_BYTES],
}

impl Frame {
    fn new(key: u64, data: &[u8]) -> Self {
        let mut bytes = [0u8; FRAME_BYTES];
        let len = data.len().min(FRAME_BYTES);
        bytes[..len].copy_from_slice(&data[..len]);
        Frame {
            key,
            len: len as u8,
            bytes,
        }
    }
    fn data(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
    fn ms(&self) -> u64 {
        (usize::from(self.len) / BYTES_PER_MS) as u64
    }
}

/// The outbound side of one Twilio stream.
#[derive(Debug)]
pub struct Playback {
    cfg: PacerConfig,
    stream_sid: Option<String>,
    generation: u64,
    mark_seq: u64,
    items: Vec<Item>,
    queue: VecDeque<Frame>,
    pending_marks: VecDeque<PendingMark>,
    cleared_marks: HashSet<String>,
    active_response: Option<String>,
    discarded: VecDeque<String>,
    protected_responses: Vec<String>,
    /// Responses whose first audio has not been acknowledged yet.
    awaiting_first_ack: HashSet<String>,
    /// Start of the current burst on Twilio's playout timeline.
    burst_start: Option<Instant>,
    /// Audio sent in the current burst (ms).
    burst_sent_ms: u64,
    /// Scratch buffer for base64 encoding.
    b64: String,
    /// Scratch buffer for base64 decoding.
    decoded: Vec<u8>,
    /// Next item key.
    next_key: u64,
}

impl Playback {
    pub fn new(cfg: PacerConfig) -> Self {
        Playback {
            cfg,
            stream_sid: None,
            generation: 0,
            mark_seq: 0,
            items: Vec::new(),
            queue: VecDeque::new(),
            pending_marks: VecDeque::new(),
            cleared_marks: HashSet::new(),
            active_response: None,
            discarded: VecDeque::new(),
            protected_responses: Vec::new(),
            awaiting_first_ack: HashSet::new(),
            burst_start: None,
            burst_sent_ms: 0,
            b64: String::with_capacity(256),
            decoded: Vec::new(),
            next_key: 0,
        }
    }

    /// Twilio's `start`: everything before belongs to no stream.
    pub fn start(&mut self, stream_sid: &str) {
        self.stream_sid = Some(stream_sid.to_owned());
        self.generation += 1;
        self.items.clear();
        self.queue.clear();
        self.pending_marks.clear();
        self.cleared_marks.clear();
        self.burst_start = None;
        self.burst_sent_ms = 0;
    }

    /// The response the model is producing, if any.
    pub fn active_response(&self) -> Option<&str> {
        self.active_response.as_deref()
    }

    /// True while agent audio is queued here or not yet confirmed played.
    pub fn is_playing(&self) -> bool {
        !self.queue.is_empty() || !self.items.is_empty()
    }

    /// Audio queued locally, not yet sent to Twilio (ms).
    pub fn queued_ms(&self) -> u64 {
        self.queue.iter().map(Frame::ms).sum()
    }

    /// Protect the next response from barge-in (a greeting or disclosure).
    pub fn protect_response(&mut self, response_id: &str) {
        self.protected_responses.push(response_id.to_owned());
    }

    /// `response.created`.
    pub fn response_created(&mut self, response_id: &str) {
        self.active_response = Some(response_id.to_owned());
        self.awaiting_first_ack.insert(response_id.to_owned());
    }

    /// `response.done` (any status).
    pub fn response_done(&mut self, response_id: &str) {
        if self.active_response.as_deref() == Some(response_id) {
            self.active_response = None;
        }
        self.discarded.retain(|r| r != response_id);
        if !self.items.iter().any(|i| i.response_id == response_id) {
            self.awaiting_first_ack.remove(response_id);
        }
    }

    fn is_discarded(&self, response_id: &str) -> bool {
        self.discarded.iter().any(|r| r == response_id)
    }

    /// `response.output_audio.delta`: decode the base64 (not the audio) and
    /// queue 20 ms frames. Returns false if the delta was dropped (late
    /// audio of a cancelled response, or invalid base64).
    pub fn audio_delta(
        &mut self,
        response_id: &str,
        item_id: &str,
        content_index: u32,
        delta_b64: &str,
    ) -> bool {
        if self.is_discarded(response_id) {
            return false;
        }
        let mut decoded = std::mem::take(&mut self.decoded);
        decoded.clear();
        if B64.decode_vec(delta_b64, &mut decoded).is_err() {
            self.decoded = decoded;
            return false;
        }
        let idx = match self.items.iter().position(|i| i.item_id == item_id) {
            Some(idx) => idx,
            None => {
                // A new item: flush the incomplete frame of the previous one.
                self.flush_partials();
                let protected = self.protected_responses.iter().any(|r| r == response_id);
                self.next_key += 1;
                self.items.push(Item {
                    key: self.next_key,
                    queued_frames: 0,
                    response_id: response_id.to_owned(),
                    item_id: item_id.to_owned(),
                    content_index,
                    received_ms: 0,
                    sent_ms: 0,
                    played_ms: 0,
                    last_mark_ms: 0,
                    audio_done: false,
                    done_mark_sent: false,
                    protected,
                    partial: Vec::new(),
                });
                self.items.len() - 1
            }
        };
        let item = &mut self.items[idx];
        let key = item.key;
        item.received_ms += (decoded.len() / BYTES_PER_MS) as u64;
        let mut data = &decoded[..];
        if !item.partial.is_empty() {
            let need = FRAME_BYTES - item.partial.len();
            let take = need.min(data.len());
            item.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if item.partial.len() == FRAME_BYTES {
                self.queue.push_back(Frame::new(key, &item.partial));
                item.queued_frames += 1;
                item.partial.clear();
            }
        }
        let mut chunks = data.chunks_exact(FRAME_BYTES);
        for c in &mut chunks {
            self.queue.push_back(Frame::new(key, c));
            item.queued_frames += 1;
        }
        item.partial.extend_from_slice(chunks.remainder());
        self.decoded = decoded;
        true
    }

    fn flush_partials(&mut self) {
        for item in &mut self.items {
            if !item.partial.is_empty() {
                self.queue.push_back(Frame::new(item.key, &item.partial));
                item.queued_frames += 1;
                item.partial.clear();
            }
        }
    }

    /// `response.output_audio.done`: the item's audio is complete.
    pub fn audio_done(&mut self, response_id: &str, item_id: &str) {
        if self.is_discarded(response_id) {
            return;
        }
        if let Some(item) = self.items.iter_mut().find(|i| i.item_id == item_id) {
            item.audio_done = true;
            if !item.partial.is_empty() {
                self.queue.push_back(Frame::new(item.key, &item.partial));
                item.queued_frames += 1;
                item.partial.clear();
            }
        }
    }

    /// When the pacer next wants to run, if it has anything to send.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.queue.is_empty() && !self.items.iter().any(|i| i.audio_done && !i.done_mark_sent) {
            return None;
        }
        match self.burst_start {
            None => Some(Instant::now()),
            Some(_) if self.queue.is_empty() => Some(Instant::now()), // a done mark only
            Some(start) => {
                // When Twilio's buffer has fallen to the low-water mark.
                let due = start + Duration::from_millis(self.burst_sent_ms);
                let low = self.cfg.low_water();
                Some(due.checked_sub(low).unwrap_or(start).max(start))
            }
        }
    }

    /// Send every frame that is due at `now` (and the marks that go with it).
    pub fn pump(&mut self, now: Instant, out: &mut Outbox) {
        let Some(sid) = self.stream_sid.take() else {
            return; // no stream yet: keep the audio queued
        };
        self.pump_with(&sid, now, out);
        self.stream_sid = Some(sid);
    }

    fn pump_with(&mut self, sid: &str, now: Instant, out: &mut Outbox) {
        // A new burst starts when Twilio has played everything we sent.
        let idle = match self.burst_start {
            None => true,
            Some(start) => now >= start + Duration::from_millis(self.burst_sent_ms),
        };
        if idle {
            self.burst_start = Some(now);
            self.burst_sent_ms = 0;
        }
        let start = self.burst_start.unwrap_or(now);
        let elapsed = now.saturating_duration_since(start);
        // Mid-burst, wait until Twilio's buffer is down to the low-water mark, then top
        // it up to `lead` in one go (see `PacerConfig::batch`).
        let ahead = Duration::from_millis(self.burst_sent_ms).saturating_sub(elapsed);
        let refill = idle || ahead <= self.cfg.low_water();
        while let Some(front) = self.queue.front()
            && refill
        {
            let frame_ms = front.ms();
            if Duration::from_millis(self.burst_sent_ms + frame_ms) > elapsed + self.cfg.lead {
                break;
            }
            let Some(frame) = self.queue.pop_front() else {
                break;
            };
            self.b64.clear();
            B64.encode_string(frame.data(), &mut self.b64);
            let mut msg = String::with_capacity(self.b64.len() + 40 + sid.len());
            media::write_media(&mut msg, sid, &self.b64);
            out.twilio.push(msg);
            self.burst_sent_ms += frame_ms;
            let Some(idx) = self.items.iter().position(|i| i.key == frame.key) else {
                continue;
            };
            let item = &mut self.items[idx];
            item.queued_frames = item.queued_frames.saturating_sub(1);
            let first = item.sent_ms == 0;
            item.sent_ms += frame_ms;
            if first || item.sent_ms - item.last_mark_ms >= self.cfg.mark_interval_ms {
                item.last_mark_ms = item.sent_ms;
                let (key, end) = (item.key, item.sent_ms);
                let first_of_response = first
                    && self
                        .awaiting_first_ack
                        .contains(&self.items[idx].response_id)
                    && !self.items[..idx]
                        .iter()
                        .any(|i| i.response_id == self.items[idx].response_id);
                self.send_mark(sid, idx, key, end, MarkKind::Audio, first_of_response, out);
            }
            // The item's last frame: its done mark goes right behind it.
            self.maybe_done_mark(sid, idx, out);
        }
        // Items whose audio completed after their last frame was sent.
        for idx in 0..self.items.len() {
            self.maybe_done_mark(sid, idx, out);
        }
        // A reply streamed faster than real time may have grown the queue
        // to seconds of audio; give that memory back once it has drained.
        if self.queue.is_empty() && self.queue.capacity() > 64 {
            self.queue.shrink_to(16);
        }
    }

    fn maybe_done_mark(&mut self, sid: &str, idx: usize, out: &mut Outbox) {
        let item = &self.items[idx];
        if item.audio_done
            && !item.done_mark_sent
            && item.partial.is_empty()
            && item.queued_frames == 0
        {
            let (key, end) = (item.key, item.sent_ms);
            self.items[idx].done_mark_sent = true;
            self.send_mark(sid, idx, key, end, MarkKind::Done, false, out);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn send_mark(
        &mut self,
        sid: &str,
        idx: usize,
        key: u64,
        audio_end_ms: u64,
        kind: MarkKind,
        first: bool,
        out: &mut Outbox,
    ) {
        use std::fmt::Write as _;
        self.mark_seq += 1;
        let mut name = String::with_capacity(64);
        let item_id = &self.items[idx].item_id;
        let _ = match kind {
            MarkKind::Audio => write!(
                name,
                "{item_id}:{audio_end_ms}:g{}:m{}",
                self.generation, self.mark_seq
            ),
            MarkKind::Done => write!(
                name,
                "done:{item_id}:g{}:m{}",
                self.generation, self.mark_seq
            ),
        };
        let mut msg = String::with_capacity(name.len() + 48 + sid.len());
        media::write_mark(&mut msg, sid, &name);
        out.twilio.push(msg);
        self.pending_marks.push_back(PendingMark {
            name,
            key,
            audio_end_ms,
            kind,
            first,
        });
    }

    /// A `mark` echo from Twilio.
    pub fn mark_echo(&mut self, name: &str, out: &mut Outbox) {
        if self.cleared_marks.remove(name) {
            return; // echoed because of a clear: says nothing about playback
        }
        let Some(pos) = self.pending_marks.iter().position(|m| m.name == name) else {
            out.notes.push(Note::UnknownMark {
                name: name.to_owned(),
            });
            return;
        };
        // Marks are echoed in order; anything before this one has played too.
        let acked: Vec<PendingMark> = self.pending_marks.drain(..=pos).collect();
        for m in acked {
            let Some(idx) = self.items.iter().position(|i| i.key == m.key) else {
                continue;
            };
            let item = &mut self.items[idx];
            item.played_ms = item.played_ms.max(m.audio_end_ms);
            let response_id = item.response_id.clone();
            if m.first && self.awaiting_first_ack.remove(&response_id) {
                out.notes.push(Note::FirstAudioPlayed {
                    response_id: response_id.clone(),
                });
            }
            if matches!(m.kind, MarkKind::Done) {
                let item = self.items.remove(idx);
                if item.protected
                    && !self.items.iter().any(|i| i.response_id == item.response_id)
                    && self.active_response.as_deref() != Some(item.response_id.as_str())
                {
                    self.protected_responses.retain(|r| *r != item.response_id);
                    out.notes.push(Note::ProtectedPlayed {
                        response_id: item.response_id,
                    });
                }
            }
        }
    }

    /// The caller started speaking. `cancel`: whether we must send
    /// `response.cancel` ourselves (false when the server's turn detection
    /// has `interrupt_response: true` and cancels by itself).
    pub fn barge_in(&mut self, cancel: bool, out: &mut Outbox) {
        if self.active_response.is_none() && self.items.is_empty() && self.queue.is_empty() {
            return; // nothing is playing
        }
        let protected = self
            .items
            .iter()
            .find(|i| i.protected)
            .map(|i| i.response_id.clone())
            .or_else(|| {
                self.active_response
                    .clone()
                    .filter(|r| self.protected_responses.contains(r))
            });
        if let Some(response_id) = protected {
            out.notes.push(Note::BargeInIgnored { response_id });
            return;
        }
        let mut truncated = Vec::new();
        for (i, item) in self.items.iter().enumerate() {
            if item.sent_ms == 0 && i > 0 {
                // Never reached Twilio; truncate at 0 so the model knows.
                truncated.push((item.item_id.clone(), item.content_index, 0));
                continue;
            }
            let end = if i == 0 || item.played_ms > 0 {
                (item.played_ms + TRUNCATE_MARGIN_MS).min(item.sent_ms)
            } else {
                0
            };
            truncated.push((item.item_id.clone(), item.content_index, end));
        }
        let dropped_ms = self.queued_ms()
            + self
                .items
                .iter()
                .map(|i| (i.partial.len() / BYTES_PER_MS) as u64)
                .sum::<u64>();
        let mut responses: Vec<String> = self.items.iter().map(|i| i.response_id.clone()).collect();
        if let Some(r) = &self.active_response {
            responses.push(r.clone());
        }
        responses.dedup();
        for r in &responses {
            if !self.is_discarded(r) {
                self.discarded.push_back(r.clone());
            }
            self.awaiting_first_ack.remove(r);
        }
        while self.discarded.len() > MAX_DISCARDED {
            self.discarded.pop_front();
        }
        self.generation += 1;
        for m in self.pending_marks.drain(..) {
            if self.cleared_marks.len() < MAX_CLEARED_MARKS {
                self.cleared_marks.insert(m.name);
            }
        }
        self.items.clear();
        self.queue.clear();
        self.burst_start = None;
        self.burst_sent_ms = 0;
        if let Some(sid) = &self.stream_sid {
            out.twilio.push(media::clear(sid));
        }
        let response_id = self.active_response.clone();
        let cancelled = cancel && response_id.is_some();
        if cancelled {
            out.model
                .push(ClientEvent::ResponseCancel { response_id: None }.to_json());
        }
        for (item_id, content_index, end) in &truncated {
            out.model.push(
                ClientEvent::ConversationItemTruncate {
                    item_id: item_id.clone(),
                    content_index: *content_index,
                    audio_end_ms: *end,
                }
                .to_json(),
            );
        }
        out.notes.push(Note::BargeIn {
            response_id,
            truncated: truncated.into_iter().map(|(i, _, e)| (i, e)).collect(),
            cancelled,
            dropped_ms,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn b64(ms: u64) -> String {
        B64.encode(vec![0x55u8; (ms as usize) * BYTES_PER_MS])
    }

    fn json(s: &str) -> Value {
        serde_json::from_str(s).expect("json")
    }

    fn started() -> Playback {
        let mut p = Playback::new(PacerConfig::default());
        p.start("MZ1");
        p
    }

    fn marks(out: &Outbox) -> Vec<String> {
        out.twilio
            .iter()
            .map(|s| json(s))
            .filter(|v| v["event"] == "mark")
            .map(|v| v["mark"]["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    fn media_count(out: &Outbox) -> usize {
        out.twilio
            .iter()
            .filter(|s| json(s)["event"] == "media")
            .count()
    }

    #[test]
    fn pacer_sends_the_lead_then_tops_up_in_batches() {
        let mut p = started();
        p.response_created("r1");
        assert!(p.audio_delta("r1", "i1", 0, &b64(1000)));
        let t0 = Instant::now();
        let mut out = Outbox::default();
        p.pump(t0, &mut out);
        assert_eq!(media_count(&out), 8, "160 ms lead = 8 frames");
        let mut out = Outbox::default();
        // Twilio holds 150, 140, 130 ms: above the 120 ms low-water mark, nothing goes.
        p.pump(t0 + Duration::from_millis(10), &mut out);
        p.pump(t0 + Duration::from_millis(20), &mut out);
        p.pump(t0 + Duration::from_millis(30), &mut out);
        assert_eq!(media_count(&out), 0);
        // Down to 120 ms: topped up to 160 ms in one go.
        p.pump(t0 + Duration::from_millis(40), &mut out);
        assert_eq!(media_count(&out), 2);
        p.pump(t0 + Duration::from_millis(60), &mut out);
        assert_eq!(media_count(&out), 2);
        p.pump(t0 + Duration::from_millis(80), &mut out);
        assert_eq!(media_count(&out), 4);
        assert_eq!(p.queued_ms(), 1000 - 12 * 20);
        // Twilio never holds less than the low-water mark nor more than the lead.
        let mut sent = 12 * 20u64;
        for ms in (81..=500).step_by(7) {
            let mut o = Outbox::default();
            p.pump(t0 + Duration::from_millis(ms), &mut o);
            sent += media_count(&o) as u64 * 20;
            assert!(sent <= ms + 160, "{ms} ms: {sent} ms sent, over the lead");
            assert!(
                sent >= ms + 120 - 7,
                "{ms} ms: {sent} ms sent, Twilio ran low"
            );
        }
        let every: Vec<Value> = out.twilio.iter().map(|s| json(s)).collect();
        for v in every.iter().filter(|v| v["event"] == "media") {
            assert_eq!(v["streamSid"], "MZ1");
            let bytes = B64
                .decode(v["media"]["payload"].as_str().expect("payload"))
                .expect("b64");
            assert_eq!(bytes.len(), FRAME_BYTES);
        }
    }

    #[test]
    fn deltas_of_odd_sizes_are_reframed_and_flushed_at_done() {
        let mut p = started();
        p.response_created("r1");
        p.audio_delta("r1", "i1", 0, &B64.encode(vec![1u8; 100]));
        p.audio_delta("r1", "i1", 0, &B64.encode(vec![2u8; 100]));
        assert_eq!(p.queue.len(), 1);
        p.audio_done("r1", "i1");
        assert_eq!(p.queue.len(), 2);
        let mut out = Outbox::default();
        p.pump(Instant::now(), &mut out);
        let m = marks(&out);
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m[0].starts_with("i1:20:g1:"), "{m:?}");
        assert!(m[1].starts_with("done:i1:g1:"), "{m:?}");
    }

    #[test]
    fn no_audio_leaves_before_start() {
        let mut p = Playback::new(PacerConfig::default());
        p.response_created("r1");
        p.audio_delta("r1", "i1", 0, &b64(100));
        let mut out = Outbox::default();
        p.pump(Instant::now(), &mut out);
        assert!(out.twilio.is_empty());
        p.start("MZ9");
        p.audio_delta("r1", "i1", 0, &b64(100));
        p.pump(Instant::now(), &mut out);
        assert_eq!(media_count(&out), 5);
    }

    #[test]
    fn interrupt_before_any_audio_cancels_without_truncate() {
        let mut p = started();
        p.response_created("r1");
        let mut out = Outbox::default();
        p.barge_in(true, &mut out);
        let model: Vec<Value> = out.model.iter().map(|s| json(s)).collect();
        assert_eq!(model, vec![serde_json::json!({"type":"response.cancel"})]);
        // Late audio of the cancelled response is dropped.
        assert!(!p.audio_delta("r1", "i1", 0, &b64(100)));
        assert!(!p.is_playing());
    }

    #[test]
    fn nothing_playing_means_no_barge_in() {
        let mut p = started();
        let mut out = Outbox::default();
        p.barge_in(true, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn interrupt_during_first_frame_truncates_at_most_what_was_sent() {
        let mut p = started();
        p.response_created("r1");
        p.audio_delta("r1", "i1", 0, &b64(20));
        let mut out = Outbox::default();
        p.pump(Instant::now(), &mut out);
        let mut out = Outbox::default();
        p.barge_in(true, &mut out);
        let model: Vec<Value> = out.model.iter().map(|s| json(s)).collect();
        assert_eq!(model[0]["type"], "response.cancel");
        assert_eq!(model[1]["type"], "conversation.item.truncate");
        assert_eq!(
            model[1]["audio_end_ms"], 20,
            "played 0 + 50, clamped to 20 sent"
        );
        assert_eq!(json(&out.twilio[0])["event"], "clear");
    }

    #[test]
    fn truncate_uses_acknowledged_playback_not_wall_clock() {
        let mut p = started();
        p.response_created("r1");
        p.audio_delta("r1", "i1", 0, &b64(2000));
        let t0 = Instant::now();
        let mut out = Outbox::default();
        // Send for 1 s of wall clock: the 160 ms lead, then 40 ms each time Twilio
        // is down to 120 ms (at 40, 80, … 1000 ms): 1160 ms sent.
        for step in 0..=50 {
            p.pump(t0 + Duration::from_millis(step * 20), &mut out);
        }
        let names = marks(&out);
        // Twilio echoes only the marks up to 400 ms (jitter buffer lag).
        for n in names.iter().take_while(|n| {
            n.split(':')
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                <= 400
        }) {
            p.mark_echo(n, &mut Outbox::default());
        }
        let mut out = Outbox::default();
        p.barge_in(false, &mut out);
        let model: Vec<Value> = out.model.iter().map(|s| json(s)).collect();
        assert_eq!(model.len(), 1, "server interrupts itself: no cancel");
        // Marks at 20, 120, 220, 320 ms were echoed: 320 + 50.
        assert_eq!(model[0]["audio_end_ms"], 370);
        let Some(Note::BargeIn { dropped_ms, .. }) = out.notes.last() else {
            panic!("{:?}", out.notes)
        };
        assert_eq!(*dropped_ms, 2000 - 1160);
    }

    #[test]
    fn interrupt_after_all_audio_sent_still_truncates() {
        let mut p = started();
        p.response_created("r1");
        p.audio_delta("r1", "i1", 0, &b64(100));
        p.audio_done("r1", "i1");
        p.response_done("r1");
        let mut out = Outbox::default();
        p.pump(Instant::now(), &mut out);
        let names = marks(&out);
        p.mark_echo(&names[0], &mut Outbox::default()); // first frame played
        let mut out = Outbox::default();
        p.barge_in(true, &mut out);
        let model: Vec<Value> = out.model.iter().map(|s| json(s)).collect();
        // The response is done: no cancel (it would be rejected), only truncate.
        assert_eq!(model.len(), 1);
        assert_eq!(model[0]["type"], "conversation.item.truncate");
        assert_eq!(model[0]["audio_end_ms"], 70);
    }

    #[test]
    fn stale_mark_echoes_after_clear_are_ignored() {
        let mut p = started();
        p.response_created("r1");
        p.audio_delta("r1", "i1", 0, &b64(400));
        let mut out = Outbox::default();
        p.pump(Instant::now(), &mut out);
        let old = marks(&out);
        assert!(!old.is_empty());
        p.barge_in(true, &mut Outbox::default());
        // New response after the interruption.
        p.response_done("r1");
        p.response_created("r2");
        p.audio_delta("r2", "i2", 0, &b64(200));
        let mut out = Outbox::default();
        p.pump(Instant::now(), &mut out);
        let new = marks(&out);
        assert!(new.iter().all(|n| n.contains(":g2:")), "{new:?}");
        let mut notes = Outbox::default();
        for n in &old {
            p.mark_echo(n, &mut notes); // echoes caused by the clear
        }
        assert!(notes.notes.is_empty(), "{:?}", notes.notes);
        // The new item's playback is untouched by the stale echoes.
        assert_eq!(p.items[0].played_ms, 0);
        p.mark_echo(&new[0], &mut notes);
        assert_eq!(p.items[0].played_ms, 20);
        assert_eq!(
            notes.notes,
            vec![Note::FirstAudioPlayed {
                response_id: "r2".into()
            }]
        );
        p.mark_echo("bogus", &mut notes);
        assert!(matches!(notes.notes.last(), Some(Note::UnknownMark { .. })));
    }

    #[test]
    fn two_items_in_one_response_are_both_truncated() {
        let mut p = started();
        p.response_created("r1");
        p.audio_delta("r1", "a", 0, &b64(60));
        p.audio_done("r1", "a");
        p.audio_delta("r1", "b", 0, &b64(400));
        let mut out = Outbox::default();
        p.pump(Instant::now(), &mut out);
        let names = marks(&out);
        // First item fully played (its done mark echoed), second partly.
        let done_a = names
            .iter()
            .position(|n| n.starts_with("done:a"))
            .expect("done a");
        p.mark_echo(&names[done_a], &mut Outbox::default());
        assert_eq!(p.items.len(), 1, "item a fully played and forgotten");
        p.mark_echo(&names[done_a + 1], &mut Outbox::default()); // b:20
        let mut out = Outbox::default();
        p.barge_in(true, &mut out);
        let model: Vec<Value> = out.model.iter().map(|s| json(s)).collect();
        assert_eq!(model[0]["type"], "response.cancel");
        assert_eq!(model[1]["item_id"], "b");
        assert_eq!(model[1]["audio_end_ms"], 70);
        assert_eq!(model.len(), 2);
    }

    #[test]
    fn second_unplayed_item_is_truncated_at_zero() {
        let mut p = started();
        p.response_created("r1");
        p.audio_delta("r1", "a", 0, &b64(100));
        p.audio_done("r1", "a");
        p.audio_delta("r1", "b", 0, &b64(100));
        let mut out = Outbox::default();
        p.pump(Instant::now(), &mut out);
        let mut out = Outbox::default();
        p.barge_in(true, &mut out);
        let ends: Vec<(String, u64)> = out
            .model
            .iter()
            .map(|s| json(s))
            .filter(|v| v["type"] == "conversation.item.truncate")
            .map(|v| {
                (
                    v["item_id"].as_str().unwrap_or_default().to_owned(),
                    v["audio_end_ms"].as_u64().unwrap_or(999),
                )
            })
            .collect();
        assert_eq!(ends, vec![("a".into(), 50), ("b".into(), 0)]);
    }

    #[test]
    fn protected_greeting_is_not_cut_and_reports_when_played() {
        let mut p = started();
        p.protect_response("g");
        p.response_created("g");
        p.audio_delta("g", "gi", 0, &b64(100));
        p.audio_done("g", "gi");
        let mut out = Outbox::default();
        p.pump(Instant::now(), &mut out);
        let names = marks(&out);
        let mut out2 = Outbox::default();
        p.barge_in(true, &mut out2);
        assert!(out2.twilio.is_empty() && out2.model.is_empty());
        assert_eq!(
            out2.notes,
            vec![Note::BargeInIgnored {
                response_id: "g".into()
            }]
        );
        p.response_done("g");
        let mut out3 = Outbox::default();
        for n in &names {
            p.mark_echo(n, &mut out3);
        }
        assert!(out3.notes.contains(&Note::ProtectedPlayed {
            response_id: "g".into()
        }));
        // After it played, barge-in works again.
        p.response_created("r2");
        p.audio_delta("r2", "x", 0, &b64(100));
        let mut out4 = Outbox::default();
        p.barge_in(true, &mut out4);
        assert!(matches!(out4.notes.last(), Some(Note::BargeIn { .. })));
    }

    #[test]
    fn next_deadline_follows_the_pacer() {
        let mut p = started();
        assert_eq!(p.next_deadline(), None);
        p.response_created("r1");
        p.audio_delta("r1", "i1", 0, &b64(400));
        let t0 = Instant::now();
        p.pump(t0, &mut Outbox::default());
        let d = p.next_deadline().expect("deadline");
        assert_eq!(
            d,
            t0 + Duration::from_millis(40),
            "160 ms sent, low water 120 ms"
        );
        let mut out = Outbox::default();
        p.pump(d, &mut out);
        assert_eq!(media_count(&out), 2);
    }
}
