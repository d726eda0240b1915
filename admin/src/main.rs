//! `flashstock`: parses the command line, runs the command, prints its report; exit status 1
//! when the server refused or did not find what was asked, 2 when it could not be asked.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = flashstock_admin::Cli::parse();
    let report = match flashstock_admin::run(&cli).await {
        Ok(report) => report,
        Err(err) => {
            // An expected failure (a bad value, a server or etcd not reached) is said in one
            // line, without the backtrace `anyhow` would add under RUST_BACKTRACE.
            eprintln!("error: {err}");
            std::process::exit(2);
        }
    };
    print!("{}", report.render(cli.json));
    if !report.ok {
        std::process::exit(1);
    }
    Ok(())
}
