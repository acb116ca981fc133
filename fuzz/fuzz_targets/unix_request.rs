#![no_main]
//! `runtap::fuzzing::unix_request` (docs/fuzzing.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| runtap::fuzzing::unix_request(data));
