#![no_main]
//! `runtap::fuzzing::socketio_packets` (docs/fuzzing.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| runtap::fuzzing::socketio_packets(data));
