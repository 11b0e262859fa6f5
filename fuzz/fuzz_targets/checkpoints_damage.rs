#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| paymesh_store::fuzzing::checkpoints_damage(data));
