//! libFuzzer's entry for the `fleet_route` property: tests/fuzz_properties/fleet_route.rs says what
//! it checks and what the input is.
#![no_main]

#[path = "../../tests/fuzz_properties/fleet_route.rs"]
mod property;

libfuzzer_sys::fuzz_target!(|input: &str| property::check(input));
