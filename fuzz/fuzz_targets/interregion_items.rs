#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| paymesh_node::fuzzing::interregion_items(data));
