//! The content-addressed results store of one experiment:
//!
//! ```text
//! <dir>/<name>/.lock                 run lock (exclusive; shared by `--shard` runs)
//! <dir>/<name>/cells/<sha256>/       complete cells: cell.json, image.png, output.safetensors, params.safetensors
//! <dir>/<name>/tmp/<sha256>/         a cell being written (renamed into cells/ when complete)
//! <dir>/<name>/locks/<sha256>.lock   per-cell locks (several shards on one directory)
//! <dir>/<name>/failed/<sha256>.json  the error of a cell's last failed attempt
//! <dir>/<name>/damaged/<sha256>.<n>/  a complete cell that failed `--verify`, set aside by `run --verify`
//! <dir>/<name>/running/<host>-<pid>.json  what a live `run` works on (removed when it ends)
//! ```
//!
//! The id of a cell is the sha256 of its canonical key (sorted-key compact JSON of everything
//! that changes its output). A cell directory exists only once all its files are written, so
//! a killed run never leaves a partial cell; the next run deletes stale `tmp/` entries it
//! holds the lock for and recomputes them.

use std::collections::BTreeMap;
use std::fs::{self, File, TryLockError};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// Sorted-key compact JSON: the same value always gives the same bytes.
pub fn canonical_json(v: &serde_json::Value) -> String {
    fn sort(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = serde_json::Map::new();
                for k in keys {
                    out.insert(k.clone(), sort(&m[k]));
                }
                serde_json::Value::Object(out)
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    // serde_json's map keeps insertion order only with `preserve_order`; sorting on the way
    // in makes the output sorted either way.
    serde_json::to_string(&sort(v)).expect("JSON values serialise")
}

pub fn cell_id(key: &serde_json::Value) -> String {
    sha256_hex(canonical_json(key).as_bytes())
}

pub struct Store {
    pub root: PathBuf,
    _lock: File,
}

/// Tries to take an advisory lock on `path` (created if absent): `Ok(None)` when another
/// process holds it in a conflicting mode. Shared by the run lock, the cell locks and
/// `report`'s lock so that all of them open, lock and word their errors alike.
pub fn try_lock_file(path: &Path, shared: bool) -> Result<Option<File>> {
    let f = File::options().create(true).truncate(false).write(true).open(path).with_context(|| format!("cannot open {}", path.display()))?;
    match if shared { f.try_lock_shared() } else { f.try_lock() } {
        Ok(()) => Ok(Some(f)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// sha256 of each named file of `dir`: a cell's `files_sha256`, which `--verify` checks.
pub fn file_hashes(dir: &Path, files: &[String]) -> Result<BTreeMap<String, String>> {
    files
        .iter()
        .map(|f| {
            let p = dir.join(f);
            let bytes = fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
            Ok((f.clone(), sha256_hex(&bytes)))
        })
        .collect()
}

/// What `Store::verify` found in a complete cell.
#[derive(Debug, PartialEq)]
pub enum CellCheck {
    /// Every file its record lists is present with the recorded sha256.
    Intact,
    /// Every listed file is present, but the record (from before ddrep recorded hashes) has no
    /// sha256 to check them against.
    Unrecorded,
    /// Why not: an unreadable record, a missing file, a file whose bytes changed.
    Damaged(String),
}

/// How a cell lock attempt went.
pub enum CellLock {
    Held(File),
    /// Another process works on it.
    Busy,
}

impl Store {
    /// Opens (creating) the store and takes the run lock: exclusive for a whole-grid run,
    /// shared for a shard (shards coordinate with per-cell locks).
    pub fn open(root: &Path, shared: bool) -> Result<Self> {
        for d in ["cells", "tmp", "locks", "failed"] {
            fs::create_dir_all(root.join(d)).with_context(|| format!("cannot create results folder {}", root.join(d).display()))?;
        }
        let lock_path = root.join(".lock");
        let Some(f) = try_lock_file(&lock_path, shared)? else {
            bail!(
                "another `ddrep run` is working on {} (it holds {}); wait for it to finish, or run every process with --shard I/N to share the folder",
                root.display(),
                lock_path.display()
            )
        };
        // experiment.json and the like of a run killed mid-write.
        crate::io::sweep_stale_temps(root);
        sweep_stale_heartbeats(root);
        Ok(Self { root: root.to_path_buf(), _lock: f })
    }

    pub fn cell_dir(root: &Path, id: &str) -> PathBuf {
        root.join("cells").join(id)
    }

    /// A cell is complete when its directory (renamed into place last) has its record.
    pub fn is_complete(root: &Path, id: &str) -> bool {
        Self::cell_dir(root, id).join("cell.json").is_file()
    }

    pub fn failed_path(root: &Path, id: &str) -> PathBuf {
        root.join("failed").join(format!("{id}.json"))
    }

    pub fn lock_cell(&self, id: &str) -> Result<CellLock> {
        let p = self.root.join("locks").join(format!("{id}.lock"));
        Ok(try_lock_file(&p, false)?.map_or(CellLock::Busy, CellLock::Held))
    }

    /// A fresh temporary directory for a cell (call with the cell's lock held).
    pub fn begin(&self, id: &str) -> Result<PathBuf> {
        let tmp = self.root.join("tmp").join(id);
        if tmp.exists() {
            fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove stale {}", tmp.display()))?;
        }
        fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        Ok(tmp)
    }

    /// Moves a written cell into place.
    pub fn commit(&self, id: &str, tmp: &Path) -> Result<()> {
        let dest = Self::cell_dir(&self.root, id);
        if Self::is_complete(&self.root, id) {
            fs::remove_dir_all(tmp).ok();
            return Ok(());
        }
        if dest.exists() {
            // Not complete, so not from a rename: nothing else creates it. Clear it.
            fs::remove_dir_all(&dest).with_context(|| format!("cannot remove {}", dest.display()))?;
        }
        // The files reach the disk before the rename that makes the cell complete: a machine
        // crash then leaves either no cell or a whole one, never a cell.json of zeros.
        for e in fs::read_dir(tmp).with_context(|| format!("cannot read {}", tmp.display()))? {
            let p = e?.path();
            File::open(&p).and_then(|f| f.sync_all()).with_context(|| format!("cannot flush {} to disk", p.display()))?;
        }
        crate::io::sync_dir(tmp);
        fs::rename(tmp, &dest).with_context(|| format!("cannot move {} to {}", tmp.display(), dest.display()))?;
        crate::io::sync_dir(&self.root.join("cells"));
        fs::remove_file(Self::failed_path(&self.root, id)).ok();
        Ok(())
    }

    /// Checks a complete cell against its own record (`cell.json`'s `files` and `files_sha256`).
    pub fn verify(root: &Path, id: &str) -> CellCheck {
        let dir = Self::cell_dir(root, id);
        let rec: serde_json::Value = match fs::read(dir.join("cell.json")).map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string())) {
            Ok(v) => v,
            Err(e) => return CellCheck::Damaged(format!("cell.json cannot be read ({e})")),
        };
        if rec["cell_id"].as_str() != Some(id) {
            return CellCheck::Damaged("cell.json names another cell".into());
        }
        let Some(files) = rec["files"].as_array().map(|a| a.iter().filter_map(|f| f.as_str()).collect::<Vec<_>>()).filter(|f| !f.is_empty()) else {
            return CellCheck::Damaged("cell.json lists no files".into());
        };
        let recorded = rec["files_sha256"].as_object();
        for f in files {
            let p = dir.join(f);
            let bytes = match fs::read(&p) {
                Ok(b) => b,
                Err(e) => return CellCheck::Damaged(format!("{f} cannot be read ({e})")),
            };
            if let Some(want) = recorded.map(|r| r.get(f).and_then(|h| h.as_str())) {
                if want != Some(sha256_hex(&bytes).as_str()) {
                    return CellCheck::Damaged(format!("{f} differs from its recorded sha256"));
                }
            }
        }
        if recorded.is_some() {
            CellCheck::Intact
        } else {
            CellCheck::Unrecorded
        }
    }

    /// The sha256 a cell's record holds for `file`; `None` for records from before hashes were
    /// recorded (or unreadable ones: reading the file itself then tells what is wrong).
    pub fn recorded_sha256(root: &Path, id: &str, file: &str) -> Option<String> {
        let rec: serde_json::Value = serde_json::from_slice(&fs::read(Self::cell_dir(root, id).join("cell.json")).ok()?).ok()?;
        rec["files_sha256"][file].as_str().map(str::to_string)
    }

    /// Moves a complete cell (call with its lock held) to `damaged/<id>.<n>`, kept for
    /// inspection, so that the cell is pending again. Returns where it went.
    pub fn set_aside(&self, id: &str) -> Result<PathBuf> {
        let dir = self.root.join("damaged");
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let dest = (0..).map(|n| dir.join(format!("{id}.{n}"))).find(|d| !d.exists()).expect("a free name");
        let src = Self::cell_dir(&self.root, id);
        fs::rename(&src, &dest).with_context(|| format!("cannot move the damaged cell {} to {}", src.display(), dest.display()))?;
        Ok(dest)
    }

    /// Complete cell ids found on disk (for `status`: cells from other settings show up too).
    pub fn complete_ids(root: &Path) -> Vec<String> {
        let mut v: Vec<String> = walkdir::WalkDir::new(root.join("cells"))
            .min_depth(1)
            .max_depth(1)
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_dir() && e.path().join("cell.json").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

/// This machine's name, for heartbeats (shards of one grid may run on several nodes).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `running/<host>-<pid>.json` of a live `run`: its shard, when it started, and the cell it
/// works on, rewritten (atomically) at each cell; removed when the run ends. `status` shows it.
pub struct Heartbeat {
    path: PathBuf,
    record: serde_json::Value,
}

impl Heartbeat {
    pub fn start(root: &Path, shard: Option<(usize, usize)>, cells: usize) -> Result<Self> {
        let dir = root.join("running");
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let host = host_name();
        let pid = std::process::id();
        let now = unix_now();
        let record = serde_json::json!({
            "host": host, "pid": pid, "shard": shard.map(|(i, n)| format!("{i}/{n}")),
            "started": now, "updated": now, "cells": cells, "done": 0, "cell": null,
        });
        let hb = Self { path: dir.join(format!("{host}-{pid}.json")), record };
        hb.write()?;
        Ok(hb)
    }

    /// The run starts cell number `done + 1` of its `cells`.
    pub fn at(&mut self, done: usize, cell: serde_json::Value) -> Result<()> {
        self.record["done"] = done.into();
        self.record["cell"] = cell;
        self.record["updated"] = unix_now().into();
        self.write()
    }

    fn write(&self) -> Result<()> {
        crate::io::write_atomic(&self.path, serde_json::to_string(&self.record)?.as_bytes())
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// A heartbeat as `status` reads it, and whether its process is known to be gone (same host,
/// no such process: a killed run).
pub struct Running {
    pub record: serde_json::Value,
    pub stale: bool,
}

/// The heartbeats under `root/running/`, oldest first.
pub fn running(root: &Path) -> Vec<Running> {
    let Ok(rd) = fs::read_dir(root.join("running")) else { return Vec::new() };
    let host = host_name();
    let mut v: Vec<Running> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| serde_json::from_slice::<serde_json::Value>(&fs::read(e.path()).ok()?).ok())
        .map(|record| {
            let gone = record["host"].as_str() == Some(host.as_str()) && record["pid"].as_u64().is_some_and(|pid| !crate::io::process_alive(pid));
            Running { record, stale: gone }
        })
        .collect();
    v.sort_by_key(|r| r.record["started"].as_u64());
    v
}

/// Removes the heartbeats of this host's dead processes (runs that were killed).
fn sweep_stale_heartbeats(root: &Path) {
    crate::io::sweep_stale_temps(&root.join("running"));
    let Ok(rd) = fs::read_dir(root.join("running")) else { return };
    let prefix = format!("{}-", host_name());
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".json")).and_then(|p| p.parse::<u64>().ok());
        if pid.is_some_and(|pid| pid != u64::from(std::process::id()) && !crate::io::process_alive(pid)) {
            let _ = fs::remove_file(e.path());
        }
    }
}
