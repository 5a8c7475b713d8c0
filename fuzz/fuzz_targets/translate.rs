//! Fuzz target `translate`: the body is `ringgate_fuzz_checks`'s check of the same name.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(check) = ringgate_fuzz_checks::target("translate") {
        check(data);
    }
});
