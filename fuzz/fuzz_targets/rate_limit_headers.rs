//! libFuzzer's entry for the `rate_limit_headers` property: tests/fuzz_properties/rate_limit_headers.rs says what
//! it checks and what the input is.
#![no_main]

#[path = "../../tests/fuzz_properties/rate_limit_headers.rs"]
mod property;

libfuzzer_sys::fuzz_target!(|input: &str| property::check(input));
