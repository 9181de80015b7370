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
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    eprintln!("oath-service: {first} (see --help)");
    std::process::exit(1);
}
