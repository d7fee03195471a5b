#![no_main]
// Placeholder until this target is written.
libfuzzer_sys::fuzz_target!(|_data: &[u8]| {});
