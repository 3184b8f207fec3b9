//! `--resume_from_checkpoint` resolution. The operator passes the job's `--output_dir` on
//! every start, so the argument may be an output root (`s3://b/runs/exp1`, whose `vN-*`
//! runs are searched), one run folder (its `checkpoint-*` folders are searched), a
//! checkpoint folder, or a `best`/`last` pointer. The newest complete checkpoint wins;
//! an empty or missing location means "start fresh" (None), which the caller logs;
//! except when it names one `checkpoint-N` folder: that is a user pointing at the work
//! to continue, and starting fresh instead would silently throw it away (as Hugging
//! Face's Trainer, it is an error).

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use object_store::ObjectStoreExt;

use crate::storage::checkpoint::{
    MANIFEST_NAME, Manifest, checkpoint_step, is_complete_local, verify_local_contents,
};
use crate::storage::client::Remote;
use crate::storage::error::{Result, StorageError};
use crate::storage::location::{Location, RemoteLocation};
use crate::storage::output::{Pointer, run_version};

/// The checkpoint to resume from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePoint {
    /// The checkpoint folder (local path or URI).
    pub location: Location,
    /// Its training step, from the `checkpoint-STEP` name (None for a folder named
    /// otherwise, such as a `last` symlink).
    pub step: Option<u64>,
}

/// A folder that may hold a checkpoint, relative to the searched root ("" = the root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Relative folder, `/`-separated.
    pub dir: String,
    /// Step from the folder name.
    pub step: Option<u64>,
    /// Version of the run folder it sits in (`vN-...`), when searched from an output root.
    pub run_version: Option<u64>,
}

/// Orders candidate folders newest first: the latest run (by version number, then name)
/// first, then the highest step within it. Folders that are neither the root, a
/// `checkpoint-N` child, nor a `vN-*/checkpoint-N` grandchild are dropped.
pub fn rank_candidates<'a>(dirs: impl IntoIterator<Item = &'a str>) -> Vec<Candidate> {
    let mut out: Vec<(Candidate, String)> = Vec::new();
    for dir in dirs {
        let parts: Vec<&str> = if dir.is_empty() {
            Vec::new()
        } else {
            dir.split('/').collect()
        };
        let candidate = match parts.as_slice() {
            [] => Candidate {
                dir: String::new(),
                step: None,
                run_version: None,
            },
            [ck] if checkpoint_step(ck).is_some() => Candidate {
                dir: dir.to_string(),
                step: checkpoint_step(ck),
                run_version: None,
            },
            [run, ck] if checkpoint_step(ck).is_some() && run_version(run).is_some() => Candidate {
                dir: dir.to_string(),
                step: checkpoint_step(ck),
                run_version: run_version(run),
            },
            _ => continue,
        };
        let run_name = parts
            .first()
            .filter(|_| parts.len() == 2)
            .map(|s| s.to_string())
            .unwrap_or_default();
        out.push((candidate, run_name));
    }
    // The root itself (an explicit checkpoint folder) always wins over its children.
    out.sort_by_key(|(c, run)| {
        (
            Reverse(c.dir.is_empty()),
            Reverse(c.run_version),
            Reverse(run.clone()),
            Reverse(c.step),
        )
    });
    out.into_iter().map(|(c, _)| c).collect()
}

/// Resolves `--resume_from_checkpoint` for a local path or URI.
pub async fn resolve_resume(arg: &str) -> Result<Option<ResumePoint>> {
    let location = Location::parse(arg)?;
    let found = match &location {
        Location::Local(path) => resolve_local(path)?,
        Location::Remote(loc) => resolve_remote(&Remote::open(loc)?).await?,
    };
    // `resolve_remote` refuses a listed `checkpoint-N` without a valid manifest itself,
    // since a `best`/`last` pointer leads there too; this catches the rest (a missing
    // folder, a local one never finished).
    if found.is_none() && names_one_checkpoint(&location) {
        return Err(StorageError::NoCheckpoint {
            location: location.to_string(),
        });
    }
    Ok(found)
}

/// Whether `--resume_from_checkpoint` names the run's own `--output_dir`: the one place
/// where finding no checkpoint means a first start (the operator passes the output root
/// on every start of a job). Anywhere else it is a wrong path, and starting fresh would
/// silently throw the work to continue away.
pub fn is_output_root(resume: &str, output_dir: &str) -> bool {
    match (Location::parse(resume), Location::parse(output_dir)) {
        (Ok(Location::Local(a)), Ok(Location::Local(b))) => normalized(&a) == normalized(&b),
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// An absolute path without `.` segments or trailing separators, for comparing two
/// spellings of one folder that may not exist yet (so not `canonicalize`).
fn normalized(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    absolute
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// Why a location that [`resolve_resume`] found nothing at holds no checkpoint, for the
/// error a user sees.
pub fn why_nothing_to_resume(location: &str) -> String {
    match Location::parse(location) {
        Ok(Location::Local(path)) if !path.exists() => "does not exist".into(),
        Ok(Location::Local(path)) if !path.is_dir() => "is a file, not a folder".into(),
        Ok(Location::Local(_)) => "holds no complete checkpoint (no finished checkpoint-N \
                                   folder in it, in a vN-* run folder under it, or behind a \
                                   best/last link)"
            .into(),
        _ => "holds no complete checkpoint (no checkpoint manifest at or under it)".into(),
    }
}

/// Whether the location's last segment is a `checkpoint-N` folder (rather than a run, an
/// output root or a pointer to search).
fn names_one_checkpoint(location: &Location) -> bool {
    let name = match location {
        Location::Local(path) => path.file_name().and_then(|n| n.to_str()).unwrap_or(""),
        Location::Remote(loc) => loc.name(),
    };
    checkpoint_step(name).is_some()
}

/// Local resolution: folders renamed into place by [`LocalCheckpoint`] (or saved by
/// ms-swift) are complete; temporary folders start with '.' and never match.
///
/// [`LocalCheckpoint`]: crate::storage::checkpoint::LocalCheckpoint
pub fn resolve_local(root: &Path) -> Result<Option<ResumePoint>> {
    if !root.is_dir() {
        tracing::debug!(path = %root.display(), "no checkpoint to resume from: the folder does not exist");
        return Ok(None);
    }
    let mut dirs = vec![String::new()];
    for child in subdirs(root) {
        if checkpoint_step(&child).is_some() {
            dirs.push(child);
        } else if run_version(&child).is_some() {
            dirs.extend(
                subdirs(&root.join(&child))
                    .into_iter()
                    .map(|ck| format!("{child}/{ck}")),
            );
        }
    }
    for candidate in rank_candidates(dirs.iter().map(String::as_str)) {
        let dir = if candidate.dir.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&candidate.dir)
        };
        if is_complete_local(&dir) {
            if let Err(reason) = verify_local_contents(&dir) {
                tracing::warn!(checkpoint = %dir.display(), %reason, "skipping a checkpoint whose files do not match its manifest");
                continue;
            }
            let step = candidate.step.or_else(|| dir_step(&dir));
            return Ok(Some(ResumePoint {
                location: Location::Local(dir),
                step,
            }));
        }
        if candidate.step.is_some() {
            // A renamed-into-place folder that no longer matches its manifest (a file cut
            // short or removed after the save): say so, since an older one is taken instead.
            tracing::warn!(checkpoint = %dir.display(), "skipping an incomplete checkpoint");
        }
    }
    Ok(None)
}

fn dir_step(dir: &Path) -> Option<u64> {
    let real = std::fs::canonicalize(dir).ok()?;
    checkpoint_step(real.file_name()?.to_str()?)
}

fn subdirs(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect()
}

/// Remote resolution from one recursive listing: every folder holding a manifest is a
/// candidate; newest first, the first whose manifest parses and matches the listed
/// sizes wins.
pub async fn resolve_remote(root: &Remote) -> Result<Option<ResumePoint>> {
    let loc = &root.location;
    let sizes = list_all(root).await?;
    if sizes.is_empty() {
        return resolve_pointer(root).await;
    }
    let manifest_dirs: Vec<String> = sizes
        .keys()
        .filter_map(|rel| {
            if rel == MANIFEST_NAME {
                Some(String::new())
            } else {
                rel.strip_suffix(&format!("/{MANIFEST_NAME}"))
                    .map(str::to_string)
            }
        })
        .collect();
    for candidate in rank_candidates(manifest_dirs.iter().map(String::as_str)) {
        let dir_loc = loc.join(&candidate.dir);
        let in_dir = files_under(&sizes, &candidate.dir);
        let manifest_uri = dir_loc.join(MANIFEST_NAME).to_string();
        let bytes = match root
            .store
            .get(&dir_loc.join(MANIFEST_NAME).object_path())
            .await
        {
            Ok(result) => result
                .bytes()
                .await
                .map_err(|e| StorageError::remote("read", &manifest_uri, e))?,
            // Deleted between the listing and now (rotation): not a candidate any more.
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(StorageError::remote("read", &manifest_uri, e)),
        };
        let valid = Manifest::parse(&bytes, &manifest_uri)
            .and_then(|m| m.check_files(&in_dir, &manifest_uri));
        match valid {
            Ok(()) => {
                let step = candidate.step.or_else(|| checkpoint_step(loc.name()));
                return Ok(Some(ResumePoint {
                    location: Location::Remote(dir_loc),
                    step,
                }));
            }
            Err(e) => tracing::warn!(error = %e, "skipping an incomplete checkpoint"),
        }
    }
    if checkpoint_step(loc.name()).is_some() {
        // The user named one checkpoint folder and it is not complete: starting fresh
        // would silently throw their training away.
        return Err(StorageError::BadManifest {
            uri: loc.join(MANIFEST_NAME).to_string(),
            reason: "the checkpoint has no valid manifest (its upload did not finish)".into(),
        });
    }
    tracing::info!(uri = %loc, "no complete checkpoint under the location");
    Ok(None)
}

/// `.../best` or `.../last` given as an object: follow it to its sibling checkpoint.
async fn resolve_pointer(root: &Remote) -> Result<Option<ResumePoint>> {
    let loc = &root.location;
    let bytes = match root.store.get(&loc.object_path()).await {
        Ok(result) => result
            .bytes()
            .await
            .map_err(|e| StorageError::remote("read", loc, e))?,
        Err(object_store::Error::NotFound { ref source, .. })
            if !source.to_string().contains("NoSuchBucket") =>
        {
            tracing::info!(uri = %loc, "no checkpoint to resume from: nothing at the location");
            return Ok(None);
        }
        Err(e) => return Err(StorageError::remote("read", loc, e)),
    };
    let Some(pointer) = Pointer::parse(&bytes) else {
        return Err(StorageError::InvalidUri {
            uri: loc.to_string(),
            reason: "an object, not a checkpoint folder or a best/last pointer".into(),
        });
    };
    let parent = parent_of(loc);
    let target = root.at_key(&parent.join(&pointer.target).key);
    Box::pin(resolve_remote(&target)).await
}

fn parent_of(loc: &RemoteLocation) -> RemoteLocation {
    let key = loc.key.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
    loc.with_key(key)
}

fn files_under(sizes: &BTreeMap<String, u64>, dir: &str) -> BTreeMap<String, u64> {
    if dir.is_empty() {
        return sizes.clone();
    }
    let prefix = format!("{dir}/");
    sizes
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|rest| (rest.to_string(), *v)))
        .collect()
}

async fn list_all(root: &Remote) -> Result<BTreeMap<String, u64>> {
    let loc = &root.location;
    let prefix = loc.object_path();
    let prefix = (!loc.key.is_empty()).then_some(&prefix);
    let objects: Vec<object_store::ObjectMeta> = root
        .store
        .list(prefix)
        .try_collect()
        .await
        .map_err(|e| StorageError::remote("list", loc, e))?;
    Ok(objects
        .into_iter()
        .filter_map(|m| Some((loc.with_key(m.location.as_ref()).relative_to(loc)?, m.size)))
        .collect())
}

/// For callers that need the checkpoint's files on local disk: a local checkpoint as is,
/// a remote one downloaded (and checked against its manifest) into the cache.
pub async fn fetch_resume_point(
    point: &ResumePoint,
    cache: &crate::storage::cache::Cache,
) -> Result<PathBuf> {
    match &point.location {
        Location::Local(path) => Ok(path.clone()),
        Location::Remote(loc) => Ok(cache.materialize_remote(&Remote::open(loc)?).await?.path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(c: &[Candidate]) -> Vec<&str> {
        c.iter().map(|c| c.dir.as_str()).collect()
    }

    #[test]
    fn newest_run_then_highest_step_first() {
        let ranked = rank_candidates([
            "v0-20250101-000000/checkpoint-300",
            "v1-20250102-000000/checkpoint-100",
            "v1-20250102-000000/checkpoint-50",
            "v10-20250103-000000/checkpoint-5",
            "v2-20250102-000000/notes",
            "runs/checkpoint-900",
            "checkpoint-7",
        ]);
        assert_eq!(
            dirs(&ranked),
            [
                "v10-20250103-000000/checkpoint-5",
                "v1-20250102-000000/checkpoint-100",
                "v1-20250102-000000/checkpoint-50",
                "v0-20250101-000000/checkpoint-300",
                "checkpoint-7",
            ]
        );
    }

    #[test]
    fn the_root_itself_wins_and_steps_compare_numerically() {
        assert_eq!(
            dirs(&rank_candidates(["checkpoint-9", "", "checkpoint-10"])),
            ["", "checkpoint-10", "checkpoint-9"]
        );
    }

    #[test]
    fn local_resolution_skips_temporary_and_incomplete_folders() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        assert_eq!(resolve_local(&r.join("missing")).unwrap(), None);
        assert_eq!(resolve_local(r).unwrap(), None);
        let complete = |p: &Path| {
            std::fs::create_dir_all(p).unwrap();
            std::fs::write(p.join("trainer_state.json"), "{}").unwrap();
        };
        complete(&r.join("v0-20250101-000000/checkpoint-200"));
        complete(&r.join("v1-20250102-000000/checkpoint-100"));
        // Newer run but only a half-written (temporary) and a manifest-less folder.
        std::fs::create_dir_all(r.join("v2-20250103-000000/.checkpoint-5.tmp-1")).unwrap();
        std::fs::create_dir_all(r.join("v2-20250103-000000/checkpoint-5")).unwrap();
        let point = resolve_local(r).unwrap().unwrap();
        assert_eq!(
            point.location,
            Location::Local(r.join("v1-20250102-000000/checkpoint-100"))
        );
        assert_eq!(point.step, Some(100));
        // A run folder and a checkpoint folder resolve too.
        let run = r.join("v0-20250101-000000");
        assert_eq!(resolve_local(&run).unwrap().unwrap().step, Some(200));
        let ck = run.join("checkpoint-200");
        assert_eq!(
            resolve_local(&ck).unwrap().unwrap().location,
            Location::Local(ck.clone())
        );
        // A `last` symlink resolves to its target's step.
        std::os::unix::fs::symlink("checkpoint-200", run.join("last")).unwrap();
        assert_eq!(
            resolve_local(&run.join("last")).unwrap().unwrap().step,
            Some(200)
        );
    }

    #[test]
    fn only_the_output_root_itself_may_hold_nothing_yet() {
        let cwd = std::env::current_dir().unwrap();
        assert!(is_output_root("output/run", "output/run"));
        assert!(is_output_root("./output/run/", "output/run"));
        assert!(is_output_root(
            &cwd.join("output/run").display().to_string(),
            "output/run"
        ));
        assert!(is_output_root("file:///tmp/out", "/tmp/out/"));
        assert!(is_output_root("s3://b/runs/exp1/", "s3://b/runs/exp1"));
        assert!(!is_output_root("output/run2", "output/run"));
        assert!(!is_output_root("output/run/v0-x", "output/run"));
        assert!(!is_output_root("s3://b/runs/exp2", "s3://b/runs/exp1"));
        assert!(!is_output_root("s3://b/out", "out"));
    }

    #[test]
    fn nothing_to_resume_says_what_the_path_is() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let file = r.join("train.jsonl");
        std::fs::write(&file, "{}").unwrap();
        let reason = |p: &Path| why_nothing_to_resume(p.to_str().unwrap());
        assert_eq!(reason(&r.join("nope")), "does not exist");
        assert_eq!(reason(&file), "is a file, not a folder");
        assert!(
            reason(r).contains("no complete checkpoint"),
            "{}",
            reason(r)
        );
        let e = StorageError::NothingToResume {
            location: "nope".into(),
            reason: "does not exist".into(),
            output_dir: "output".into(),
        }
        .to_string();
        assert!(
            e.starts_with("'nope' does not exist;") && e.contains("--output_dir ('output')"),
            "{e}"
        );
    }

    /// The newest checkpoint with a file changed in place after its save (same size) is
    /// passed over for the one before it, as an unfinished one is.
    #[tokio::test]
    async fn a_checkpoint_whose_contents_changed_is_passed_over() {
        use crate::storage::checkpoint::LocalCheckpoint;
        let run = tempfile::tempdir().unwrap();
        for step in [2, 4] {
            let ck = LocalCheckpoint::begin(run.path(), step).await.unwrap();
            std::fs::write(ck.dir().join("optimizer.safetensors"), b"state").unwrap();
            ck.commit().await.unwrap();
        }
        assert_eq!(resolve_local(run.path()).unwrap().unwrap().step, Some(4));
        std::fs::write(
            run.path().join("checkpoint-4/optimizer.safetensors"),
            b"stale",
        )
        .unwrap();
        assert_eq!(resolve_local(run.path()).unwrap().unwrap().step, Some(2));
    }

    #[tokio::test]
    async fn a_named_checkpoint_that_is_missing_or_unfinished_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let arg = |p: &Path| p.to_str().unwrap().to_string();
        // A missing or empty root, run or pointer: nothing saved yet, start fresh.
        assert_eq!(
            resolve_resume(&arg(&r.join("missing"))).await.unwrap(),
            None
        );
        assert_eq!(resolve_resume(&arg(r)).await.unwrap(), None);
        assert_eq!(resolve_resume(&arg(&r.join("last"))).await.unwrap(), None);
        // One checkpoint named, but not there (a typo) or never finished.
        let unfinished = r.join("v0-20250101-000000/checkpoint-5");
        std::fs::create_dir_all(&unfinished).unwrap();
        for ck in [
            r.join("v0-20250101-000000/checkpoint-50"),
            unfinished.clone(),
        ] {
            let e = resolve_resume(&arg(&ck)).await.unwrap_err().to_string();
            assert!(
                e.contains(&arg(&ck)) && e.contains("no complete checkpoint"),
                "{e}"
            );
        }
        // Once complete, it resolves.
        std::fs::write(unfinished.join("trainer_state.json"), "{}").unwrap();
        let point = resolve_resume(&format!("{}/", arg(&unfinished)))
            .await
            .unwrap();
        assert_eq!(point.unwrap().step, Some(5));
    }
}
