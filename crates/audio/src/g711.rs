//! ITU-T G.711 µ-law and A-law, bit-exact with the reference encoder
//! (the `g711.c` of the ITU-T Software Tools Library / Sun's public-domain
//! code, which sox and ffmpeg also follow).

const MULAW_BIAS: i32 = 0x84;

/// Encode one linear 16-bit sample to µ-law (14-bit magnitude, as the
/// reference `linear2ulaw` does: the two low bits are dropped first).
pub fn mulaw_encode(sample: i16) -> u8 {
    const CLIP: i32 = 8_159;
    const SEG_END: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];
    let pcm = i32::from(sample) >> 2;
    let (mask, mag) = if pcm < 0 { (0x7F, -pcm) } else { (0xFF, pcm) };
    let mag = mag.min(CLIP) + (MULAW_BIAS >> 2);
    match SEG_END.iter().position(|&end| mag <= end) {
        Some(seg) => {
            let uval = ((seg as i32) << 4) | ((mag >> (seg + 1)) & 0x0F);
            (uval ^ mask) as u8
        }
        None => (0x7F ^ mask) as u8,
    }
}

/// Decode one µ-law byte to a linear 16-bit sample.
pub fn mulaw_decode(code: u8) -> i16 {
    MULAW_TABLE[code as usize]
}

/// Encode one linear 16-bit sample to A-law.
pub fn alaw_encode(sample: i16) -> u8 {
    // The reference works on 13-bit magnitudes: drop the three low bits.
    let pcm = i32::from(sample) >> 3;
    let (mask, mag) = if pcm >= 0 {
        (0xD5, pcm)
    } else {
        (0x55, -pcm - 1)
    };
    let seg = match mag {
        m if m < 0x20 => 0,
        m if m < 0x40 => 1,
        m if m < 0x80 => 2,
        m if m < 0x100 => 3,
        m if m < 0x200 => 4,
        m if m < 0x400 => 5,
        m if m < 0x800 => 6,
        m if m < 0x1000 => 7,
        _ => 8,
    };
    let aval = if seg >= 8 {
        0x7F
    } else {
        let shift = if seg < 2 { 1 } else { seg };
        (seg << 4) | ((mag >> shift) & 0x0F)
    };
    (aval ^ mask) as u8
}

/// Decode one A-law byte to a linear 16-bit sample.
pub fn alaw_decode(code: u8) -> i16 {
    ALAW_TABLE[code as usize]
}

const fn mulaw_decode_slow(code: u8) -> i16 {
    let u = !code;
    let sign = u & 0x80;
    let exponent = ((u >> 4) & 0x07) as i32;
    let mantissa = (u & 0x0F) as i32;
    let magnitude = (((mantissa << 3) + MULAW_BIAS) << exponent) - MULAW_BIAS;
    if sign != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

const fn alaw_decode_slow(code: u8) -> i16 {
    let a = (code ^ 0x55) as i32;
    let mut t = (a & 0x0F) << 4;
    let seg = (a & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    if a & 0x80 != 0 { t as i16 } else { -t as i16 }
}

static MULAW_TABLE: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = mulaw_decode_slow(i as u8);
        i += 1;
    }
    t
};

static ALAW_TABLE: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = alaw_decode_slow(i as u8);
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mulaw_round_trip_is_idempotent_on_every_code() {
        for code in 0..=255u8 {
            let linear = mulaw_decode(code);
            let again = mulaw_encode(linear);
            // 0x7F (negative zero) re-encodes as 0xFF (positive zero).
            if code == 0x7F {
                assert_eq!(again, 0xFF);
            } else {
                assert_eq!(again, code, "code {code:#04x} -> {linear}");
            }
        }
    }

    #[test]
    fn mulaw_error_is_within_half_a_step() {
        for s in (i16::MIN..=i16::MAX).step_by(7) {
            let back = i32::from(mulaw_decode(mulaw_encode(s)));
            let s = i32::from(s).clamp(-32_635, 32_635);
            let err = (back - s).abs();
            // Step size doubles per segment; the largest step is 1024 (half: 512+bias slack).
            let step = ((s.abs() + 0x84) >> 7).max(1) * 8 + 16;
            assert!(err <= step.min(1040), "s={s} back={back} err={err}");
        }
    }

    #[test]
    fn alaw_reference_points_and_round_trip() {
        // G.711 A-law: 0xD5 is the smallest positive value, 0x55 the smallest negative.
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_decode(0xAA), 32_256);
        assert_eq!(alaw_decode(0x2A), -32_256);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(alaw_encode(-1), 0x55);
        assert_eq!(alaw_encode(32_767), 0xAA);
        assert_eq!(alaw_encode(-32_768), 0x2A);
        for code in 0..=255u8 {
            assert_eq!(alaw_encode(alaw_decode(code)), code, "code {code:#04x}");
        }
    }
}
