//! paymesh-tests holds only integration tests under `tests/tests/`.
