//! Lower-case hex, the one encoder of the workspace (hashes, ids, trace context).

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends `bytes` as lower-case hex.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    out.reserve(bytes.len() * 2);
    for &byte in bytes {
        for nibble in [byte >> 4, byte & 0x0f] {
            let digit = DIGITS.get(usize::from(nibble)).copied().unwrap_or(b'0');
            out.push(char::from(digit));
        }
    }
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
        assert_eq!(hex(&[]), "");
    }
}
