//! Writing `.safetensors` files with the permissions any other file gets.
//!
//! safetensors 0.8 writes through a `tempfile::NamedTempFile`, which is always mode 0600,
//! and renames it into place (safetensors#782, fix pending upstream in #789): a
//! checkpoint's `adapter_model.safetensors` was readable by its owner only while the JSON
//! beside it was not, so a serving pod running as another user (or reading a volume
//! through its `fsGroup`) found the adapter but could not open it. Each file is given the
//! mode `File::create` would have: `0o666` less the process umask.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;

/// `candle_core::safetensors::save`, then the permissions of a newly created file.
pub fn save(tensors: &HashMap<String, Tensor>, path: &Path) -> candle_core::Result<()> {
    candle_core::safetensors::save(tensors, path)?;
    set_created_mode(path).map_err(candle_core::Error::wrap)
}

/// Gives `path` the permission bits a file created by `File::create` gets.
pub fn set_created_mode(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = created_mode(process_umask());
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// The mode of a new file under `umask`.
fn created_mode(umask: u32) -> u32 {
    0o666 & !umask
}

/// The process umask, from `/proc/self/status` (Linux 4.7+); elsewhere the usual 022.
/// Read there rather than by setting it and setting it back (`umask(2)` cannot be read
/// otherwise), which would race files other threads create meanwhile.
#[cfg(unix)]
fn process_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(umask_of_status)
        .unwrap_or(0o022)
}

/// The `Umask:` field of a `/proc/<pid>/status` text.
fn umask_of_status(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_umask_is_read_from_the_status_text() {
        let status = "Name:\tswift\nUmask:\t0027\nState:\tR (running)\n";
        assert_eq!(umask_of_status(status), Some(0o027));
        assert_eq!(umask_of_status("Name:\tswift\n"), None);
        assert_eq!(created_mode(0o022), 0o644);
        assert_eq!(created_mode(0o077), 0o600);
    }

    #[cfg(unix)]
    #[test]
    fn saved_weights_get_the_mode_of_a_created_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("config.json");
        std::fs::write(&json, "{}").unwrap();
        let weights = dir.path().join("model.safetensors");
        let t = Tensor::zeros(3, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        save(&HashMap::from([("w".to_string(), t)]), &weights).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&weights), mode(&json));
        assert_eq!(
            candle_core::safetensors::load(&weights, &candle_core::Device::Cpu)
                .unwrap()
                .len(),
            1
        );
    }
}
