//! The state file on disk (`flash_sale_zone ... state=PATH`) and its lock file `PATH.lock`:
//! how records reach the disk, how the journal is compacted while nginx runs, and how permit
//! numbers stay unique across every process that writes the file, both generations of nginx's
//! binary upgrade included. Plain Rust over the system calls; the records are `state.rs`'s,
//! and the glue logs what goes wrong.
//!
//! - **Appends**: one `write` of a whole record on an `O_APPEND` descriptor, under an `fcntl`
//!   lock on the lock file, one writer at a time: no record goes into a journal that a
//!   compaction is replacing, and none lands on the fragment another writer's record left
//!   before the mark below is set. A descriptor whose journal was replaced (its link count is
//!   0) is reopened before the write. `fcntl` locks belong to processes, so the descriptors
//!   every worker inherits from the master lock as each worker's own. An append holds the
//!   lock for one `write` (a microsecond or two); a compaction while it reads, rewrites and
//!   syncs the file (milliseconds for 100,000 permits), and the other workers' appends wait.
//! - **Compaction**: the journal is read, replayed and written back as a snapshot (through a
//!   temporary file and a rename), so that its size follows the permits, not their history.
//!   It works from the file, not from a zone's memory, so it keeps what every process wrote.
//! - **Numbers**: the next permit number lives in the lock file's first page, mapped shared by
//!   every process: two generations of nginx (a binary upgrade) never give one number twice.
//! - **A record cut short** (a full disk) is marked in that page, and the next record starts
//!   with `!` and a line break: the `!` ends the fragment's line, and no record may end with
//!   one, so the fragment is one damaged line, skipped on replay, even where what landed of it
//!   would read as a record (a key cut short is another key), and nothing else is damaged.
//! - **Mode**: both files are `0600`, owned by nginx's worker user (the master, root, can
//!   write them too): the keys in them are buyers' identities.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use std::cell::Cell;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::collections::HashSet;

use crate::sale::{PermitInfo, PermitKey};
use crate::state::{self, Replay};

/// The files' mode: the owner reads and writes, nobody else anything.
const MODE: u32 = 0o600;

/// The lock file's shared page.
#[repr(C)]
struct Page {
    /// [`PAGE_MAGIC`] once the page is laid out.
    magic: AtomicU64,
    /// The number the next permit gets; 0 until the first zone is loaded.
    next_seq: AtomicU64,
    /// 1 when a record was cut short: the next one ends its line first.
    torn: AtomicU64,
    /// Bumped by every rewrite that puts another file at the path (a compaction, a file moved
    /// aside), so that every process reopens the journal before its next record.
    generation: AtomicU64,
}

const PAGE_MAGIC: u64 = u64::from_le_bytes(*b"fslock01");

/// Written before the next record after one was cut short: ends the fragment's line with a
/// character no record ends with.
const TORN_END: &str = "!\n";
const PAGE_LEN: usize = 4096;

/// A zone's state file: the journal, the lock file and its shared page.
pub struct StateFile {
    pub path: PathBuf,
    /// The zone's header line (`state::header`): the first line of a journal made anew.
    header: String,
    journal: File,
    lock: File,
    page: NonNull<Page>,
    /// nginx's worker user and group, which own the files; `None` when nginx is not root.
    owner: Cell<Option<(libc::uid_t, libc::gid_t)>>,
    /// The page's `generation` this process's journal descriptor was opened at.
    seen: Cell<u64>,
}

/// Why an append did not land whole.
#[derive(Debug)]
pub struct AppendError {
    pub cause: io::Error,
    /// Bytes of the record that did reach the file (a damaged line now).
    pub written: usize,
}

/// Why an append made the journal at the path anew.
#[derive(Debug, PartialEq)]
pub enum Anew {
    /// It was gone (removed while nginx ran), or left empty.
    Removed,
    /// Something else was there (a stranger file, a link); it was moved here.
    Replaced(PathBuf),
}

/// What a rewrite found and left.
#[derive(Debug, Default)]
pub struct Rewritten {
    /// What the journal held, as replayed.
    pub replay: Replay,
    /// Where an unusable file was moved, to start a new one.
    pub moved_aside: Option<PathBuf>,
    /// The size of the new journal, in bytes.
    pub bytes: u64,
}

impl StateFile {
    /// Opens (creating them if need be) the journal at `path` and its lock file `PATH.lock`,
    /// both `0600`, for the zone whose header line is `header`.
    pub fn open(path: PathBuf, header: String) -> io::Result<StateFile> {
        let journal = open_journal(&path)?;
        let lock_path = lock_path(&path);
        let lock = open_file(&lock_path, OpenOptions::new().read(true).write(true).create(true))
            // The caller names the state file; this one it does not.
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", lock_path.display())))?;
        let page = map_page(&lock)?;
        // SAFETY: the page is mapped; only atomics are in it.
        let seen = unsafe { page.as_ref() }.generation.load(Ordering::Acquire);
        Ok(StateFile {
            path,
            header,
            journal,
            lock,
            page,
            owner: Cell::new(None),
            seen: Cell::new(seen),
        })
    }

    /// Gives both files to nginx's worker user, so that workers can reopen and replace them;
    /// temporary files made later get the same owner.
    pub fn set_owner(&self, uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
        self.owner.set(Some((uid, gid)));
        for file in [&self.journal, &self.lock] {
            plain_file(file, true)?;
            std::os::unix::fs::fchown(file, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    /// Whether `path` is this one's journal or lock file, or would share it if opened (the
    /// same device and inode, whatever the paths say: `a/../x`, a link in the directory,
    /// `x.lock` beside `x`): `path` and `lock_path(path)` are both checked, so that the
    /// caller can refuse before opening, and so before writing, anything.
    pub fn is_at(&self, path: &Path) -> bool {
        let id = |meta: io::Result<fs::Metadata>| meta.ok().map(|m| (m.dev(), m.ino()));
        let mine = [id(self.journal.metadata()), id(self.lock.metadata())];
        [path.to_path_buf(), lock_path(path)]
            .iter()
            .any(|p| id(fs::metadata(p)).is_some_and(|theirs| mine.contains(&Some(theirs))))
    }

    /// The counter every process of every generation takes permit numbers from.
    pub fn numbers(&self) -> &AtomicU64 {
        &self.page().next_seq
    }

    /// Appends one record, whole, after what every other process wrote. `Ok(Some(_))` when
    /// the journal at the path was gone or not this zone's (removed, or replaced, while nginx
    /// ran) and was made anew, with its header: it then holds this record alone, and the
    /// caller writes the zone's permits into it.
    pub fn append(&self, record: &str) -> Result<Option<Anew>, AppendError> {
        let failed = |cause| AppendError { cause, written: 0 };
        let _exclusive = self.locked(libc::F_WRLCK as libc::c_short).map_err(failed)?;
        let made_anew = self.reopen_if_replaced().map_err(failed)?;
        let torn = &self.page().torn;
        let mut text = String::with_capacity(record.len() + 1);
        if torn.swap(0, Ordering::AcqRel) != 0 {
            text.push_str(TORN_END);
        }
        text.push_str(record);
        let written = match write_once(&self.journal, text.as_bytes()) {
            Ok(n) => n,
            Err(cause) => {
                if text.len() > record.len() {
                    torn.store(1, Ordering::Release);
                }
                return Err(failed(cause));
            }
        };
        if written == text.len() {
            return Ok(made_anew);
        }
        // Cut short: try the rest once, which either lands or says why the disk refused it.
        let rest = &text.as_bytes()[written..];
        let (more, cause) = match write_once(&self.journal, rest) {
            Ok(n) if n == rest.len() => return Ok(made_anew),
            Ok(n) => (n, io::Error::new(io::ErrorKind::WriteZero, "the record was cut short")),
            Err(cause) => (0, cause),
        };
        torn.store(1, Ordering::Release);
        Err(AppendError { cause, written: written + more })
    }

    /// Reads the journal, replays it for `zone` (whose key expression is `key_spec`) and
    /// writes it back as a snapshot, with the next number from the shared counter and the
    /// counters `counters` gives for what was replayed. `held` are permits a zone holds that
    /// the journal may not have (a reload that points the zone at another file): those of keys
    /// the journal does not know are added. A journal that is not this zone's, or cannot be
    /// read, is moved aside (never overwritten) and a new one started. Holds the lock
    /// throughout: no record is lost to the rewrite.
    pub fn rewrite(
        &self,
        zone: &str,
        key_spec: &[u8],
        now_ms: i64,
        held: &[PermitInfo],
        counters: impl FnOnce(&Replay) -> Vec<(String, u64)>,
    ) -> io::Result<Rewritten> {
        let _exclusive = self.locked(libc::F_WRLCK as libc::c_short)?;
        // The new file first: a directory that cannot take it fails the rewrite before the
        // journal is read.
        let temp = self.temp()?;
        let mut rewritten = Rewritten::default();
        let mut replay = match read_journal(&self.path) {
            Ok(text) => state::replay(&text, zone, key_spec, now_ms),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                state::replay(b"", zone, key_spec, now_ms)
            }
            // It can be written but not read: keep it for whoever can, and start a new one.
            Err(e) => Replay {
                next_seq: 1,
                skipped: vec![format!("the whole file: it cannot be read ({e})")],
                ..Replay::default()
            },
        };
        if replay.skipped.iter().any(|r| r.starts_with("the whole file")) {
            let aside = self.move_aside(now_ms).inspect_err(|_| {
                let _ = fs::remove_file(&temp.0);
            })?;
            rewritten.moved_aside = Some(aside);
            replay.permits.clear();
            replay.counters.clear();
        }
        let known: HashSet<PermitKey<'_>> =
            replay.permits.iter().map(PermitInfo::permit_key).collect();
        // What the zone holds and the file does not know, unless the file revoked it since.
        let missing: Vec<PermitInfo> = held
            .iter()
            .filter(|p| !known.contains(&p.permit_key()) && !replay.gone(p.seq))
            .cloned()
            .collect();
        for p in &missing {
            replay.next_seq = replay.next_seq.max(p.seq + 1);
        }
        replay.permits.extend(missing);
        replay.permits.sort_by_key(|p| p.seq);
        let numbers = self.numbers();
        numbers.fetch_max(replay.next_seq.max(1), Ordering::AcqRel);
        let next_seq = numbers.load(Ordering::Acquire);
        let text = state::snapshot(zone, key_spec, next_seq, &counters(&replay), &replay.permits);
        self.replace(temp, text.as_bytes())?;
        rewritten.bytes = text.len() as u64;
        rewritten.replay = replay;
        Ok(rewritten)
    }

    /// The journal's size now, in bytes.
    pub fn size(&self) -> io::Result<u64> {
        fs::metadata(&self.path).map(|m| m.len())
    }

    fn page(&self) -> &Page {
        // SAFETY: the page is mapped for as long as `self`, and only atomics are in it.
        unsafe { self.page.as_ref() }
    }

    /// The temporary file a rewrite writes, `PATH.tmp`, made empty and given the files' owner.
    fn temp(&self) -> io::Result<(PathBuf, File)> {
        let mut temp = self.path.clone().into_os_string();
        temp.push(".tmp");
        let temp = PathBuf::from(temp);
        // A new file, never one that is there (a link someone put in its place).
        let _ = fs::remove_file(&temp);
        let file = open_file(&temp, OpenOptions::new().write(true).create_new(true))?;
        if let Err(e) = self.owned(&file) {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        Ok((temp, file))
    }

    /// Replaces the journal with `text` through the temporary file and a rename, so that a
    /// crash leaves the old journal or the new one, and points this process's descriptor at it.
    fn replace(&self, (temp, mut file): (PathBuf, File), text: &[u8]) -> io::Result<()> {
        let written = file.write_all(text).and_then(|()| file.sync_all());
        drop(file);
        if let Err(e) = written.and_then(|()| fs::rename(&temp, &self.path)) {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        // A fresh file: no fragment to end, and every process reopens it.
        self.page().torn.store(0, Ordering::Release);
        self.seen.set(self.page().generation.fetch_add(1, Ordering::AcqRel) + 1);
        self.reopen().map(|_| ())
    }

    /// Gives a file this process made to the files' owner.
    fn owned(&self, file: &File) -> io::Result<()> {
        match self.owner.get() {
            Some((uid, gid)) => std::os::unix::fs::fchown(file, Some(uid), Some(gid)),
            None => Ok(()),
        }
    }

    /// Reopens the journal if another process replaced it (a compaction) or it was removed;
    /// says why when it is made anew.
    fn reopen_if_replaced(&self) -> io::Result<Option<Anew>> {
        let links = self.journal.metadata()?.nlink();
        let generation = self.page().generation.load(Ordering::Acquire);
        if links == 0 || generation != self.seen.get() {
            let anew = self.reopen()?;
            self.seen.set(self.page().generation.load(Ordering::Acquire));
            return Ok(anew);
        }
        Ok(None)
    }

    /// Points this process's journal descriptor at the file now at `path`. What is there and
    /// is not this zone's journal (a stranger file, a link) is moved aside first, never written
    /// into: its records would be lost with it. A journal made anew gets the zone's header.
    fn reopen(&self) -> io::Result<Option<Anew>> {
        let mut moved_aside = None;
        if !self.journal_at_path()? {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            moved_aside = Some(self.move_aside(now_ms)?);
        }
        let mut file = open_journal(&self.path)?;
        let made_anew = file.metadata()?.len() == 0;
        if made_anew {
            self.owned(&file).and_then(|()| file.write_all(self.header.as_bytes()))?;
            self.page().torn.store(0, Ordering::Release);
        }
        // The descriptor number stays: the file behind it is swapped atomically (dup2), which
        // std has no call for.
        // SAFETY: both descriptors are open.
        let duplicated = unsafe { libc::dup2(file.as_raw_fd(), self.journal.as_raw_fd()) };
        if duplicated < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(match moved_aside {
            Some(aside) => Some(Anew::Replaced(aside)),
            None if made_anew => Some(Anew::Removed),
            None => None,
        })
    }

    /// Whether the path holds this zone's journal, or nothing yet (absent, or empty as
    /// `nginx -t` leaves it): it starts with the zone's header line.
    fn journal_at_path(&self) -> io::Result<bool> {
        let file = File::options().read(true).custom_flags(libc::O_NOFOLLOW).open(&self.path);
        let mut start = Vec::with_capacity(self.header.len());
        match file {
            Ok(file) => file.take(self.header.len() as u64).read_to_end(&mut start)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            // A link (ELOOP), or what cannot be read: not ours.
            Err(_) => return Ok(false),
        };
        Ok(start.is_empty() || start == self.header.as_bytes())
    }

    /// Renames the file at the path `PATH.unusable-SECONDS` (`-N` after it when that name is
    /// taken: two in one second keep both), and tells every process to reopen.
    fn move_aside(&self, now_ms: i64) -> io::Result<PathBuf> {
        let aside = (0..)
            .map(|n: u32| {
                let mut aside = self.path.clone().into_os_string();
                aside.push(format!(".unusable-{}", now_ms / 1000));
                if n > 0 {
                    aside.push(format!("-{n}"));
                }
                PathBuf::from(aside)
            })
            .find(|aside| !aside.exists())
            .unwrap_or_default();
        fs::rename(&self.path, &aside)?;
        self.page().generation.fetch_add(1, Ordering::AcqRel);
        Ok(aside)
    }

    /// Takes the lock file's lock (`F_WRLCK`, exclusive) until the guard is dropped; waits
    /// for it.
    fn locked(&self, kind: libc::c_short) -> io::Result<Locked<'_>> {
        set_lock(&self.lock, kind, true)?;
        Ok(Locked(self))
    }
}

/// A held lock on the lock file; released when dropped.
struct Locked<'a>(&'a StateFile);

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let _ = set_lock(&self.0.lock, libc::F_UNLCK as libc::c_short, false);
    }
}

impl Drop for StateFile {
    fn drop(&mut self) {
        // SAFETY: the page was mapped by `open` with this length, and is unmapped once, here.
        unsafe { libc::munmap(self.page.as_ptr().cast(), PAGE_LEN) };
    }
}

/// `PATH.lock` beside the journal at `path`.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut lock = path.as_os_str().to_owned();
    lock.push(".lock");
    PathBuf::from(lock)
}

fn open_journal(path: &Path) -> io::Result<File> {
    open_file(path, OpenOptions::new().append(true).create(true))
}

/// The journal's text; a link at its path is not followed (the master runs as root).
fn read_journal(path: &Path) -> io::Result<Vec<u8>> {
    let mut text = Vec::new();
    File::options().read(true).custom_flags(libc::O_NOFOLLOW).open(path)?.read_to_end(&mut text)?;
    Ok(text)
}

/// Opens `path` as `options` say, close-on-exec (std's default), without following a link, and
/// makes it `0600` (a file an older build made `0644` included).
fn open_file(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    let file = options.custom_flags(libc::O_NOFOLLOW).mode(MODE).open(path)?;
    plain_file(&file, false)?;
    file.set_permissions(fs::Permissions::from_mode(MODE))?;
    Ok(file)
}

/// Refuses what is not a regular file (and, with `one_link`, one of a single link): the master
/// (root) changes these files' mode and owner, and must not be led by a link to another file
/// (`/etc/shadow`) that the directory's owner, nginx's user, put at their path. Symbolic links
/// are not followed at all (`O_NOFOLLOW`); a hard link to another's file is refused before
/// its owner is changed (a backup tool's hard link to the journal itself does no harm).
fn plain_file(file: &File, one_link: bool) -> io::Result<()> {
    let meta = file.metadata()?;
    if !meta.is_file() || (one_link && meta.nlink() > 1) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file of one link; refused",
        ));
    }
    Ok(())
}

/// Maps the lock file's first page, shared, laying it out if it is new. The page's blocks
/// are allocated first, so that a full disk never faults a write to it.
fn map_page(lock: &File) -> io::Result<NonNull<Page>> {
    let fd = lock.as_raw_fd();
    // SAFETY: `fd` is open; the range is the page.
    let rc = unsafe { libc::posix_fallocate(fd, 0, PAGE_LEN as libc::off_t) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: a shared, readable and writable mapping of the file's first page, which exists.
    let addr = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            PAGE_LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let page = NonNull::new(addr.cast::<Page>()).ok_or_else(io::Error::last_os_error)?;
    // SAFETY: the mapping is page-aligned, PAGE_LEN long, and holds only atomics (a new
    // file's zeroes are a valid, empty page).
    let magic = unsafe { &page.as_ref().magic };
    let _ = magic.compare_exchange(0, PAGE_MAGIC, Ordering::AcqRel, Ordering::Relaxed);
    Ok(page)
}

fn set_lock(lock: &File, kind: libc::c_short, wait: bool) -> io::Result<()> {
    let fd = lock.as_raw_fd();
    // SAFETY: `flock` is plain data; all zeroes is "from the start, to the end".
    let mut request: libc::flock = unsafe { core::mem::zeroed() };
    request.l_type = kind;
    request.l_whence = libc::SEEK_SET as libc::c_short;
    let command = if wait { libc::F_SETLKW } else { libc::F_SETLK };
    loop {
        // SAFETY: `fd` is open; `request` is a valid lock description.
        if unsafe { libc::fcntl(fd, command, &request) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One `write` (std's `write_all` would hide how much of a record landed): how many bytes did.
fn write_once(mut file: &File, bytes: &[u8]) -> io::Result<usize> {
    loop {
        match file.write(bytes) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("flash-sale-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn grant(key: &str, seq: u64) -> String {
        let p = PermitInfo {
            item: Vec::new(),
            key: key.as_bytes().to_vec(),
            seq,
            granted_ms: 1,
            expires_ms: None,
        };
        state::grant(&p)
    }

    #[test]
    fn files_are_private_and_compaction_keeps_every_record() {
        let dir = temp_dir("compact");
        let path = dir.join("z.state");
        let file = StateFile::open(path.clone(), state::header("z", b"$k")).unwrap();
        let first = file.rewrite("z", b"$k", 0, &[], |_| Vec::new()).unwrap();
        assert!(first.replay.permits.is_empty());
        for n in 1..=50 {
            assert_eq!(file.numbers().fetch_add(1, Ordering::AcqRel), n);
            file.append(&grant(&format!("k{n}"), n)).unwrap();
        }
        for n in 1..=40 {
            file.append(&state::revoke(n)).unwrap();
        }
        let before = file.size().unwrap();
        let again = file.rewrite("z", b"$k", 0, &[], |_| Vec::new()).unwrap();
        assert_eq!(again.replay.permits.len(), 10);
        assert!(again.bytes < before / 3, "{} of {before} bytes", again.bytes);
        // Appends after the rewrite land in the new journal, from the same descriptor.
        file.append(&grant("late", 51)).unwrap();
        let text = fs::read(&path).unwrap();
        let replay = state::replay(&text, "z", b"$k", 0);
        assert_eq!(replay.permits.len(), 11);
        assert_eq!(replay.next_seq, 52);
        for p in [&path, &lock_path(&path)] {
            let mode = fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn two_openings_share_numbers_and_see_each_others_records() {
        // As two generations of nginx open one state file during a binary upgrade.
        let dir = temp_dir("generations");
        let path = dir.join("z.state");
        let old = StateFile::open(path.clone(), state::header("z", b"$k")).unwrap();
        old.rewrite("z", b"$k", 0, &[], |_| Vec::new()).unwrap();
        let take = |f: &StateFile| f.numbers().fetch_add(1, Ordering::AcqRel);
        let (a, b) = (take(&old), take(&old));
        old.append(&grant("a", a)).unwrap();
        old.append(&grant("b", b)).unwrap();
        let new = StateFile::open(path.clone(), state::header("z", b"$k")).unwrap();
        let loaded = new.rewrite("z", b"$k", 0, &[], |_| Vec::new()).unwrap();
        assert_eq!(loaded.replay.permits.len(), 2);
        let mut seen = vec![a, b];
        for n in 0..6 {
            let file = if n % 2 == 0 { &old } else { &new };
            let seq = take(file);
            file.append(&grant(&format!("g{n}"), seq)).unwrap();
            seen.push(seq);
        }
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen, (1..=8).collect::<Vec<_>>(), "no number twice");
        // The old generation writes its snapshot as it stops: the new one's records stay.
        old.rewrite("z", b"$k", 0, &[], |_| Vec::new()).unwrap();
        drop(old);
        new.append(&grant("after", take(&new))).unwrap();
        let replay = state::replay(&fs::read(&path).unwrap(), "z", b"$k", 0);
        assert_eq!(replay.permits.len(), 9);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_record_cut_short_damages_one_line_only() {
        let dir = temp_dir("torn");
        let path = dir.join("z.state");
        let file = StateFile::open(path.clone(), state::header("z", b"$k")).unwrap();
        file.rewrite("z", b"$k", 0, &[], |_| Vec::new()).unwrap();
        file.append(&grant("a", 1)).unwrap();
        // What a full disk leaves: part of a record, and the mark. Here what landed reads as
        // a record: the key "ab", cut short of "abc", with a newer number than a's.
        let fragment = &grant("abc", 2)[..grant("abc", 2).len() - 3];
        std::io::Write::write_all(
            &mut fs::OpenOptions::new().append(true).open(&path).unwrap(),
            fragment.as_bytes(),
        )
        .unwrap();
        file.page().torn.store(1, Ordering::Release);
        file.append(&grant("c", 3)).unwrap();
        let replay = state::replay(&fs::read(&path).unwrap(), "z", b"$k", 0);
        let keys: Vec<_> = replay.permits.iter().map(|p| p.key.clone()).collect();
        assert_eq!(keys, [b"a".to_vec(), b"c".to_vec()], "no permit for \"ab\"");
        assert_eq!(replay.skipped.len(), 1, "{:?}", replay.skipped);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn permits_a_zone_holds_join_a_journal_that_lacks_them() {
        // A reload pointed the zone at a new file: its permits must not be lost to it.
        let dir = temp_dir("held");
        let file = StateFile::open(dir.join("new.state"), state::header("z", b"$k")).unwrap();
        let held = |key: &str, seq| PermitInfo {
            item: Vec::new(),
            key: key.as_bytes().to_vec(),
            seq,
            granted_ms: 1,
            expires_ms: None,
        };
        file.rewrite("z", b"$k", 0, &[held("a", 4), held("b", 9)], |_| Vec::new()).unwrap();
        let again = file.rewrite("z", b"$k", 0, &[], |_| Vec::new()).unwrap();
        assert_eq!(again.replay.permits, [held("a", 4), held("b", 9)]);
        assert_eq!(file.numbers().load(Ordering::Acquire), 10);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_permit_the_file_revoked_does_not_come_back_from_the_zone() {
        let dir = temp_dir("held-revoked");
        let file = StateFile::open(dir.join("z.state"), state::header("z", b"$k")).unwrap();
        file.rewrite("z", b"$k", 0, &[], |_| Vec::new()).unwrap();
        file.append(&grant("a", 5)).unwrap();
        file.append(&state::revoke(5)).unwrap();
        let held = PermitInfo {
            item: Vec::new(),
            key: b"a".to_vec(),
            seq: 5,
            granted_ms: 1,
            expires_ms: None,
        };
        let done =
            file.rewrite("z", b"$k", 0, std::slice::from_ref(&held), |_| Vec::new()).unwrap();
        assert!(done.replay.permits.is_empty());
        // The snapshot keeps no trace of the revocation but its next number: enough, for
        // another generation's zone that still holds the permit.
        let again = file.rewrite("z", b"$k", 0, &[held], |_| Vec::new()).unwrap();
        assert!(again.replay.permits.is_empty());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_journal_made_anew_or_replaced_gets_the_zones_permits() {
        // `nginx -s quit` after the file was removed: the signaller's configuration makes it
        // anew, empty, before the master's last compaction.
        let dir = temp_dir("anew");
        let path = dir.join("z.state");
        let file = StateFile::open(path.clone(), state::header("z", b"$k")).unwrap();
        file.rewrite("z", b"$k", 0, &[], |_| Vec::new()).unwrap();
        file.append(&grant("a", 1)).unwrap();
        let held = [PermitInfo {
            item: Vec::new(),
            key: b"a".to_vec(),
            seq: 1,
            granted_ms: 1,
            expires_ms: None,
        }];
        fs::remove_file(&path).unwrap();
        drop(StateFile::open(path.clone(), state::header("z", b"$k")).unwrap());
        let done = file.rewrite("z", b"$k", 0, &held, |_| Vec::new()).unwrap();
        assert_eq!(done.replay.permits, held);
        // Replaced by something else, a link included: moved aside, its target left unread.
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &path).unwrap();
        let done = file.rewrite("z", b"$k", 0, &held, |_| Vec::new()).unwrap();
        assert!(done.moved_aside.is_some());
        assert_eq!(done.replay.permits, held);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_link_at_the_path_is_refused() {
        let dir = temp_dir("link");
        std::os::unix::fs::symlink("/etc/hostname", dir.join("z.state")).unwrap();
        assert!(StateFile::open(dir.join("z.state"), state::header("z", b"$k")).is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_journal_removed_while_in_use_is_made_anew_with_its_header() {
        let dir = temp_dir("removed");
        let path = dir.join("z.state");
        let file = StateFile::open(path.clone(), state::header("z", b"$k")).unwrap();
        file.rewrite("z", b"$k", 0, &[], |_| Vec::new()).unwrap();
        assert_eq!(file.append(&grant("a", 1)).unwrap(), None);
        fs::remove_file(&path).unwrap();
        let anew = file.append(&grant("b", 2)).unwrap();
        assert_eq!(anew, Some(Anew::Removed), "made anew: the caller rewrites it");
        let replay = state::replay(&fs::read(&path).unwrap(), "z", b"$k", 0);
        assert!(replay.skipped.is_empty(), "{:?}", replay.skipped);
        assert_eq!(replay.permits.len(), 1);
        // Replaced by a stranger file, then by a link: each is moved aside untouched, never
        // written into, and the record goes to a journal made anew.
        fs::remove_file(&path).unwrap();
        fs::write(&path, "not a state file\n").unwrap();
        let Some(Anew::Replaced(aside)) = file.append(&grant("c", 3)).unwrap() else {
            panic!("a stranger file is not the journal");
        };
        assert_eq!(fs::read(&aside).unwrap(), b"not a state file\n");
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&aside, &path).unwrap();
        assert!(matches!(file.append(&grant("d", 4)).unwrap(), Some(Anew::Replaced(_))));
        assert_eq!(fs::read(&aside).unwrap(), b"not a state file\n");
        let replay = state::replay(&fs::read(&path).unwrap(), "z", b"$k", 0);
        assert_eq!(replay.permits.len(), 1, "{:?}", replay.skipped);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn unusable_files_moved_aside_in_one_second_keep_both() {
        let dir = temp_dir("aside");
        let path = dir.join("z.state");
        for _ in 0..2 {
            fs::write(&path, "not a state file\n").unwrap();
            let file = StateFile::open(path.clone(), state::header("z", b"$k")).unwrap();
            let done = file.rewrite("z", b"$k", 5_000, &[], |_| Vec::new()).unwrap();
            assert!(done.moved_aside.is_some());
        }
        assert!(dir.join("z.state.unusable-5").exists());
        assert!(dir.join("z.state.unusable-5-1").exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
