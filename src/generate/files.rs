//! Writing generated files: the only part of `generate` that touches the file system.
//!
//! A [`Plan`] compares what should exist with what does: files to write (new or changed),
//! generated files the config no longer names, and files a person wrote (no marker line), which
//! are never overwritten without `force`. Applying a plan writes each file atomically (temp file
//! in the same directory, fsync, rename) and leaves unchanged files untouched, so a second run
//! changes nothing, byte for byte. Written files are mode 0644: containerd runs as root, but
//! rootless podman, skopeo and `--check` run by a user must be able to read them.

use std::collections::BTreeMap;
use std::io::{self, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use super::MARKER;

/// One difference between the wanted and the current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Write {
        path: PathBuf,
        old: Option<String>,
        new: String,
    },
    /// A generated file the config no longer names.
    Stale { path: PathBuf, old: String },
    /// A file without the marker where a generated one should go.
    UserWritten { path: PathBuf },
}

#[derive(Debug, Default)]
pub struct Plan {
    pub changes: Vec<Change>,
    pub unchanged: usize,
}

fn is_generated(text: &str) -> bool {
    text.starts_with(MARKER)
}

fn read_existing(path: &Path) -> io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(naming(path, e)),
    }
}

impl Plan {
    fn add(&mut self, path: PathBuf, new: &str, force: bool) -> io::Result<()> {
        match read_existing(&path)? {
            Some(old) if old == new => self.unchanged += 1,
            Some(old) if !is_generated(&old) && !force => {
                self.changes.push(Change::UserWritten { path })
            }
            old => self.changes.push(Change::Write {
                path,
                old,
                new: new.to_owned(),
            }),
        }
        Ok(())
    }

    /// `dir/<name>/hosts.toml` for each entry of `wanted`; every other generated hosts.toml
    /// under `dir` is stale.
    pub fn hosts_dir(
        dir: &Path,
        wanted: &BTreeMap<String, String>,
        force: bool,
    ) -> io::Result<Self> {
        let mut plan = Plan::default();
        for (name, text) in wanted {
            plan.add(dir.join(name).join("hosts.toml"), text, force)?;
        }
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(plan),
            Err(e) => return Err(naming(dir, e)),
        };
        let mut stale = Vec::new();
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if wanted.contains_key(&name) || !entry.file_type()?.is_dir() {
                continue;
            }
            let path = entry.path().join("hosts.toml");
            if let Some(old) = read_existing(&path)?.filter(|t| is_generated(t)) {
                stale.push(Change::Stale { path, old });
            }
        }
        stale.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        plan.changes.extend(stale);
        Ok(plan)
    }

    /// One file.
    pub fn single(path: &Path, text: &str, force: bool) -> io::Result<Self> {
        let mut plan = Plan::default();
        plan.add(path.to_owned(), text, force)?;
        Ok(plan)
    }

    pub fn user_written(&self) -> Vec<&Path> {
        self.changes
            .iter()
            .filter_map(|c| match c {
                Change::UserWritten { path } => Some(path.as_path()),
                _ => None,
            })
            .collect()
    }

    /// True when the files differ from what [`apply`](Self::apply) with `prune` would leave:
    /// stale files count only when they would be removed.
    pub fn differs(&self, prune: bool) -> bool {
        self.changes
            .iter()
            .any(|c| prune || !matches!(c, Change::Stale { .. }))
    }

    /// A unified diff of every change [`apply`](Self::apply) with `prune` would make (stale
    /// files shown as removed with `prune`, else named in a comment line).
    pub fn diff(&self, prune: bool) -> String {
        let mut out = String::new();
        for change in &self.changes {
            let (path, old, new) = match change {
                Change::Write { path, old, new } => {
                    (path, old.clone().unwrap_or_default(), new.clone())
                }
                Change::Stale { path, old } if prune => (path, old.clone(), String::new()),
                Change::Stale { path, .. } => {
                    out.push_str(&format!(
                        "# {}: generated for a registry the config no longer names; kept without --prune\n",
                        path.display()
                    ));
                    continue;
                }
                Change::UserWritten { path } => {
                    out.push_str(&format!("# {}: written by someone else; regmirror leaves it alone without --force\n", path.display()));
                    continue;
                }
            };
            let name = path.display().to_string();
            out.push_str(
                &similar::TextDiff::from_lines(&old, &new)
                    .unified_diff()
                    .header(&format!("a/{name}"), &format!("b/{name}"))
                    .to_string(),
            );
        }
        out
    }

    /// Writes and (with `prune`) removes. Returns (written, removed). An error names its file.
    pub fn apply(&self, prune: bool) -> io::Result<(usize, usize)> {
        let (mut written, mut removed) = (0, 0);
        for change in &self.changes {
            match change {
                Change::Write { path, new, .. } => {
                    write_atomic(path, new.as_bytes())?;
                    written += 1;
                }
                Change::Stale { path, .. } if prune => {
                    std::fs::remove_file(path).map_err(|e| naming(path, e))?;
                    if let Some(dir) = path.parent() {
                        // Only if nothing else lives there (a user's certificates, say).
                        let _ = std::fs::remove_dir(dir);
                    }
                    removed += 1;
                }
                Change::Stale { .. } | Change::UserWritten { .. } => {}
            }
        }
        Ok((written, removed))
    }
}

/// The mode of every written file (the temp file it starts as is 0600).
const FILE_MODE: u32 = 0o644;

/// Temp file in the same directory (`.` for a bare file name), mode 0644, fsync, rename, fsync
/// of the directory. An error names `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let write = || {
        std::fs::create_dir_all(dir)?;
        let mut temp = tempfile::NamedTempFile::new_in(dir)?;
        temp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
        temp.write_all(bytes)?;
        temp.as_file().sync_all()?;
        let file = temp.persist(path).map_err(|e| e.error)?;
        drop(file);
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| naming(path, e))
}

/// `e` with `path` in its message, its kind kept.
fn naming(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), format!("{MARKER} test\n{v}")))
            .collect()
    }

    #[test]
    fn idempotent_prune_and_force() {
        let dir = tempfile::tempdir().unwrap();
        let first = wanted(&[("a.io", "server = \"https://a.io\"\n"), ("b.io", "x\n")]);
        let plan = Plan::hosts_dir(dir.path(), &first, false).unwrap();
        assert_eq!(plan.apply(false).unwrap(), (2, 0));
        let again = Plan::hosts_dir(dir.path(), &first, false).unwrap();
        assert!(!again.differs(true));
        assert_eq!(again.unchanged, 2);

        // b.io leaves the config: stale, removed only with prune; a user's file stays.
        std::fs::create_dir_all(dir.path().join("mine.io")).unwrap();
        std::fs::write(dir.path().join("mine.io/hosts.toml"), "server = \"x\"\n").unwrap();
        let second = wanted(&[("a.io", "server = \"https://a.io\"\n")]);
        let plan = Plan::hosts_dir(dir.path(), &second, false).unwrap();
        assert!(
            !plan.differs(false),
            "what a run without prune writes is there"
        );
        assert!(plan.differs(true));
        assert!(plan.diff(true).contains("-x"), "{}", plan.diff(true));
        assert!(
            plan.diff(false)
                .contains("b.io/hosts.toml: generated for a registry"),
            "{}",
            plan.diff(false)
        );
        assert_eq!(plan.apply(false).unwrap(), (0, 0));
        assert!(dir.path().join("b.io/hosts.toml").exists());
        assert_eq!(plan.apply(true).unwrap(), (0, 1));
        assert!(!dir.path().join("b.io").exists());
        assert!(dir.path().join("mine.io/hosts.toml").exists());

        // A user-written file where a generated one should go: refused without force.
        let third = wanted(&[("mine.io", "server = \"https://mine.io\"\n")]);
        let plan = Plan::hosts_dir(dir.path(), &third, false).unwrap();
        assert_eq!(plan.user_written().len(), 1);
        assert_eq!(plan.apply(false).unwrap().0, 0);
        let plan = Plan::hosts_dir(dir.path(), &third, true).unwrap();
        assert_eq!(plan.apply(false).unwrap().0, 1);
        assert!(
            std::fs::read_to_string(dir.path().join("mine.io/hosts.toml"))
                .unwrap()
                .starts_with(MARKER)
        );
    }

    #[test]
    fn written_files_are_world_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.io/hosts.toml");
        // A new file, and a file replacing one that was 0600.
        write_atomic(&path, b"x\n").unwrap();
        assert_eq!(mode(&path), 0o644);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&path, b"y\n").unwrap();
        assert_eq!(mode(&path), 0o644);
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }
}
