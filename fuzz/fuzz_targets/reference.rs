//! libFuzzer's entry for the `reference` property: tests/fuzz_properties/reference.rs says what
//! it checks and what the input is.
#![no_main]

#[path = "../../tests/fuzz_properties/reference.rs"]
mod property;

libfuzzer_sys::fuzz_target!(|input: &str| property::check(input));
