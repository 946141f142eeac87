//! Link options of the `webhook-server` binary.

fn main() {
    // Relative relocations packed (DT_RELR; glibc 2.36, binutils 2.38): the
    // ~50,000 entries of `.rela.dyn`, 1.2 MB that the loader reads at every
    // start and that then stay resident, become a few KiB. The binary stays
    // position-independent. An older linker ignores the option with a warning.
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
