//! `oath-service`: parse the command line, run it, report failure as one line.

use clap::Parser;
use oath_service::cli::{self, Cli};

#[tokio::main]
async fn main() {
    let cli = Cli::try_parse().unwrap_or_else(|e| usage_error(e));
    if let Err(message) = cli::run(cli).await {
        eprintln!("oath-service: {message}");
        std::process::exit(1);
    }
}

/// `--help` and `--version` print as usual; a usage error is one line and exit 1 (exit 2 is
/// `import`'s "some rows were not created").
fn usage_error(e: clap::Error) -> ! {
    if !e.use_stderr() {
        e.exit();
    }
    // clap's message runs up to the first blank line (a list of missing arguments spans several
    // lines); the usage and tips after it are left to --help.
    let rendered = e.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    eprintln!("oath-service: {message} (see --help)");
    std::process::exit(1);
}
