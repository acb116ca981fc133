#![no_main]
//! `runtap::fuzzing::events_fd` (docs/fuzzing.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| runtap::fuzzing::events_fd(data));
