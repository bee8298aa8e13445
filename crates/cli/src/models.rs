//! `smollm3 pull` and `smollm3 models`: the model downloader from the command line. The final path goes
//! to stdout, progress to stderr, so `MODEL=$(smollm3 pull --catalog ID)` works in scripts.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use download::{
    human_bytes, Catalog, Config, Control, Downloader, Outcome, Progress, Source, State,
    Verification,
};
use serde_json::json;

#[derive(Args)]
pub struct DirArgs {
    /// Folder that holds the models.
    #[arg(long, env = "SMOLLM3_MODELS_DIR", default_value = "models")]
    dir: PathBuf,
}

#[derive(Args)]
pub struct PullArgs {
    /// Hub repository, e.g. ggml-org/SmolLM3-3B-GGUF.
    #[arg(required_unless_present = "catalog", requires = "file")]
    repo: Option<String>,
    /// File in the repository, e.g. SmolLM3-Q4_K_M.gguf.
    file: Option<String>,
    /// Download a catalog model by id instead (see `smollm3 models`).
    #[arg(long, conflicts_with_all = ["repo", "file", "revision", "sha256"])]
    catalog: Option<String>,
    /// Branch, tag or commit.
    #[arg(long, default_value = "main")]
    revision: String,
    /// Expected SHA-256 of the file; without it the hub's X-Linked-ETag is checked.
    #[arg(long)]
    sha256: Option<String>,
    #[command(flatten)]
    dir: DirArgs,
    /// Hub or mirror to download from.
    #[arg(long, env = "HF_ENDPOINT", default_value = download::DEFAULT_ENDPOINT)]
    endpoint: String,
    /// Access token for gated or private repositories.
    #[arg(long, env = "HF_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Free disk space to leave untouched, in bytes.
    #[arg(long, default_value_t = 1_000_000_000)]
    reserve: u64,
    /// Attempts after a dropped connection or server error, each resuming where the last stopped.
    #[arg(long, default_value_t = 5)]
    retries: u32,
}

#[derive(Args)]
pub struct ModelsArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
}

pub fn pull(args: PullArgs) -> Result<()> {
    let source = match (&args.catalog, &args.repo, &args.file) {
        (Some(id), _, _) => Catalog::builtin().get(id)?.source(),
        (None, Some(repo), Some(file)) => {
            let s = Source::new(repo, file).with_revision(&args.revision);
            match &args.sha256 {
                Some(sha) => s.with_sha256(sha)?,
                None => s,
            }
        }
        _ => unreachable!("clap requires REPO and FILE or --catalog"),
    };
    let mut config = Config::new(&args.dir.dir)
        .with_endpoint(&args.endpoint)
        .with_token(args.token.clone());
    config.free_space_reserve = args.reserve;
    config.max_retries = args.retries;
    let downloader = Downloader::new(config);
    let mut line = ProgressLine::new();
    let outcome = downloader
        .download(&source, &Control::new(), |p| line.show(p))
        .with_context(|| format!("downloading {} from {}", source.file, source.repo));
    line.finish();
    match outcome? {
        Outcome::Installed(done) => {
            match done.verification {
                Verification::Pinned => eprintln!("SHA-256 verified against the pinned checksum"),
                Verification::Hub => eprintln!("SHA-256 verified against the hub's checksum"),
                Verification::Unverified => eprintln!(
                    "warning: no checksum was available; the file is unverified (SHA-256 {})",
                    done.sha256
                ),
            }
            println!("{}", done.path.display());
        }
        Outcome::AlreadyInstalled(path) => {
            eprintln!("already installed");
            println!("{}", path.display());
        }
        // Nothing in this command pauses or cancels; a Ctrl-C leaves the .part file for the next run.
        Outcome::Paused { .. } | Outcome::Cancelled => anyhow::bail!("download stopped"),
    }
    Ok(())
}

pub fn models(args: ModelsArgs) -> Result<()> {
    let catalog = Catalog::builtin();
    let inv = download::scan(&args.dir.dir, &catalog)?;
    if args.json {
        let installed: Vec<_> = inv
            .installed
            .iter()
            .map(|m| json!({ "name": m.name, "path": m.path, "size": m.size, "catalog_id": m.catalog_id }))
            .collect();
        let partial: Vec<_> = inv
            .partial
            .iter()
            .map(|p| json!({ "name": p.name, "downloaded": p.downloaded, "total": p.total, "catalog_id": p.catalog_id }))
            .collect();
        let entries: Vec<_> = catalog
            .entries()
            .iter()
            .map(|e| {
                json!({
                    "id": e.id, "name": e.name, "repo": e.repo, "file": e.file, "revision": e.revision,
                    "size": e.size, "quantization": e.quantization, "parameters": e.parameters,
                    "license": e.license, "sha256": e.sha256, "recommended": e.recommended,
                    "description": e.description,
                })
            })
            .collect();
        println!(
            "{}",
            json!({ "installed": installed, "partial": partial, "catalog": entries })
        );
        return Ok(());
    }
    println!("Installed in {}:", args.dir.dir.display());
    if inv.installed.is_empty() {
        println!("  (none)");
    }
    for m in &inv.installed {
        let id = m.catalog_id.as_deref().unwrap_or("-");
        println!("  {:<40} {:>9}  {id}", m.name, human_bytes(m.size));
    }
    if !inv.partial.is_empty() {
        println!("Partial downloads (resume with `smollm3 pull`):");
        for p in &inv.partial {
            let pct = p.percent().map_or("?".into(), |v| format!("{v:.0}%"));
            println!("  {:<40} {:>9}  {pct}", p.name, human_bytes(p.downloaded));
        }
    }
    println!("Catalog (`smollm3 pull --catalog ID`):");
    for e in catalog.entries() {
        let mark = if e.recommended { "*" } else { " " };
        let have = if inv.installed.iter().any(|m| m.name == e.local_name()) {
            "installed"
        } else {
            ""
        };
        println!(
            " {mark}{:<30} {:<28} {:>6} {:>9}  {have}",
            e.id,
            e.name,
            e.quantization,
            human_bytes(e.size)
        );
    }
    Ok(())
}

/// One status line on stderr, redrawn in place on a terminal; elsewhere only state changes are printed.
struct ProgressLine {
    tty: bool,
    last_state: Option<State>,
    drawn: bool,
}

impl ProgressLine {
    fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            last_state: None,
            drawn: false,
        }
    }

    fn show(&mut self, p: &Progress) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{}", describe(p));
            let _ = err.flush();
            self.drawn = true;
        } else if self.last_state != Some(p.state) {
            let _ = writeln!(err, "{}", describe(p));
        }
        self.last_state = Some(p.state);
    }

    fn finish(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}

fn describe(p: &Progress) -> String {
    let state = match p.state {
        State::Connecting => "connecting",
        State::Downloading => "downloading",
        State::Retrying => "connection lost, retrying",
        State::Verifying => "verifying",
        State::Paused => "paused",
        State::Cancelled => "cancelled",
        State::Done => "done",
    };
    let amount = match p.total {
        Some(t) => format!("{} / {}", human_bytes(p.downloaded), human_bytes(t)),
        None => human_bytes(p.downloaded),
    };
    let pct = p.percent.map_or(String::new(), |v| format!(" {v:5.1}%"));
    let speed = if p.state == State::Downloading && p.bytes_per_sec > 0.0 {
        format!(" {}/s", human_bytes(p.bytes_per_sec as u64))
    } else {
        String::new()
    };
    let eta = match (p.state, p.eta_secs) {
        (State::Downloading, Some(s)) => format!(" ETA {}:{:02}", s / 60, s % 60),
        _ => String::new(),
    };
    format!("{state}{pct} {amount}{speed}{eta}")
}
