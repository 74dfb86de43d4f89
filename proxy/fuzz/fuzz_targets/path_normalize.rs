//! The path normaliser on any bytes: it never panics, and what it accepts is canonical —
//! normalising it again changes nothing, and it holds none of what the normaliser exists to
//! remove (dot segments, empty segments, an encoded `/` or `\`, control characters).

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_proxy::data_plane::path::normalize;

fuzz_target!(|raw: &[u8]| {
    let Ok(target) = normalize(raw) else {
        return;
    };
    let path = &target.path;
    assert!(path.starts_with('/'), "not absolute: {path:?}");
    for segment in path.split('/').skip(1) {
        assert!(segment != "." && segment != "..", "dot segment left: {path:?}");
    }
    assert!(!path.contains("//"), "empty segment left: {path:?}");
    let upper = path.to_ascii_uppercase();
    for banned in ["%2F", "%5C", "%00", "\\", ";", "#"] {
        assert!(!upper.contains(banned), "{banned} left in {path:?}");
    }
    assert!(!path.bytes().any(|b| b.is_ascii_control()), "control byte in {path:?}");
    let again = normalize(target.path_and_query().as_bytes())
        .unwrap_or_else(|e| panic!("its own output refused ({e}): {path:?}"));
    assert_eq!(again, target, "normalising twice changed it");
});
