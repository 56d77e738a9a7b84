//! The handful of `*at` file operations the Maildir code is allowed to use:
//! each works relative to a directory handle and never follows a symlink the
//! mailbox owner may have planted. Messages and locks are served only when
//! they are regular files, checked on the open descriptor.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

/// Open flags for a directory handle: never through a symlink.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Open flags for reading a file the owner may have replaced: no symlink, and
/// `O_NONBLOCK` so a FIFO cannot park the thread in `open()`.
const READ_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY)
    .union(OFlags::CLOEXEC);

/// What was found where a directory or a regular file must be: the error
/// carried inside `io::Error` so callers can tell a refusal from an I/O fault.
#[derive(Debug, thiserror::Error)]
#[error("{what} is {found}; refusing to use it")]
pub struct Refused {
    pub what: String,
    pub found: &'static str,
}

/// Is this error a refusal (a symlink, FIFO, device... where it must not be)?
pub fn is_refused(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<Refused>())
}

pub fn refused(what: impl std::fmt::Display, found: &'static str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        Refused {
            what: what.to_string(),
            found,
        },
    )
}

/// A name for a file type, for logs.
pub fn kind_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "an unknown kind of file",
    }
}

/// Open a directory of the admin's own tree (`mail_root`): symlinks allowed.
pub fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(fd)
}

/// Open the directory `name` in `parent`, never through a symlink. `shown` is
/// the path used in the error when something else is there.
pub fn open_dir_at(parent: BorrowedFd<'_>, name: &str, shown: &Path) -> io::Result<OwnedFd> {
    match rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(e) if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR => {
            let found = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
                .map(|st| kind_name(FileType::from_raw_mode(st.st_mode)))
                .unwrap_or("not a directory");
            Err(refused(shown.display(), found))
        }
        Err(e) => Err(e.into()),
    }
}

/// Create directory `name` in `parent`; false when it already exists (of any
/// kind: `open_dir_at` then tells what it is).
pub fn mkdir_at(parent: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<bool> {
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(mode)) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::EXIST) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Create a new file `name` in `dir` (O_EXCL, which never follows a symlink),
/// open for reading and writing.
pub fn create_excl(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?;
    Ok(File::from(fd))
}

/// An unnamed regular file (`O_TMPFILE`) on the filesystem of `dir`, mode
/// `mode`: it has no name to open, clobber or sweep, and goes with its last
/// descriptor. `Unsupported` where the filesystem has no `O_TMPFILE`.
pub fn create_unnamed(dir: BorrowedFd<'_>, mode: u32) -> io::Result<File> {
    match rustix::fs::openat(
        dir,
        ".",
        OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    ) {
        Ok(fd) => Ok(File::from(fd)),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::ISDIR => {
            Err(io::Error::new(io::ErrorKind::Unsupported, e))
        }
        Err(e) => Err(e.into()),
    }
}

/// `lstat` of `name` in `dir`.
pub fn stat_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<Stat> {
    Ok(rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?)
}

pub fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// Open `name` in `dir` for reading if, and only if, it is a regular file:
/// looked at without following (so a device is never opened), opened with
/// `O_NOFOLLOW|O_NONBLOCK`, and checked again on the descriptor (it may have
/// been swapped in between). Returns the file and its size from `fstat`.
pub fn open_regular(dir: BorrowedFd<'_>, name: &str) -> io::Result<(File, u64)> {
    let before = stat_at(dir, name)?;
    let t = file_type(&before);
    if t != FileType::RegularFile {
        return Err(refused(name, kind_name(t)));
    }
    let fd = match rustix::fs::openat(dir, name, READ_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP) => return Err(refused(name, "a symbolic link")),
        Err(e) => return Err(e.into()),
    };
    let st = rustix::fs::fstat(&fd)?;
    let t = file_type(&st);
    if t != FileType::RegularFile {
        return Err(refused(name, kind_name(t)));
    }
    Ok((File::from(fd), u64::try_from(st.st_size).unwrap_or(0)))
}

/// Open `name` in `dir` for reading and writing, regular files only (the lock).
pub fn open_regular_rw(dir: BorrowedFd<'_>, name: &str) -> io::Result<File> {
    open_regular_with(dir, name, OFlags::RDWR)
}

/// Open `name` in `dir` for reading and appending (`O_APPEND`: every write
/// lands at the end, even with other writers), regular files only (the
/// `maildirsize` quota file).
pub fn open_regular_append(dir: BorrowedFd<'_>, name: &str) -> io::Result<File> {
    open_regular_with(dir, name, OFlags::RDWR | OFlags::APPEND)
}

/// `open_regular_rw` with the access flags `access`.
fn open_regular_with(dir: BorrowedFd<'_>, name: &str, access: OFlags) -> io::Result<File> {
    // Looked at first so a device node is never opened.
    let t = file_type(&stat_at(dir, name)?);
    if t != FileType::RegularFile {
        return Err(refused(name, kind_name(t)));
    }
    let fd = match rustix::fs::openat(
        dir,
        name,
        access | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP) => return Err(refused(name, "a symbolic link")),
        Err(e) => return Err(e.into()),
    };
    let t = file_type(&rustix::fs::fstat(&fd)?);
    if t != FileType::RegularFile {
        return Err(refused(name, kind_name(t)));
    }
    Ok(File::from(fd))
}

/// The names in a directory handle (not `.`/`..`, UTF-8 only: no Maildir
/// writer makes other names) with the type `readdir` reported, when it did.
pub fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<(String, Option<FileType>)>> {
    let mut out = Vec::new();
    for ent in rustix::fs::Dir::read_from(dir)? {
        let ent = ent?;
        let Ok(name) = ent.file_name().to_str() else {
            continue;
        };
        if name == "." || name == ".." {
            continue;
        }
        let t = match ent.file_type() {
            FileType::Unknown => None,
            t => Some(t),
        };
        out.push((name.to_string(), t));
    }
    Ok(out)
}

/// Is `name` in `dir` a regular file (asking `lstat` when `readdir` did not say)?
pub fn is_regular(dir: BorrowedFd<'_>, name: &str, listed: Option<FileType>) -> bool {
    match listed {
        Some(t) => t == FileType::RegularFile,
        None => stat_at(dir, name).is_ok_and(|st| file_type(&st) == FileType::RegularFile),
    }
}

pub fn unlink_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?)
}

/// Hard-link `from` in `from_dir` as `to` in `to_dir`; never follows a symlink
/// and never replaces an existing `to` (EEXIST).
pub fn link_at(
    from_dir: BorrowedFd<'_>,
    from: &str,
    to_dir: BorrowedFd<'_>,
    to: &str,
) -> io::Result<()> {
    Ok(rustix::fs::linkat(
        from_dir,
        from,
        to_dir,
        to,
        AtFlags::empty(),
    )?)
}

pub fn rename_at(
    from_dir: BorrowedFd<'_>,
    from: &str,
    to_dir: BorrowedFd<'_>,
    to: &str,
) -> io::Result<()> {
    Ok(rustix::fs::renameat(from_dir, from, to_dir, to)?)
}

/// (device, inode) of an open file.
pub fn identity(f: &impl AsFd) -> io::Result<(u64, u64)> {
    let st = rustix::fs::fstat(f)?;
    Ok((st.st_dev, st.st_ino))
}

/// (device, inode) of `name` in `dir`, without following it.
pub fn identity_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<(u64, u64)> {
    let st = stat_at(dir, name)?;
    Ok((st.st_dev, st.st_ino))
}

/// Change owner and mode through a handle (never through a symlink).
pub fn chown_chmod(
    fd: BorrowedFd<'_>,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: Option<u32>,
) -> io::Result<()> {
    if uid.is_some() || gid.is_some() {
        rustix::fs::fchown(
            fd,
            uid.map(rustix::fs::Uid::from_raw),
            gid.map(rustix::fs::Gid::from_raw),
        )?;
    }
    if let Some(m) = mode {
        rustix::fs::fchmod(fd, Mode::from_raw_mode(m))?;
    }
    Ok(())
}
