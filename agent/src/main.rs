use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use multinic_agent::args::Args;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = multinic_runtime::init_logging(args.log_format, &args.log_level) {
        eprintln!("multinic-agent: {e}");
        return ExitCode::from(2);
    }
    // One thread: the agent's work is a stream and a few timers; applies run
    // on the blocking pool. Worker threads would only add memory.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("multinic-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(args.run());
    // An apply given up at shutdown may still sit in a host command or the
    // kernel, and cannot be cancelled: exit without waiting for it.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Each error says its cause once, however the layers wrap it.
            let error = multinic_runtime::error_chain(e.as_ref());
            tracing::error!(error = %error, "multinic-agent failed");
            eprintln!("multinic-agent: {error}");
            ExitCode::FAILURE
        }
    }
}
