//! Embeds the page's files from `ui/dist` (our static files and the pinned vendor builds that
//! `make ui` assembles there), so the Router serves the same files in the desktop app and over HTTP.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn main() {
    // Read when the script runs, not baked in when it was compiled: a build script compiled in
    // another checkout (a copied `target/`) would otherwise embed that checkout's files.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dist = Path::new(&manifest).join("../../ui/dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    let mut found = Vec::new();
    for sub in ["static", "vendor"] {
        files(&dist.join(sub), &mut found);
    }
    if !found.iter().any(|p| p.ends_with("vendor/htmx.min.js")) {
        panic!(
            "{} is missing or incomplete: run `make ui` (npm ci + ui/build.mjs) first",
            dist.display()
        );
    }
    found.sort();
    let mut code = String::from("pub(crate) static FILES: &[(&str, &[u8])] = &[\n");
    for path in &found {
        let rel = path.strip_prefix(&dist).expect("under dist");
        let url = format!("/{}", rel.to_string_lossy().replace('\\', "/"));
        let abs = path.canonicalize().expect("an existing file");
        let _ = writeln!(code, "    ({url:?}, include_bytes!({:?})),", abs.display());
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("assets.rs");
    std::fs::write(out, code).expect("write assets.rs");
}
