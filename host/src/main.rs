//! The `sluice` command: everything lives in the library's `cli` module.

fn main() -> std::process::ExitCode {
    sluice::cli::main()
}
