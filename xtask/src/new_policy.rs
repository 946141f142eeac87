//! `cargo xtask new-policy NAME [--mutating] [--context]`: a new policy crate
//! `policies-wasm/NAME`, added to the workspace members, from the templates
//! of `xtask/templates/new-policy/`.
//!
//! The starter rule is about labels: validating, every object carries the
//! labels of the settings with their values; `--mutating` adds the missing
//! ones with a JSON Patch; `--context` takes the values from the object's
//! Namespace, looked up with the SDK's lookup API. The flags combine.
//!
//! Templates are the files as generated, with `{{name}}`, `{{kind}}` and
//! `{{description}}` filled in and `{{#mutating}}`…`{{/mutating}}` (or
//! `{{^mutating}}`, and the same for `context`) sections kept or dropped; a
//! tag alone on its line takes the line with it.
//!
//! [`test()`] (`cargo xtask test-new-policy`, and a step of `cargo xtask test`)
//! scaffolds every variant into a scratch workspace under `target/scaffold/`
//! and checks each as CI checks the repository's policies: rustfmt, clippy,
//! rustdoc, the unit tests, the wasm build and the case runner.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail, ensure};
use toml_edit::{DocumentMut, Item};

use crate::{cargo, run_cmd, run_tests, wasm};

/// Options of `cargo xtask new-policy`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Name of the policy, its crate and its module: a lowercase DNS label
    /// starting with a letter (e.g. `team-labels`).
    pub name: String,
    /// A mutating policy: missing labels are added with a JSON Patch.
    #[arg(long)]
    pub mutating: bool,
    /// A context-aware policy: the labels' values come from the object's
    /// Namespace, looked up in the server's cache.
    #[arg(long)]
    pub context: bool,
    /// The workspace to write into (default: this repository).
    #[arg(long, hide = true)]
    pub root: Option<PathBuf>,
}

/// What kind of policy to scaffold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    /// Answers with a JSON Patch.
    pub mutating: bool,
    /// Looks objects up.
    pub context: bool,
}

impl Variant {
    /// Every combination of the flags.
    const ALL: [Variant; 4] = [
        Variant { mutating: false, context: false },
        Variant { mutating: true, context: false },
        Variant { mutating: false, context: true },
        Variant { mutating: true, context: true },
    ];

    /// For the README and the crate docs: `mutating, context-aware`.
    fn kind(self) -> &'static str {
        match (self.mutating, self.context) {
            (false, false) => "validating",
            (true, false) => "mutating",
            (false, true) => "validating, context-aware",
            (true, true) => "mutating, context-aware",
        }
    }

    /// What the starter rule does, in a sentence without its full stop.
    fn description(self) -> &'static str {
        match (self.mutating, self.context) {
            (false, false) => "every object carries the labels the settings require, with their values",
            (true, false) => "every object gets the labels the settings require, with their values",
            (false, true) => "every object carries the labels its Namespace has",
            (true, true) => "every object gets the labels its Namespace has",
        }
    }

    /// The name of its policy in the scaffold test.
    fn test_name(self) -> &'static str {
        match (self.mutating, self.context) {
            (false, false) => "scaffold-validating",
            (true, false) => "scaffold-mutating",
            (false, true) => "scaffold-context",
            (true, true) => "scaffold-mutating-context",
        }
    }

    fn section(self, name: &str) -> Option<bool> {
        match name {
            "mutating" => Some(self.mutating),
            "context" => Some(self.context),
            _ => None,
        }
    }
}

/// Which variants a template file belongs to.
#[derive(Debug, Clone, Copy)]
enum When {
    Always,
    /// Labels with values from the settings.
    Fixed,
    FixedMutating,
    /// Labels with values from the Namespace.
    Context,
    ContextMutating,
}

impl When {
    fn holds(self, v: Variant) -> bool {
        match self {
            When::Always => true,
            When::Fixed => !v.context,
            When::FixedMutating => !v.context && v.mutating,
            When::Context => v.context,
            When::ContextMutating => v.context && v.mutating,
        }
    }
}

macro_rules! template {
    ($path:literal, $when:ident) => {
        template!($path, $when, $path)
    };
    ($path:literal, $when:ident, $file:literal) => {
        ($path, When::$when, include_str!(concat!("../templates/new-policy/", $file)))
    };
}

/// The files of a new policy: path in the crate, variants, template.
const TEMPLATES: &[(&str, When, &str)] = &[
    // A real `Cargo.toml` in xtask/templates would be taken for a package.
    template!("Cargo.toml", Always, "Cargo.toml.tmpl"),
    template!("README.md", Always),
    template!("src/lib.rs", Always),
    template!("src/labels.rs", Always),
    template!("src/settings.rs", Always),
    template!("src/tests.rs", Always),
    template!("test_data/cases.yaml", Always),
    template!("test_data/deployment-labelled.json", Fixed),
    template!("test_data/deployment-unlabelled.json", Fixed),
    template!("test_data/deployment-from-staging.json", Fixed),
    template!("test_data/patched/deployment-unlabelled.yaml", FixedMutating),
    template!("test_data/context/namespace-shop.yaml", Context),
    template!("test_data/deployment-team-payments.json", Context),
    template!("test_data/deployment-no-team.json", Context),
    template!("test_data/deployment-team-search.json", Context),
    template!("test_data/patched/deployment-no-team.yaml", ContextMutating),
];

/// Directories of `policies-wasm/` that are not policies.
const RESERVED: &[&str] = &["sdk", "test-guests"];

/// Names cargo refuses for a package or a library: Rust keywords and the
/// standard library's crates.
const NOT_CRATE_NAMES: &str = "\
    abstract alloc as async await become box break const continue core crate do dyn else enum extern false \
    final fn for gen if impl in let loop macro match mod move mut override priv proc-macro pub ref return \
    self static std struct super test trait true try type typeof unsafe unsized use virtual where while \
    yield";

/// `cargo xtask new-policy`.
pub fn run(repo: &Path, options: &Options) -> anyhow::Result<()> {
    let root = options.root.clone().unwrap_or_else(|| repo.to_owned());
    let variant = Variant { mutating: options.mutating, context: options.context };
    let name = &options.name;
    scaffold(&root, name, variant)?;
    let grant = if variant.context { " --grant v1/Namespace" } else { "" };
    println!("Created policies-wasm/{name}, a {} policy, and added it to the workspace members.", variant.kind());
    if root != repo {
        println!("(in {})", root.display());
    }
    println!();
    println!("Next steps:");
    println!("  1. Edit the rule in policies-wasm/{name}/src/labels.rs (the request handling is in src/lib.rs,");
    println!("     the settings in src/settings.rs) and the cases in test_data/cases.yaml.");
    println!("  2. cargo test -p {name}");
    println!("  3. cargo xtask build-policies");
    println!(
        "  4. cargo run -p webhook-server -- test --module target/policies/{name}.wasm \
         policies-wasm/{name}/test_data/cases.yaml{grant}"
    );
    println!("  5. Serve it: policies-wasm/{name}/README.md has its config entry.");
    Ok(())
}

/// Writes policy `name` of `variant` into the workspace at `root` and adds
/// it to the members; returns its directory. Nothing is overwritten.
pub fn scaffold(root: &Path, name: &str, variant: Variant) -> anyhow::Result<PathBuf> {
    check_name(root, name)?;
    let manifest = root.join("Cargo.toml");
    let member = format!("policies-wasm/{name}");
    let members = with_member(&read(&manifest)?, &member).with_context(|| format!("editing {}", manifest.display()))?;
    let files = TEMPLATES
        .iter()
        .filter(|(_, when, _)| when.holds(variant))
        .map(|(path, _, template)| {
            Ok((*path, render(template, name, variant).with_context(|| format!("template {path}"))?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let dir = root.join(&member);
    std::fs::create_dir_all(root.join("policies-wasm"))?;
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    std::fs::write(&manifest, members).with_context(|| format!("writing {}", manifest.display()))?;
    Ok(dir)
}

/// Refuses a name that is no lowercase DNS label starting with a letter,
/// is reserved, or is taken: by a directory of `policies-wasm/` or by a
/// package of the workspace's dependency graph (`Cargo.lock`).
fn check_name(root: &Path, name: &str) -> anyhow::Result<()> {
    let label = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    ensure!(
        label,
        "{name:?} is not a valid policy name: use 1 to 63 lowercase letters, digits and '-', starting with a letter \
         and ending with a letter or digit (it names the crate, the module and the webhook path)"
    );
    ensure!(!RESERVED.contains(&name), "{name:?} is reserved: policies-wasm/{name} is not a policy");
    ensure!(
        !NOT_CRATE_NAMES.split_whitespace().any(|n| n == name),
        "{name:?} cannot name a crate (a Rust keyword or a standard crate)"
    );
    let dir = root.join("policies-wasm").join(name);
    ensure!(!dir.exists(), "{} already exists; refusing to overwrite it", dir.display());
    if let Ok(lock) = std::fs::read_to_string(root.join("Cargo.lock")) {
        let taken = lock
            .lines()
            .filter_map(|line| line.strip_prefix("name = \"")?.strip_suffix('"'))
            .any(|package| package.replace('_', "-") == name);
        ensure!(!taken, "{name:?} is taken: a package of that name is in Cargo.lock");
    }
    Ok(())
}

/// `manifest` (a workspace's `Cargo.toml`) with `member` added to
/// `[workspace] members`, after the last `policies-wasm/` member and
/// formatted like it; the rest of the file as it was.
fn with_member(manifest: &str, member: &str) -> anyhow::Result<String> {
    let mut doc: DocumentMut = manifest.parse()?;
    let members = doc
        .get_mut("workspace")
        .and_then(|w| w.get_mut("members"))
        .and_then(Item::as_array_mut)
        .context("no `members` array in [workspace]")?;
    ensure!(!members.iter().any(|m| m.as_str() == Some(member)), "{member} is already a member");
    let last_policy =
        members.iter().enumerate().filter(|(_, m)| m.as_str().is_some_and(|m| m.starts_with("policies-wasm/"))).last();
    let position = last_policy.map_or(members.len(), |(i, _)| i + 1);
    // The first member's decor may lack the space or newline the others have.
    let like = position.saturating_sub(1).max(1);
    let decor = members.get(like).map(|m| m.decor().clone());
    members.insert(position, member);
    if let (Some(decor), Some(added)) = (decor, members.get_mut(position)) {
        *added.decor_mut() = decor;
    }
    Ok(doc.to_string())
}

/// Fills in a template (see the module docs).
fn render(template: &str, name: &str, variant: Variant) -> anyhow::Result<String> {
    let mut out = String::with_capacity(template.len());
    // Open standalone sections: (name, whether their lines are kept).
    let mut open: Vec<(&str, bool)> = Vec::new();
    for (number, line) in template.split_inclusive('\n').enumerate() {
        let at = || format!("line {}", number + 1);
        if let Some((tag, section)) = standalone_tag(line) {
            let keep = variant.section(section).with_context(|| format!("{}: unknown section {section:?}", at()))?;
            match tag {
                '#' => open.push((section, keep)),
                '^' => open.push((section, !keep)),
                _ => match open.pop() {
                    Some((opened, _)) if opened == section => {}
                    _ => bail!("{}: {{{{/{section}}}}} closes no open section", at()),
                },
            }
            continue;
        }
        if open.iter().all(|(_, keep)| *keep) {
            out.push_str(&render_line(line, name, variant).with_context(at)?);
        }
    }
    if let Some((section, _)) = open.last() {
        bail!("section {section:?} is not closed");
    }
    Ok(out)
}

/// The tag (`#`, `^` or `/`) and section of a line holding only a section tag.
fn standalone_tag(line: &str) -> Option<(char, &str)> {
    let inner = line.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    let tag = inner.chars().next().filter(|c| matches!(c, '#' | '^' | '/'))?;
    Some((tag, &inner[1..]))
}

/// Fills in the values and inline sections of one line.
fn render_line(line: &str, name: &str, variant: Variant) -> anyhow::Result<String> {
    let mut out = String::with_capacity(line.len());
    let mut open: Vec<(&str, bool)> = Vec::new();
    let mut rest = line;
    while let Some(start) = rest.find("{{") {
        let keep = open.iter().all(|(_, keep)| *keep);
        if keep {
            out.push_str(&rest[..start]);
        }
        let end = rest[start..].find("}}").context("unclosed {{")? + start;
        let tag = &rest[start + 2..end];
        rest = &rest[end + 2..];
        let unknown = || format!("unknown tag {{{{{tag}}}}}");
        match tag.chars().next() {
            Some('#' | '^') => {
                let section = &tag[1..];
                let on = variant.section(section).with_context(unknown)?;
                open.push((section, if tag.starts_with('#') { on } else { !on }));
            }
            Some('/') => match open.pop() {
                Some((opened, _)) if opened == &tag[1..] => {}
                _ => bail!("{{{{{tag}}}}} closes no open section"),
            },
            _ if keep => out.push_str(match tag {
                "name" => name,
                "kind" => variant.kind(),
                "description" => variant.description(),
                _ => bail!(unknown()),
            }),
            _ => {}
        }
    }
    ensure!(open.is_empty(), "an inline section is not closed on its line");
    out.push_str(rest);
    Ok(out)
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The scaffold test: every variant scaffolded into a scratch workspace
/// (`target/scaffold/workspace`), then rustfmt, clippy, rustdoc and the unit
/// tests there (host builds in `target/scaffold/target`), the wasm build (in
/// `target/wasm`, sharing `cargo xtask build-policies`' standard library
/// and dependencies), and every case through the case runner:
/// `webhook-server test`, from `server` (a built binary) or else `cargo run`.
pub fn test(repo: &Path, server: Option<&Path>) -> anyhow::Result<()> {
    let started = Instant::now();
    let scratch = repo.join("target/scaffold");
    std::fs::create_dir_all(&scratch)?;
    let lock = File::create(scratch.join(".lock"))?;
    lock.lock().context("locking target/scaffold")?;

    // Rendered anew each time, then copied where only what changed is
    // written: unchanged files keep their times, and cargo its fingerprints.
    let fresh = scratch.join("fresh");
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh)?;
    }
    std::fs::create_dir_all(&fresh)?;
    std::fs::write(fresh.join("Cargo.toml"), scratch_manifest(repo)?)?;
    for file in ["Cargo.lock", "rustfmt.toml"] {
        std::fs::copy(repo.join(file), fresh.join(file)).with_context(|| format!("copying {file}"))?;
    }
    for variant in Variant::ALL {
        scaffold(&fresh, variant.test_name(), variant)?;
    }
    let workspace = scratch.join("workspace");
    sync(&fresh, &workspace)?;

    let manifest = workspace.join("Cargo.toml");
    let host = scratch.join("target");
    let in_workspace = |cmd: &str| {
        let mut c = cargo();
        c.arg(cmd).arg("--manifest-path").arg(&manifest);
        c
    };
    let names: Vec<String> = Variant::ALL.iter().map(|v| v.test_name().to_owned()).collect();
    // Not `--all`, which also formats path dependencies: the SDK and its workspace.
    let mut fmt = in_workspace("fmt");
    fmt.arg("--check");
    for name in &names {
        fmt.args(["--package", name]);
    }
    run_cmd(&mut fmt)?;
    run_cmd(
        in_workspace("clippy")
            .args(["--workspace", "--all-targets", "--target-dir"])
            .arg(&host)
            .args(["--", "-D", "warnings"]),
    )?;
    run_cmd(
        in_workspace("doc")
            .args(["--workspace", "--no-deps", "--target-dir"])
            .arg(&host)
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    run_tests(in_workspace("test").args(["--workspace", "--target-dir"]).arg(&host))?;
    let built = wasm::build_packages(&manifest, &names, &[], &repo.join("target/wasm"))?;
    for variant in Variant::ALL {
        let name = variant.test_name();
        let mut cmd = match server {
            Some(binary) => Command::new(binary),
            None => {
                let mut c = cargo();
                c.args(["run", "--quiet", "--package", "webhook-server", "--manifest-path"])
                    .arg(repo.join("Cargo.toml"))
                    .arg("--");
                c
            }
        };
        cmd.args(["test", "--module"]).arg(built.join(format!("{}.wasm", name.replace('-', "_"))));
        if variant.context {
            cmd.args(["--grant", "v1/Namespace"]);
        }
        run_cmd(cmd.arg(workspace.join("policies-wasm").join(name).join("test_data/cases.yaml")))?;
    }
    eprintln!("scaffold test: {} variants checked in {:.1?}", Variant::ALL.len(), started.elapsed());
    Ok(())
}

/// The manifest of a scratch workspace: the repository's, with no members,
/// its dependencies' paths made absolute, and no per-package profile
/// overrides (they name the repository's packages).
fn scratch_manifest(repo: &Path) -> anyhow::Result<String> {
    let path = repo.join("Cargo.toml");
    let mut doc: DocumentMut = read(&path)?.parse().with_context(|| format!("parsing {}", path.display()))?;
    let workspace = doc.get_mut("workspace").and_then(Item::as_table_mut).context("no [workspace]")?;
    workspace.insert("members", toml_edit::value(toml_edit::Array::new()));
    workspace.remove("default-members");
    workspace.remove("exclude");
    if let Some(dependencies) = workspace.get_mut("dependencies").and_then(Item::as_table_like_mut) {
        for (_, dependency) in dependencies.iter_mut() {
            let Some(dependency) = dependency.as_table_like_mut() else { continue };
            let Some(relative) = dependency.get("path").and_then(Item::as_str) else { continue };
            let absolute = repo.join(relative).to_str().context("a dependency path is not UTF-8")?.to_owned();
            dependency.insert("path", toml_edit::value(absolute));
        }
    }
    if let Some(profiles) = doc.get_mut("profile").and_then(Item::as_table_like_mut) {
        for (_, profile) in profiles.iter_mut() {
            if let Some(profile) = profile.as_table_like_mut() {
                profile.remove("package");
            }
        }
    }
    Ok(doc.to_string())
}

/// Makes the directory `to` a copy of `from`, writing only the files that
/// differ and removing what `from` lacks.
fn sync(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            sync(&entry.path(), &target)?;
        } else {
            let text = std::fs::read(entry.path())?;
            if std::fs::read(&target).ok().as_ref() != Some(&text) {
                std::fs::write(&target, text).with_context(|| format!("writing {}", target.display()))?;
            }
        }
    }
    for entry in std::fs::read_dir(to)? {
        let entry = entry?;
        if !from.join(entry.file_name()).exists() {
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(entry.path())?;
            } else {
                std::fs::remove_file(entry.path())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_free_lowercase_dns_labels() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for good in ["team-labels", "a", "owner2"] {
            assert!(check_name(&root, good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("", "not a valid policy name"),
            ("Team", "not a valid policy name"),
            ("team_labels", "not a valid policy name"),
            ("2fa", "not a valid policy name"),
            ("team-", "not a valid policy name"),
            (&"a".repeat(64), "not a valid policy name"),
            ("sdk", "reserved"),
            ("test-guests", "reserved"),
            ("fn", "cannot name a crate"),
            ("ingress-tls", "already exists"),
            ("serde", "is taken"),
            ("webhook-server", "is taken"),
        ] {
            let error = check_name(&root, bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(error.contains(why), "{bad:?}: {error:?}");
        }
    }

    #[test]
    fn members_are_added_after_the_policies_in_the_same_format() -> anyhow::Result<()> {
        let manifest = r#"[workspace]
# The crates.
members = [
    "xtask",
    "policies-wasm/sdk",
    "policies-wasm/ingress-tls",
    "e2e",
]

[workspace.lints.rust]
unsafe_code = "deny"
"#;
        let edited = with_member(manifest, "policies-wasm/team-labels")?;
        assert_eq!(edited, manifest.replace("\"e2e\"", "\"policies-wasm/team-labels\",\n    \"e2e\""));
        assert!(with_member(&edited, "policies-wasm/team-labels").is_err());
        assert_eq!(with_member("[workspace]\nmembers = [\"a\"]\n", "b")?, "[workspace]\nmembers = [\"a\", \"b\"]\n");
        assert!(with_member("[package]\nname = \"a\"\n", "b").is_err());
        Ok(())
    }

    #[test]
    fn templates_render_for_every_variant() -> anyhow::Result<()> {
        for variant in Variant::ALL {
            for (path, when, template) in TEMPLATES.iter().filter(|(_, when, _)| when.holds(variant)) {
                let text = render(template, "team-labels", variant).with_context(|| format!("{path} ({when:?})"))?;
                assert!(!text.contains("{{"), "{path} of {variant:?} keeps a tag");
            }
        }
        Ok(())
    }

    #[test]
    fn sections_keep_or_drop_lines_and_spans() -> anyhow::Result<()> {
        let template = "a {{name}}\n{{#mutating}}\nm\n{{/mutating}}\n{{^mutating}}\nv\n{{/mutating}}\n\
                        x{{#context}} c{{/context}}.\n";
        let plain = Variant { mutating: false, context: false };
        assert_eq!(render(template, "p", plain)?, "a p\nv\nx.\n");
        assert_eq!(render(template, "p", Variant { mutating: true, context: true })?, "a p\nm\nx c.\n");
        assert!(render("{{#mutating}}\n", "p", plain).is_err());
        assert!(render("{{/mutating}}\n", "p", plain).is_err());
        assert!(render("{{#other}}\n{{/other}}\n", "p", plain).is_err());
        assert!(render("{{nme}}\n", "p", plain).is_err());
        assert!(render("a {{#context}}b\n", "p", plain).is_err());
        Ok(())
    }
}
