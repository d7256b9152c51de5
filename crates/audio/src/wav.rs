//! Minimal WAV (RIFF) writing for recordings: 16-bit PCM or G.711 µ-law.

/// WAV `fmt ` codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WavFormat {
    /// Linear 16-bit little-endian PCM.
    Pcm16,
    /// G.711 µ-law, one byte a sample (format code 7).
    MuLaw,
}

/// A complete WAV file holding `data` (already in `format`), mono.
pub fn wav_bytes(format: WavFormat, sample_rate: u32, data: &[u8]) -> Vec<u8> {
    let (code, bits): (u16, u16) = match format {
        WavFormat::Pcm16 => (1, 16),
        WavFormat::MuLaw => (7, 8),
    };
    let block_align = bits / 8;
    let byte_rate = sample_rate * u32::from(block_align);
    let data_len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(44 + data.len());
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&sample_rate.to_le_bytes());
    out.extend_from_slice(&byte_rate.to_le_bytes());
    out.extend_from_slice(&block_align.to_le_bytes());
    out.extend_from_slice(&bits.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// Read the µ-law or PCM16 samples of a WAV file as µ-law bytes at its own
/// rate. Returns `None` for anything but mono µ-law or mono 16-bit PCM.
pub fn wav_to_mulaw(file: &[u8]) -> Option<(u32, Vec<u8>)> {
    if file.len() < 12 || &file[0..4] != b"RIFF" || &file[8..12] != b"WAVE" {
        return None;
    }
    let mut pos = 12;
    let mut fmt: Option<(u16, u16, u32, u16)> = None;
    while pos + 8 <= file.len() {
        let id = &file[pos..pos + 4];
        let len = u32::from_le_bytes(file[pos + 4..pos + 8].try_into().ok()?) as usize;
        let body = file.get(pos + 8..pos + 8 + len)?;
        if id == b"fmt " && body.len() >= 16 {
            let code = u16::from_le_bytes([body[0], body[1]]);
            let channels = u16::from_le_bytes([body[2], body[3]]);
            let rate = u32::from_le_bytes(body[4..8].try_into().ok()?);
            let bits = u16::from_le_bytes([body[14], body[15]]);
            fmt = Some((code, channels, rate, bits));
        } else if id == b"data" {
            let (code, channels, rate, bits) = fmt?;
            if channels != 1 {
                return None;
            }
            return match (code, bits) {
                (7, 8) => Some((rate, body.to_vec())),
                (1, 16) => Some((
                    rate,
                    body.chunks_exact(2)
                        .map(|c| crate::mulaw_encode(i16::from_le_bytes([c[0], c[1]])))
                        .collect(),
                )),
                _ => None,
            };
        }
        pos += 8 + len + (len & 1);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mulaw_wav_round_trip() {
        let data: Vec<u8> = (0..=255u8).collect();
        let file = wav_bytes(WavFormat::MuLaw, 8000, &data);
        assert_eq!(file.len(), 44 + 256);
        assert_eq!(wav_to_mulaw(&file), Some((8000, data)));
    }

    #[test]
    fn pcm_wav_is_encoded_to_mulaw() {
        let pcm: Vec<u8> = [0i16, 1000, -1000]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        let file = wav_bytes(WavFormat::Pcm16, 8000, &pcm);
        assert_eq!(wav_to_mulaw(&file), Some((8000, vec![0xFF, 0xCE, 0x4E])));
        assert_eq!(wav_to_mulaw(b"not a wav"), None);
    }
}
