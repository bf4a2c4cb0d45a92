//! The `portcullis` binary: parse the command line and run it.

fn main() -> std::process::ExitCode {
    portcullis::cli::main()
}
