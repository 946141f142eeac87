//! `webhook-server`: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser as _;
use webhook_server::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_tracing(cli.log_format);
    let workers = match &cli.command {
        Command::Serve(args) => args.workers,
        _ => Some(1),
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = workers {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => report(cli::serve(*args).await),
            Command::Check { config, registry } => match cli::check(&config, &registry).await {
                Ok(names) => {
                    println!("ok: {} valid ({})", config.display(), names.join(", "));
                    ExitCode::SUCCESS
                }
                Err(e) => report(Err(e)),
            },
            Command::Test(args) => match cli::test(&args).await {
                Ok((_, 0)) => ExitCode::SUCCESS,
                Ok(_) => ExitCode::FAILURE,
                Err(e) => report(Err(e)),
            },
            Command::Bench(args) => report(cli::bench(&args).await),
            Command::Push(args) => report(cli::push(&args).await),
            Command::Run(args) => {
                match webhook_server::offline::run(
                    &args.config,
                    &args.policy,
                    &args.request,
                    args.context.as_deref(),
                    &args.registry,
                )
                .await
                {
                    Ok(result) => {
                        println!("{}", serde_json::to_string_pretty(&result.review).unwrap_or_default());
                        match result.failure {
                            None => ExitCode::SUCCESS,
                            Some(failure) => {
                                eprintln!("error: {failure}");
                                ExitCode::from(3)
                            }
                        }
                    }
                    Err(e) => report(Err(e)),
                }
            }
        }
    })
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
