//! Lists the guest programs in `examples/` so the host's tests can assert that
//! each one has a test (the wasmtime `test-programs` pattern).

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=examples");
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join("examples");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            (path.extension()? == "rs").then(|| path.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    names.sort();
    let mut out = String::from(
        "/// Invokes `$mac!(name)` once for every guest program in `examples/`.\n\
         #[macro_export]\nmacro_rules! foreach_guest {\n    ($mac:ident) => {\n",
    );
    for name in &names {
        let _ = writeln!(out, "        $mac!({name});");
    }
    out.push_str("    };\n}\n\n/// Every guest program, by name.\npub const GUESTS: &[&str] = &[\n");
    for name in &names {
        let _ = writeln!(out, "    \"{name}\",");
    }
    out.push_str("];\n");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default());
    if let Err(e) = std::fs::write(out_dir.join("guests.rs"), out) {
        panic!("writing guests.rs: {e}");
    }
}
