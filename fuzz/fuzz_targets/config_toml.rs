#![no_main]
//! `runtap::fuzzing::config_toml` (docs/fuzzing.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| runtap::fuzzing::config_toml(data));
