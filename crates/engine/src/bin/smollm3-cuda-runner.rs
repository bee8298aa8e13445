//! `smollm3-cuda-runner`: the model on a device, in a process of its own (see
//! `engine::runner`). The app and the CLI start it, serve the protocol on its stdin/stdout,
//! and read why it stopped from its exit status and stderr. Built with `--features cuda` it
//! is the CUDA build's runner; without, it serves Candle's CPU device (what the tests use).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => match engine::runner::serve(std::io::stdin().lock(), std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("smollm3-cuda-runner: {e}");
                ExitCode::from(2)
            }
        },
        ["--devices"] => match serde_json::to_string(&engine::device::local_devices()) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("smollm3-cuda-runner: {e}");
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!(
                "usage: smollm3-cuda-runner [--devices]\n\
                 Started by smollm3 and the app to run a model on a device; not for direct use.\n\
                 --devices  print this runner's devices as JSON"
            );
            ExitCode::from(2)
        }
    }
}
