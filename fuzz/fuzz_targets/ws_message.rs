#![no_main]
//! `runtap::fuzzing::ws_message` (docs/fuzzing.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| runtap::fuzzing::ws_message(data));
