#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| paymesh_store::fuzzing::backup_restore(data));
