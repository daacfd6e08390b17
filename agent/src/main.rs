use std::process::ExitCode;

use clap::Parser;
use multinic_agent::args::Args;

// One thread: the agent's work is a stream and a few timers; applies run on
// the blocking pool. Worker threads would only add memory.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = multinic_proto::runtime::init_logging(args.log_format, &args.log_level) {
        eprintln!("multinic-agent: {e}");
        return ExitCode::from(2);
    }
    match args.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Each error says its cause once, however the layers wrap it.
            let error = multinic_proto::runtime::error_chain(e.as_ref());
            tracing::error!(error = %error, "multinic-agent failed");
            eprintln!("multinic-agent: {error}");
            ExitCode::FAILURE
        }
    }
}
