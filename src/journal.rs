//! The state file on disk (`flash_sale_zone ... state=PATH`): opened when the configuration is
//! read, so that every worker inherits the descriptor; read back into a new zone; appended to
//! by workers as permits change; rewritten as a snapshot when the zone is created and when the
//! master exits. The records themselves are `state.rs`'s.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nginx_sys::{ngx_log_t, NGX_LOG_NOTICE, NGX_LOG_WARN};
use ngx::core::SlabPool;
use ngx::ngx_log_error;

use crate::state;
use crate::zone::{PermitTable, ZoneStore};

/// A zone's state file and the descriptor appends go through.
pub struct StateFile {
    pub path: PathBuf,
    fd: libc::c_int,
}

impl StateFile {
    pub fn open(path: PathBuf) -> io::Result<StateFile> {
        let fd = open_append(&path)?;
        Ok(StateFile { path, fd })
    }

    /// Appends one record. A single `write` on an `O_APPEND` descriptor lands whole, after
    /// what other workers wrote; the page cache keeps it through a crash of nginx.
    pub fn append(&self, record: &str) -> bool {
        // SAFETY: `fd` is open for as long as `self`; the buffer is valid for its length.
        let written = unsafe { libc::write(self.fd, record.as_ptr().cast(), record.len()) };
        written == record.len() as isize
    }

    /// Replaces the file with `text` (through a temporary file and a rename, so that a crash
    /// leaves the old file or the new one), and points the descriptor at the new file.
    pub fn rewrite(&self, text: &str) -> io::Result<()> {
        let mut temp = self.path.clone().into_os_string();
        temp.push(".tmp");
        let temp = PathBuf::from(temp);
        fs::write(&temp, text)?;
        fs::File::open(&temp)?.sync_all()?;
        fs::rename(&temp, &self.path)?;
        let fd = open_append(&self.path)?;
        // SAFETY: both descriptors are open; dup2 swaps the file behind ours atomically.
        let duplicated = unsafe { libc::dup2(fd, self.fd) };
        // SAFETY: `fd` is ours and no longer needed.
        unsafe { libc::close(fd) };
        if duplicated < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Moves an unusable file aside, so that nothing in it is lost by writing over it.
    fn move_aside(&self, now_s: i64) -> io::Result<PathBuf> {
        let mut aside = self.path.clone().into_os_string();
        aside.push(format!(".unusable-{now_s}"));
        let aside = PathBuf::from(aside);
        fs::rename(&self.path, &aside)?;
        Ok(aside)
    }
}

impl Drop for StateFile {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours, and closed once, here.
        unsafe { libc::close(self.fd) };
    }
}

fn open_append(path: &Path) -> io::Result<libc::c_int> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    let flags = libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC;
    // SAFETY: `c_path` is a valid C string.
    let fd = unsafe { libc::open(c_path.as_ptr(), flags, 0o644) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Fills a new zone's table from its state file and leaves the file as a snapshot of it
/// (except under `nginx -t`, which only reads).
/// Problems are logged and never stop nginx: what could be read is kept.
pub fn load(
    file: &StateFile,
    zone: &str,
    key_spec: &[u8],
    slab: &SlabPool,
    table: std::ptr::NonNull<PermitTable>,
    log: *mut ngx_log_t,
) {
    let now_ms = crate::handler::now_ms();
    // SAFETY: set once at startup; `nginx -t` reads the file but changes nothing.
    let dry = unsafe { nginx_sys::ngx_test_config } != 0;
    let path = file.path.display();
    let replay = match fs::read(&file.path) {
        Ok(text) => state::replay(&text, zone, key_spec, now_ms),
        // It can be written but not read: keep it for whoever can, and start a new one.
        Err(e) => state::Replay {
            next_seq: 1,
            skipped: vec![format!("the whole file: it cannot be read ({e})")],
            ..state::Replay::default()
        },
    };
    for reason in &replay.skipped {
        ngx_log_error!(
            NGX_LOG_WARN,
            log,
            "flash_sale_zone \"{}\": skipped {} of state file \"{}\"",
            zone,
            reason,
            path
        );
    }
    let whole_file_skipped = replay.skipped.iter().any(|r| r.starts_with("the whole file"));
    if whole_file_skipped && !dry {
        match file.move_aside(now_ms / 1000) {
            Ok(aside) => {
                ngx_log_error!(
                    NGX_LOG_WARN,
                    log,
                    "flash_sale_zone \"{}\": kept the unusable state file as \"{}\"",
                    zone,
                    aside.display()
                );
            }
            Err(e) => {
                ngx_log_error!(
                    NGX_LOG_WARN,
                    log,
                    "flash_sale_zone \"{}\": cannot move \"{}\" aside ({})",
                    zone,
                    path,
                    e
                );
            }
        }
    }
    let lost = {
        let locked = slab.lock();
        // SAFETY: the table is new and the master is its only user; the lock is held.
        unsafe { &mut *table.as_ptr() }.restore(
            &locked,
            &replay.permits,
            replay.next_seq,
            &replay.counters,
        )
    };
    ngx_log_error!(
        NGX_LOG_NOTICE,
        log,
        "flash_sale_zone \"{}\": restored {} permits from \"{}\"{}",
        zone,
        replay.permits.len() - lost,
        path,
        if lost > 0 { format!(", {lost} did not fit the zone") } else { String::new() }
    );
    if !dry {
        // SAFETY: the table lives in `slab`.
        let mut store = unsafe { ZoneStore::new(slab, table, now_ms) };
        snapshot(file, zone, key_spec, &mut store, log);
    }
}

/// Rewrites the file as the zone is now.
pub fn snapshot(
    file: &StateFile,
    zone: &str,
    key_spec: &[u8],
    store: &mut ZoneStore<'_, SlabPool>,
    log: *mut ngx_log_t,
) {
    let (next_seq, permits) = store.snapshot();
    let counters = store.table().stats.named_values();
    let text = state::snapshot(zone, key_spec, next_seq, &counters, &permits);
    if let Err(e) = file.rewrite(&text) {
        ngx_log_error!(
            NGX_LOG_WARN,
            log,
            "flash_sale_zone \"{}\": cannot write state file \"{}\" ({})",
            zone,
            file.path.display(),
            e
        );
    }
}
