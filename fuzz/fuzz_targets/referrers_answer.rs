//! libFuzzer's entry for the `referrers_answer` property: tests/fuzz_properties/referrers_answer.rs says what
//! it checks and what the input is.
#![no_main]

#[path = "../../tests/fuzz_properties/referrers_answer.rs"]
mod property;

libfuzzer_sys::fuzz_target!(|input: &str| property::check(input));
