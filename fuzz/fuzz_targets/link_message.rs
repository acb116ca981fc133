#![no_main]
//! `runtap::fuzzing::link_message` (docs/fuzzing.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| runtap::fuzzing::link_message(data));
