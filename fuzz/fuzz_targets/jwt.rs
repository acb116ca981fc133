#![no_main]
//! `runtap::fuzzing::jwt` (docs/fuzzing.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| runtap::fuzzing::jwt(data));
