//! The PostgreSQL baseline's tests (`postgres_baseline.rs`) are built only
//! with the crate's `postgres` feature. The README's test command turns it
//! on; a run without it fails here, naming the command, rather than
//! passing without them. With the feature, this file holds no test.

#[cfg(not(feature = "postgres"))]
#[test]
fn the_postgresql_baseline_is_built_and_tested() {
    panic!(
        "the PostgreSQL baseline's tests are not built: run the README's test command, \
         `cargo test --workspace --locked --features paymesh-cli/postgres`"
    );
}
