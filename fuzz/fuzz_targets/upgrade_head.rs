#![no_main]
// See phx_threads::fuzzing::upgrade_head for what this target covers.
libfuzzer_sys::fuzz_target!(|data: &[u8]| phx_threads::fuzzing::upgrade_head(data));
