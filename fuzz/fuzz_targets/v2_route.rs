//! libFuzzer's entry for the `v2_route` property: tests/fuzz_properties/v2_route.rs says what
//! it checks and what the input is.
#![no_main]

#[path = "../../tests/fuzz_properties/v2_route.rs"]
mod property;

libfuzzer_sys::fuzz_target!(|path: &str| property::check(path));
