//! libFuzzer's entry for the `config_yml` property: tests/fuzz_properties/config_yml.rs says what
//! it checks and what the input is.
#![no_main]

#[path = "../../tests/fuzz_properties/config_yml.rs"]
mod property;

libfuzzer_sys::fuzz_target!(|input: &str| property::check(input));
