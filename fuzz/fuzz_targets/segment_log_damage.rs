#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| paymesh_store::fuzzing::segment_log_damage(data));
