//! The `strata` command.

mod verify_redo;
mod waldump;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Strata: disaggregated storage for PostgreSQL 15"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decode PostgreSQL 15 WAL files and print their records the way pg_waldump does.
    Waldump(waldump::WaldumpArgs),
    /// Import a base data directory, ingest WAL into a timeline and check every natively
    /// redone page against Postgres's consistency-check images with GetPage@LSN.
    VerifyRedo(verify_redo::VerifyRedoArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Waldump(args) => waldump::run(args),
        Command::VerifyRedo(args) => verify_redo::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("strata: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
