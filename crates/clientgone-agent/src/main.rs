//! `clientgone`: demo server (and, later, traffic generator and proxy).

use std::process::ExitCode;

/// `eprintln!` without its panic: a closed stderr must not stop the server.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

use clap::Parser;
use clap::error::ErrorKind;
use clientgone_agent::cli::{Cli, Command};
use clientgone_agent::demo::{self, DemoConfig};

/// Exit code for bad flags and start-up failures.
const USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            say!("clientgone: {} (see 'clientgone --help')", first_line(&e));
            return ExitCode::from(USAGE);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            say!("clientgone: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Demo(args) => {
            let config = DemoConfig {
                listen: args.listen,
                metrics_listen: args.metrics_listen,
                options: args.connection.options(),
            };
            let running = match demo::start(config).await {
                Ok(running) => running,
                Err(e) => {
                    say!("clientgone: {e}");
                    return ExitCode::from(USAGE);
                }
            };
            say!(
                "clientgone demo: serving http://{0}/hello, metrics on http://{1}/metrics",
                running.addr,
                running.metrics_addr
            );
            let token = running.shutdown_token();
            tokio::spawn(async move {
                shutdown_signal().await;
                say!("clientgone demo: shutting down, letting requests in flight finish");
                token.cancel();
            });
            match running.wait().await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    say!("clientgone: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn first_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let line = rendered.lines().next().unwrap_or("invalid arguments");
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
