//! `flashstock`: parses the command line, runs the command, prints its report; exit status 1
//! when the server refused or did not find what was asked.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = flashstock_admin::Cli::parse();
    let report = flashstock_admin::run(&cli).await?;
    print!("{}", report.render(cli.json));
    if !report.ok {
        std::process::exit(1);
    }
    Ok(())
}
