//! `pushpull-bench`: the benchmark lab, kept out of the `pushpull` binary so that a server
//! links no fault proxy, load generator or plotting. `pushpull bench ARGS` runs it; it serves
//! with the `pushpull` binary installed beside it, on 127.0.0.1 only, and every run is bounded
//! in count and time.

mod bench;
mod churn;
mod cluster;
mod machine;
mod peers;
mod plot;
mod pushorpull;
mod soak;

use std::process::ExitCode;

use clap::Parser;

/// Measure the transports side by side against a server on 127.0.0.1.
#[derive(Parser)]
#[command(
    name = "pushpull-bench",
    version,
    about = "Measure the transports side by side against a server on 127.0.0.1"
)]
struct Cli {
    #[command(subcommand)]
    bench: bench::Bench,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("PUSHPULL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench::run(cli.bench)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            match err.kind() {
                pushpull::ErrorKind::Config => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
