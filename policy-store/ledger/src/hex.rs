//! Lower-case hex, the one encoder (and decoder) of the workspace (hashes, ids, trace
//! context, page tokens, sealed files).

use sha2::{Digest, Sha256};

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends `bytes` as lower-case hex.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    // A chunk at a time through a stack buffer: pushing a char at a time checks the
    // capacity and encodes UTF-8 for each digit.
    for chunk in bytes.chunks(32) {
        let mut digits = [0u8; 64];
        for (&byte, pair) in chunk.iter().zip(digits.chunks_exact_mut(2)) {
            if let [high, low] = pair {
                *high = DIGITS.get(usize::from(byte >> 4)).copied().unwrap_or(b'0');
                *low = DIGITS
                    .get(usize::from(byte & 0x0f))
                    .copied()
                    .unwrap_or(b'0');
            }
        }
        let text = digits.get(..chunk.len() * 2).unwrap_or_default();
        // ASCII digits only.
        out.push_str(std::str::from_utf8(text).unwrap_or_default());
    }
}

/// Hex of SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// `bytes` as lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

/// Hex (either case) to bytes; `None` for an odd length or anything but hex digits.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let digit = |b: &u8| {
        char::from(*b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some(digit(pair.first()?)? << 4 | digit(pair.get(1)?)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_reverses_encoding_and_refuses_what_is_not_hex() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&hex(&all)), Some(all));
        assert_eq!(decode("ABcd"), Some(vec![0xab, 0xcd]));
        assert_eq!(decode(""), Some(vec![]));
        for bad in ["a", "0g", "+f", " 0", "é0"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_byte_is_two_lower_case_digits() {
        let all: Vec<u8> = (0..=255).collect();
        let text = hex(&all);
        for (byte, pair) in all.iter().zip(text.as_bytes().chunks(2)) {
            assert_eq!(pair, format!("{byte:02x}").as_bytes());
        }
        let mut out = String::from("x-");
        push_hex(&mut out, &[0xab, 0x01]);
        assert_eq!(out, "x-ab01");
        // Longer than one chunk of the encoder.
        let long: Vec<u8> = (0..100).collect();
        let expected: String = long.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&long), expected);
        assert_eq!(hex(&[]), "");
    }
}
