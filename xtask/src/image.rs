//! `cargo xtask image`: the webhook-server image as an OCI image layout in a
//! tar file, written from the build outputs without Docker.
//!
//! The image has the layout `charts/image/Dockerfile` describes (the release
//! binary at `/usr/local/bin/webhook-server`, the built-in policies under
//! `/policies`, user 65532, the same entrypoint and command). Where the
//! Dockerfile starts from distroless/cc (Debian 12's glibc and libgcc), this
//! writer copies the shared libraries the binary links against from the
//! build machine, found with `ldd`, so the binary runs exactly as built.
//! The binary is stripped (`strip --strip-debug`): the line tables are most
//! of its size. The built-in policies are also shipped compiled, under
//! `/policies/compiled` (`webhook-server precompile`; the chart passes
//! `--precompiled`), so a pod's first start loads them instead of compiling
//! (when the node's CPU lacks a feature the build machine's had, the server
//! finds them unusable and compiles, as without them).
//!
//! The tar is what `ctr -n k8s.io images import` (and `docker load`,
//! `podman load`, `skopeo`) take: `oci-layout`, `index.json` and
//! `blobs/sha256/…` (one gzip layer, the config, the manifest). Entries are
//! sorted and dated at 0 (SOURCE_DATE_EPOCH when set), so the same inputs
//! give the same digest.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};

use crate::{cargo, run_cmd, wasm};

/// The image reference the chart uses by default (`image.repository` and the chart's appVersion).
pub const WEBHOOK_IMAGE: &str = "docker.io/portcullis/webhook-server:0.1.0";

/// `cargo xtask image` options.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Where to write the image tar.
    #[arg(long, default_value = "target/image/webhook-server.oci.tar")]
    pub out: PathBuf,
    /// Image reference recorded in the archive (what `ctr images import` names it).
    #[arg(long, default_value = WEBHOOK_IMAGE)]
    pub name: String,
    /// Add the test guest modules under /policies/test-guests (the Dockerfile's `e2e` target).
    #[arg(long)]
    pub e2e: bool,
}

/// What a written image is.
#[derive(Debug, Clone)]
pub struct Written {
    /// The tar file.
    pub path: PathBuf,
    /// Its reference.
    pub name: String,
    /// The manifest digest (`sha256:…`).
    pub digest: String,
    /// Size of the compressed layer.
    pub layer_bytes: u64,
}

/// One file or directory of a layer.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Absolute path in the image.
    pub path: String,
    /// Contents; `None` for a directory.
    pub contents: Option<Vec<u8>>,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
}

impl Entry {
    pub fn file(path: &str, contents: Vec<u8>, mode: u32) -> Self {
        Self { path: path.into(), contents: Some(contents), mode, uid: 0 }
    }

    pub fn dir(path: &str, mode: u32, uid: u64) -> Self {
        Self { path: path.into(), contents: None, mode, uid }
    }
}

/// The runtime configuration of an image.
#[derive(Debug, Clone)]
pub struct Config {
    pub user: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub exposed_ports: Vec<String>,
}

pub fn run(root: &Path, options: &Options) -> anyhow::Result<()> {
    let written = webhook_image(root, &root.join(&options.out), &options.name, options.e2e)?;
    println!(
        "wrote {} ({}, manifest {}, layer {:.1} MiB)",
        written.path.display(),
        written.name,
        written.digest,
        written.layer_bytes as f64 / f64::from(1 << 20)
    );
    println!("load it with: ctr -n k8s.io images import {}", written.path.display());
    Ok(())
}

/// Builds the policies and the release binary, and writes the webhook-server image.
pub fn webhook_image(root: &Path, out: &Path, name: &str, e2e: bool) -> anyhow::Result<Written> {
    let policies = wasm::build_policies(root)?;
    run_cmd(cargo().args(["build", "--release", "--locked", "--package", "webhook-server"]))?;
    let binary = root.join("target/release/webhook-server");
    let stripped = root.join("target/image/webhook-server.stripped");
    std::fs::create_dir_all(root.join("target/image"))?;
    run_cmd(Command::new("strip").arg("--strip-debug").arg("-o").arg(&stripped).arg(&binary))?;

    let mut entries = base_entries();
    entries.push(Entry::dir("/usr", 0o755, 0));
    entries.push(Entry::dir("/usr/local", 0o755, 0));
    entries.push(Entry::dir("/usr/local/bin", 0o755, 0));
    entries.push(Entry::file("/usr/local/bin/webhook-server", read(&stripped)?, 0o755));
    entries.extend(shared_libraries(&stripped)?);
    entries.push(Entry::dir("/policies", 0o755, 0));
    let modules = wasm_files(&policies)?;
    for module in &modules {
        let name = file_name(module)?;
        entries.push(Entry::file(&format!("/policies/{name}"), read(module)?, 0o444));
    }
    let compiled = root.join("target/image/compiled");
    if compiled.exists() {
        std::fs::remove_dir_all(&compiled).with_context(|| format!("removing {}", compiled.display()))?;
    }
    run_cmd(Command::new(&binary).arg("precompile").arg("--output").arg(&compiled).args(&modules))?;
    entries.push(Entry::dir("/policies/compiled", 0o755, 0));
    for artifact in files_with_extension(&compiled, "cwasm")? {
        let name = file_name(&artifact)?;
        entries.push(Entry::file(&format!("/policies/compiled/{name}"), read(&artifact)?, 0o444));
    }
    if e2e {
        entries.push(Entry::dir("/policies/test-guests", 0o755, 0));
        for module in wasm_files(&policies.join("test-guests"))? {
            let name = file_name(&module)?;
            entries.push(Entry::file(&format!("/policies/test-guests/{name}"), read(&module)?, 0o444));
        }
    }
    let config = Config {
        user: "65532:65532".into(),
        entrypoint: vec!["/usr/local/bin/webhook-server".into()],
        cmd: ["serve", "--config", "/etc/portcullis/config/config.yaml"].map(String::from).to_vec(),
        exposed_ports: vec!["8443/tcp".into()],
    };
    write(out, name, entries, &config)
}

/// What every image here has: the directories and account files a non-root
/// process expects (distroless has the same users).
pub fn base_entries() -> Vec<Entry> {
    vec![
        Entry::dir("/etc", 0o755, 0),
        Entry::file(
            "/etc/passwd",
            b"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
                .to_vec(),
            0o644,
        ),
        Entry::file("/etc/group", b"root:x:0:\nnonroot:x:65532:\n".to_vec(), 0o644),
        Entry::dir("/home", 0o755, 0),
        Entry::dir("/home/nonroot", 0o700, 65532),
        Entry::dir("/tmp", 0o1777, 0),
    ]
}

/// The shared libraries `ldd` resolves for `binary`, at the same paths, plus
/// the dynamic loader at the path the binary names.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<Entry>> {
    let out = Command::new("ldd").arg(binary).output().context("running ldd")?;
    if !out.status.success() {
        bail!("ldd {}: {}", binary.display(), String::from_utf8_lossy(&out.stderr));
    }
    let mut paths = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            paths.push(path.to_owned());
        }
    }
    if paths.is_empty() {
        return Ok(Vec::new()); // statically linked
    }
    let mut entries = Vec::new();
    let mut dirs: Vec<String> = Vec::new();
    for path in &paths {
        let mut dir = String::new();
        for part in Path::new(path).parent().iter().flat_map(|p| p.components()).skip(1) {
            dir.push('/');
            dir.push_str(&part.as_os_str().to_string_lossy());
            if !dirs.contains(&dir) {
                dirs.push(dir.clone());
            }
        }
        // Dereferenced: the image gets the file itself under the linked name.
        entries.push(Entry::file(path, read(Path::new(path))?, 0o755));
    }
    let mut all: Vec<Entry> = dirs.iter().map(|d| Entry::dir(d, 0o755, 0)).collect();
    all.extend(entries);
    Ok(all)
}

fn wasm_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    files_with_extension(dir, "wasm")
}

/// The files of `dir` (not its subdirectories) whose names end in `.extension`, sorted.
pub fn files_with_extension(dir: &Path, extension: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    Ok(files)
}

fn file_name(path: &Path) -> anyhow::Result<String> {
    Ok(path.file_name().context("a path without a file name")?.to_string_lossy().into_owned())
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn mtime() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Writes an OCI image layout holding one image of one layer as a tar at `out`.
pub fn write(out: &Path, name: &str, mut entries: Vec<Entry>, config: &Config) -> anyhow::Result<Written> {
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    entries.dedup_by(|a, b| a.path == b.path);
    let layer_tar = layer(&entries)?;
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&layer_tar)));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&layer_tar)?;
    let layer_gz = gz.finish()?;
    let layer_digest = hex::encode(Sha256::digest(&layer_gz));

    let ports: serde_json::Map<String, serde_json::Value> =
        config.exposed_ports.iter().map(|p| (p.clone(), serde_json::json!({}))).collect();
    let image_config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": config.user,
            "Entrypoint": config.entrypoint,
            "Cmd": config.cmd,
            "ExposedPorts": ports,
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "cargo xtask image", "comment": "written from the build outputs"}],
    }))?;
    let config_digest = hex::encode(Sha256::digest(&image_config));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": image_config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer_gz.len(),
        }],
    }))?;
    let manifest_digest = hex::encode(Sha256::digest(&manifest));
    let tag = name.rsplit_once(':').filter(|(_, t)| !t.contains('/')).map_or("latest", |(_, t)| t);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "annotations": {
                // containerd's name for the image; the OCI annotation is the tag.
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }))?;

    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = out.with_extension("tmp");
    let file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut archive = tar::Builder::new(std::io::BufWriter::new(file));
    let mut add = |path: &str, data: &[u8]| -> anyhow::Result<()> {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(mtime());
        header.set_entry_type(tar::EntryType::Regular);
        archive.append_data(&mut header, path, data)?;
        Ok(())
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add("index.json", &index)?;
    add(&format!("blobs/sha256/{layer_digest}"), &layer_gz)?;
    add(&format!("blobs/sha256/{config_digest}"), &image_config)?;
    add(&format!("blobs/sha256/{manifest_digest}"), &manifest)?;
    archive.into_inner()?.flush()?;
    std::fs::rename(&tmp, out)?;
    Ok(Written {
        path: out.to_owned(),
        name: name.to_owned(),
        digest: format!("sha256:{manifest_digest}"),
        layer_bytes: layer_gz.len() as u64,
    })
}

/// The layer: a tar of `entries` (sorted, parents first), paths relative to `/`.
fn layer(entries: &[Entry]) -> anyhow::Result<Vec<u8>> {
    let mut archive = tar::Builder::new(Vec::new());
    for entry in entries {
        let relative = entry.path.trim_start_matches('/');
        let mut header = tar::Header::new_gnu();
        header.set_mode(entry.mode);
        header.set_uid(entry.uid);
        header.set_gid(entry.uid);
        header.set_mtime(mtime());
        match &entry.contents {
            Some(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                archive.append_data(&mut header, relative, data.as_slice())?;
            }
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                archive.append_data(&mut header, format!("{relative}/"), std::io::empty())?;
            }
        }
    }
    Ok(archive.into_inner()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The archive is a valid OCI layout whose digests match its blobs, and
    /// the same inputs give the same manifest digest.
    #[test]
    fn layout_digests_match_and_are_reproducible() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("xtask-image-{}", std::process::id()));
        let config = Config {
            user: "65532:65532".into(),
            entrypoint: vec!["/pause".into()],
            cmd: Vec::new(),
            exposed_ports: Vec::new(),
        };
        let entries = || {
            let mut e = base_entries();
            e.push(Entry::file("/pause", b"\x7fELF...".to_vec(), 0o755));
            e
        };
        let a = write(&dir.join("a.tar"), "example.invalid/pause:1", entries(), &config)?;
        let b = write(&dir.join("b.tar"), "example.invalid/pause:1", entries(), &config)?;
        assert_eq!(a.digest, b.digest);

        let mut archive = tar::Archive::new(std::fs::File::open(&a.path)?);
        let mut blobs = std::collections::HashMap::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data)?;
            blobs.insert(path, data);
        }
        for (path, data) in &blobs {
            if let Some(digest) = path.strip_prefix("blobs/sha256/") {
                assert_eq!(hex::encode(Sha256::digest(data)), digest, "{path}");
            }
        }
        let index: serde_json::Value = serde_json::from_slice(&blobs["index.json"])?;
        assert_eq!(index["manifests"][0]["digest"], a.digest.as_str());
        assert_eq!(index["manifests"][0]["annotations"]["io.containerd.image.name"], "example.invalid/pause:1");
        assert_eq!(index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], "1");
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
