#![no_main]
//! `runtap::fuzzing::journal_recovery` (docs/fuzzing.md).

libfuzzer_sys::fuzz_target!(|data: &[u8]| runtap::fuzzing::journal_recovery(data));
