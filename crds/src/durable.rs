//! Replacing a small state file so that a crash leaves the old content or
//! the new, never half of either (the sidecar's state file, the standalone
//! operator's spend ledger).

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to a temporary file beside `path`, fsyncs it, renames it
/// over `path` and fsyncs the folder, so the rename itself survives a crash.
///
/// # Errors
/// Creating, writing, syncing or renaming failed; `path` is then unchanged.
pub fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let temporary = path.with_extension("tmp");
    let mut out = std::fs::File::create(&temporary)?;
    out.write_all(bytes)?;
    out.sync_all()?;
    drop(out);
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(folder)?.sync_all()
}
