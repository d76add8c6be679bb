//! libFuzzer's entry for the `manifest` property: tests/fuzz_properties/manifest.rs says what
//! it checks and what the input is.
#![no_main]

#[path = "../../tests/fuzz_properties/manifest.rs"]
mod property;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| property::check(bytes));
