#![no_main]
// See phx_threads::fuzzing::longpoll for what this target covers.
libfuzzer_sys::fuzz_target!(|data: &[u8]| phx_threads::fuzzing::longpoll(data));
