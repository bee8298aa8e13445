fn main() {
    // The app embeds ui/dist (frontendDist) and the generated icons: both come from `make ui`.
    for needed in ["../ui/dist/vendor/htmx.min.js", "../icons/gen/icon.png"] {
        if !std::path::Path::new(needed).exists() {
            panic!("{needed} is missing: run `make ui` (npm ci + ui/build.mjs + icons) before building the app");
        }
    }
    println!("cargo:rerun-if-changed=../ui/templates");
    tauri_build::build()
}
