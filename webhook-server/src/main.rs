//! `webhook-server`: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser as _;
use webhook_server::cli::{self, Cli, Command};

fn main() -> ExitCode {
    lazy_code_pages();
    let cli = Cli::parse();
    cli::init_tracing(cli.log_format);
    match &cli.command {
        Command::CompileModule { max_instances, output } => return report(cli::compile_module(*max_instances, output)),
        Command::Precompile { output, modules } => {
            return report(cli::precompile(output, modules).map(|files| {
                for file in files {
                    println!("{}", file.display());
                }
            }));
        }
        _ => {}
    }
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
            Command::CompileModule { .. } | Command::Precompile { .. } => ExitCode::FAILURE,
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

/// Maps the binary's pages one at a time as they are used. By default
/// each page fault on a file maps its 64 KiB neighbourhood ("fault-around")
/// and reads ahead more: for a binary this size, most of ~14 MiB of the
/// idle server's resident memory was code and data it never ran or read.
fn lazy_code_pages() {
    #[cfg(target_os = "linux")]
    {
        let (Ok(exe), Ok(maps)) = (std::fs::read_link("/proc/self/exe"), std::fs::read_to_string("/proc/self/maps"))
        else {
            return;
        };
        for line in maps.lines() {
            let mut fields = line.split_whitespace();
            let (Some(range), Some(_perms)) = (fields.next(), fields.next()) else { continue };
            if fields.nth(3).map(std::path::Path::new) != Some(exe.as_path()) {
                continue;
            }
            let Some((start, end)) = range.split_once('-') else { continue };
            let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else {
                continue;
            };
            advise_random(start, end.saturating_sub(start));
        }
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn advise_random(start: usize, len: usize) {
    // SAFETY: MADV_RANDOM is advice about paging of an existing mapping of
    // this process (read from /proc/self/maps); it changes no contents or
    // permissions, and a failure (e.g. the range is gone) is harmless.
    unsafe {
        libc::madvise(start as *mut libc::c_void, len, libc::MADV_RANDOM);
    }
}
