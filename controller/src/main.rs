use std::process::ExitCode;

use clap::Parser;
use multinic_controller::args::Args;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = multinic_runtime::init_logging(args.log_format, &args.log_level) {
        eprintln!("multinic-controller: {e}");
        return ExitCode::from(2);
    }
    match args.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Each error says its cause once, however the layers wrap it.
            let error = multinic_runtime::error_chain(e.as_ref());
            tracing::error!(error = %error, "multinic-controller failed");
            eprintln!("multinic-controller: {error}");
            ExitCode::FAILURE
        }
    }
}
