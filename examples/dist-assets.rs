//! Man pages and shell completions for the Debian package, generated from the same
//! clap definitions the binaries parse with, so `man wal-push` and `<TAB>` can never
//! drift from `wal-push --help`.
//!
//! Run as `cargo run [--release] --example dist-assets -- OUTDIR`; it writes
//!   OUTDIR/man/NAME.1 (one per binary and one per pgcellar subcommand, e.g. pgcellar-info.1)
//!   OUTDIR/completions/bash/NAME, OUTDIR/completions/zsh/_NAME, OUTDIR/completions/fish/NAME.fish
//! named as Debian's bash-completion, zsh and fish look them up, so the package
//! copies them without renaming. `.ci/build-deb` runs it; `[package.metadata.deb]`
//! in Cargo.toml lists the outputs.

use clap_complete::Shell;
use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    if let Err(e) = run() {
        eprintln!("dist-assets: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        return Err("usage: dist-assets OUTDIR".into());
    };
    let out = PathBuf::from(out);
    let commands = pgcellar::cli::commands();
    if commands.is_empty() {
        return Err("pgcellar::cli::commands() returned no command".into());
    }

    let man_dir = create_dir(&out.join("man"))?;
    let mut pages = 0;
    for cmd in &commands {
        pages += write_man_pages(cmd.clone(), None, &man_dir)?;
    }

    let shells = [
        (Shell::Bash, "bash"),
        (Shell::Zsh, "zsh"),
        (Shell::Fish, "fish"),
    ];
    let mut scripts = 0;
    for (shell, dir) in shells {
        let dir = create_dir(&out.join("completions").join(dir))?;
        for cmd in &commands {
            let name = cmd.get_name().to_string();
            let file = match shell {
                Shell::Zsh => format!("_{name}"),
                Shell::Fish => format!("{name}.fish"),
                _ => name.clone(),
            };
            let mut cmd = cmd.clone();
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, &name, &mut buf);
            write(&dir.join(file), &buf)?;
            scripts += 1;
        }
    }
    println!(
        "dist-assets: {pages} man pages and {scripts} completion scripts in {}",
        out.display()
    );
    Ok(())
}

/// The page of `cmd` and, recursively, of each visible subcommand (`pgcellar-key-rotate.1`).
/// Each subcommand is taken from the parent after `build()`, which gives it the
/// display name `pgcellar-info` and the usage line `pgcellar info ...` its page needs.
fn write_man_pages(
    mut cmd: clap::Command,
    parent: Option<&str>,
    dir: &Path,
) -> Result<usize, Box<dyn Error>> {
    // `pgcellar help` is clap's, not ours: a page for it would only say "print help".
    cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let name = cmd
        .get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string();
    let mut count = 0;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        count += write_man_pages(sub.clone(), Some(&name), dir)?;
    }
    let see_also = see_also(&name, parent);
    let after_help = cmd.get_after_help().map(|h| h.to_string());
    // The footer names the package, also on a subcommand's page (clap_mangen would
    // put the bare subcommand name there).
    let man = clap_mangen::Man::new(cmd.clone())
        .source(format!("pgcellar {}", env!("CARGO_PKG_VERSION")));
    let mut buf = Vec::new();
    man.render_title(&mut buf)?;
    man.render_name_section(&mut buf)?;
    man.render_synopsis_section(&mut buf)?;
    man.render_description_section(&mut buf)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut buf)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut buf)?;
    }
    let mut roff = roff::Roff::new();
    if let Some(text) = after_help {
        after_help_sections(&mut roff, &text);
    }
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roff::roman(see_also)]);
    roff.to_writer(&mut buf)?;
    if cmd.get_version().is_some() {
        man.render_version_section(&mut buf)?;
    }
    write(&dir.join(man.get_filename()), &buf)?;
    Ok(count + 1)
}

/// The `Examples:` and `Exit codes:` blocks of `--help` as the man sections a reader
/// looks for (EXAMPLES, EXIT STATUS), laid out line for line: clap_mangen's own
/// rendering fills them into paragraphs, which runs the examples together.
fn after_help_sections(roff: &mut roff::Roff, text: &str) {
    let mut in_section = false;
    for block in text.split("\n\n") {
        let mut lines: Vec<&str> = block.lines().collect();
        let heading = lines.first().and_then(|l| section_name(l));
        if let Some(name) = &heading {
            roff.control("SH", [name.as_str()]);
            in_section = true;
            lines.remove(0);
        } else if !in_section {
            roff.control("SH", ["NOTES"]);
            in_section = true;
        }
        if lines.is_empty() {
            continue;
        }
        if lines.iter().all(|l| l.starts_with(' ')) {
            // Aligned columns and command lines: keep every line and its spacing.
            roff.control("PP", []).control("nf", []);
            for line in lines {
                roff.text([roff::roman(line)]);
            }
            roff.control("fi", []);
        } else {
            roff.control("PP", []);
            roff.text([roff::roman(lines.join(" "))]);
        }
    }
}

/// `Examples:` -> EXAMPLES, `Exit codes:` -> EXIT STATUS (the name man pages use);
/// `None` for a line that is not a short heading.
fn section_name(line: &str) -> Option<String> {
    let title = line.strip_suffix(':')?;
    if title.starts_with(' ') || title.split(' ').count() > 3 {
        return None;
    }
    Some(match title.to_ascii_lowercase().as_str() {
        "exit codes" => "EXIT STATUS".to_string(),
        _ => title.to_ascii_uppercase(),
    })
}

/// The parent's page for a subcommand; the other binaries' pages for a binary.
fn see_also(name: &str, parent: Option<&str>) -> String {
    let pages: Vec<&str> = match parent {
        Some(p) => vec![p],
        None => ["wal-push", "wal-get", "base-backup", "restore", "pgcellar"]
            .into_iter()
            .filter(|b| *b != name)
            .collect(),
    };
    pages
        .iter()
        .map(|p| format!("{p}(1)"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn create_dir(dir: &Path) -> Result<PathBuf, Box<dyn Error>> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir.to_path_buf())
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Box<dyn Error>> {
    fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(())
}
