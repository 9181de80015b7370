//! `oath-service`: parse the command line, run it, report failure as one line.

use clap::Parser;
use oath_service::cli::{self, Cli};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(message) = cli::run(cli).await {
        eprintln!("oath-service: {message}");
        std::process::exit(1);
    }
}
