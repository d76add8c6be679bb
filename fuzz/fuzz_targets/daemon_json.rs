//! libFuzzer's entry for the `daemon_json` property: tests/fuzz_properties/daemon_json.rs says what
//! it checks and what the input is.
#![no_main]

#[path = "../../tests/fuzz_properties/daemon_json.rs"]
mod property;

libfuzzer_sys::fuzz_target!(|text: &str| property::check(text));
