//! The codec against tables written by CPython's `audioop` (Sun's reference
//! G.711 implementation), see `tools/g711_reference.py`.

use voxbridge_audio::{alaw_decode, alaw_encode, mulaw_decode, mulaw_encode};

#[test]
fn every_code_and_sampled_linear_value_matches_the_reference() {
    let table = include_str!("data/g711_reference.txt");
    let mut checked = 0;
    for line in table.lines() {
        let mut f = line.split_whitespace();
        let (Some(kind), Some(a), Some(b)) = (f.next(), f.next(), f.next()) else {
            panic!("bad line {line}");
        };
        let a: i32 = a.parse().expect("number");
        let b: i32 = b.parse().expect("number");
        match kind {
            "ulaw_dec" => assert_eq!(i32::from(mulaw_decode(a as u8)), b, "{line}"),
            "alaw_dec" => assert_eq!(i32::from(alaw_decode(a as u8)), b, "{line}"),
            "ulaw_enc" => assert_eq!(i32::from(mulaw_encode(a as i16)), b, "{line}"),
            "alaw_enc" => assert_eq!(i32::from(alaw_encode(a as i16)), b, "{line}"),
            other => panic!("unknown kind {other}"),
        }
        checked += 1;
    }
    assert!(checked > 1500, "reference table too short: {checked}");
}
