//! The `paymesh` command. Everything it does lives in the `paymesh_cli`
//! library; this file only hands it the arguments.

fn main() -> std::process::ExitCode {
    paymesh_cli::run(std::env::args_os())
}
