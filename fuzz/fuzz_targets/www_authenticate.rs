//! libFuzzer's entry for the `www_authenticate` property: tests/fuzz_properties/www_authenticate.rs says what
//! it checks and what the input is.
#![no_main]

#[path = "../../tests/fuzz_properties/www_authenticate.rs"]
mod property;

libfuzzer_sys::fuzz_target!(|header: &str| property::check(header));
