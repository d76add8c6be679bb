//! libFuzzer's entry for the `range` property: tests/fuzz_properties/range.rs says what
//! it checks and what the input is.
#![no_main]

#[path = "../../tests/fuzz_properties/range.rs"]
mod property;

libfuzzer_sys::fuzz_target!(|input: &str| property::check(input));
