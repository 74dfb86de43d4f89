//! Lower-case hex, the one encoder of the workspace (hashes, ids, trace context).

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

#[cfg(test)]
mod tests {
    use super::*;

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
