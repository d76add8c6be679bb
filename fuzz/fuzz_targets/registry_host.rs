//! libFuzzer's entry for the `registry_host` property: tests/fuzz_properties/registry_host.rs says what
//! it checks and what the input is.
#![no_main]

#[path = "../../tests/fuzz_properties/registry_host.rs"]
mod property;

libfuzzer_sys::fuzz_target!(|text: &str| property::check(text));
