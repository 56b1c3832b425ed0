//! Named network namespaces, compatible with `ip netns`: a namespace `NAME` is kept alive by a
//! bind mount of its nsfs inode on `/run/netns/NAME`.

use std::{
    fs::File,
    io,
    os::{
        fd::{AsFd, AsRawFd as _, OwnedFd},
        unix::fs::OpenOptionsExt as _,
    },
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
    sys::statfs::{NSFS_MAGIC, fstatfs, statfs},
};

/// Where `ip netns` (and podnet) keep named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {name:?} does not exist ({}); {hint}", path(name).display())]
    Missing { name: String, hint: &'static str },
    #[error(
        "{} is not a network namespace ({what}): name one under /run/netns or a /proc/PID/ns/net",
        path(name).display()
    )]
    NotANetns { name: String, what: String },
    #[error("could not {op} network namespace {name:?}")]
    Io {
        op: &'static str,
        name: String,
        #[source]
        source: io::Error,
    },
}

/// A namespace is named (`NAME`: `/run/netns/NAME`, as `ip netns` keeps them) or given by path
/// (`/run/netns/netns-<uuid>`, `/proc/PID/ns/net`: what container runtimes pass as CNI_NETNS).
fn path(name: &str) -> PathBuf {
    if name.starts_with('/') { PathBuf::from(name) } else { PathBuf::from(NETNS_RUN_DIR).join(name) }
}

fn io_err(op: &'static str, name: &str) -> impl FnOnce(io::Error) -> NetnsError + use<> {
    let name = name.to_owned();
    move |source| NetnsError::Io { op, name, source }
}

fn errno(op: &'static str, name: &str) -> impl FnOnce(Errno) -> NetnsError + use<> {
    let io = io_err(op, name);
    move |e| io(e.into())
}

/// Whether the named namespace exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Whether the namespace `name` (or path) is the calling thread's own or the host's: a container
/// "namespace" that is really the node's, or the machine's, must not be configured as a pod.
/// The host's is the one PID 1 runs in, or kthreadd (which always runs in the initial network
/// namespace) where PID 1's cannot be read (a caller without every capability PID 1 holds).
pub fn is_node_or_host(name: &str) -> Result<bool, NetnsError> {
    use std::os::unix::fs::MetadataExt as _;
    let target = File::from(open(name)?).metadata().map_err(io_err("inspect", name))?;
    let same = |other: &str| -> Option<bool> {
        let other = std::fs::metadata(other).ok()?;
        Some((target.dev(), target.ino()) == (other.dev(), other.ino()))
    };
    let own = same("/proc/thread-self/ns/net").ok_or_else(|| {
        io_err("inspect the caller's", name)(io::Error::other("/proc/thread-self/ns/net cannot be read"))
    })?;
    let kthreadd = std::fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd");
    let host = same("/proc/1/ns/net").or_else(|| kthreadd.then(|| same("/proc/2/ns/net")).flatten());
    Ok(own || host == Some(true))
}

/// Opens the named namespace (for `setns` or `IFLA_NET_NS_FD`), which must be a network
/// namespace: a name or path anyone may pass (a runtime's CNI_NETNS) is checked before it is
/// opened (it must live on nsfs, so a FIFO, a socket, a device or a regular file is refused
/// without being opened: opening a FIFO would block, a device may act), then opened without
/// blocking, and the open file checked again (the path may have changed in between) and asked
/// for its namespace type.
pub fn open(name: &str) -> Result<OwnedFd, NetnsError> {
    let target = path(name);
    let not_netns = |what: String| NetnsError::NotANetns { name: name.to_owned(), what };
    match statfs(&target) {
        Ok(fs) if fs.filesystem_type() == NSFS_MAGIC => {}
        Ok(_) => return Err(not_netns(describe(&target))),
        Err(Errno::ENOENT) => {
            let hint = if name.starts_with('/') {
                "the container (or its sandbox) is gone"
            } else {
                "create it first, e.g. `ip netns add NAME`"
            };
            return Err(NetnsError::Missing { name: name.to_owned(), hint });
        }
        Err(e) => return Err(errno("inspect", name)(e)),
    }
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&target)
        .map_err(io_err("open", name))?;
    if fstatfs(&file).map_err(errno("inspect", name))?.filesystem_type() != NSFS_MAGIC {
        return Err(not_netns("it changed while it was opened".to_owned()));
    }
    // SAFETY: an ioctl without arguments on a descriptor we own; it only reads the namespace's
    // type.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if kind != libc::CLONE_NEWNET {
        return Err(not_netns("a namespace of another kind".to_owned()));
    }
    Ok(file.into())
}

/// What kind of file `path` is, for an error.
fn describe(path: &Path) -> String {
    use std::os::unix::fs::FileTypeExt as _;
    match std::fs::symlink_metadata(path).map(|m| m.file_type()) {
        Ok(t) if t.is_fifo() => "a FIFO".to_owned(),
        Ok(t) if t.is_socket() => "a socket".to_owned(),
        Ok(t) if t.is_char_device() || t.is_block_device() => "a device".to_owned(),
        Ok(t) if t.is_dir() => "a directory".to_owned(),
        Ok(t) if t.is_file() => "a regular file".to_owned(),
        _ => "not on nsfs".to_owned(),
    }
}

/// Moves the calling thread into the named namespace. Threads it spawns afterwards inherit it.
pub fn enter(name: &str) -> Result<(), NetnsError> {
    let fd = open(name)?;
    setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(errno("enter", name))
}

/// Runs `f` on a thread inside the named namespace and returns its result. Namespaced kernel
/// interfaces (sockets, /proc/sys/net) opened by `f` belong to that namespace; the caller's
/// thread stays where it is.
pub fn run_in<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let fd = open(name)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(&fd, CloneFlags::CLONE_NEWNET).map_err(errno("enter", name))?;
            Ok(f())
        })
        .join()
        .expect("namespace thread does not panic")
    })
}

/// Creates the named namespace unless it exists. Returns whether it was created.
pub fn create(name: &str) -> Result<bool, NetnsError> {
    if exists(name) {
        return Ok(false);
    }
    prepare_run_dir().map_err(io_err("prepare /run/netns for", name))?;
    let target = path(name);
    File::options()
        .write(true)
        .create_new(true)
        .open(&target)
        .map_err(io_err("create the mount point of", name))?;
    // unshare() moves only the calling thread, so do it on a throwaway thread and pin its new
    // namespace with a bind mount before the thread ends.
    let bound = std::thread::scope(|s| {
        s.spawn(|| -> Result<(), Errno> {
            unshare(CloneFlags::CLONE_NEWNET)?;
            mount(Some("/proc/thread-self/ns/net"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        })
        .join()
        .expect("namespace thread does not panic")
    });
    if let Err(e) = bound {
        let _ = std::fs::remove_file(&target);
        return Err(errno("create", name)(e));
    }
    Ok(true)
}

/// Deletes the named namespace if it exists. Processes still inside keep it alive until they exit.
pub fn delete(name: &str) -> Result<(), NetnsError> {
    let target = path(name);
    if !target.exists() {
        return Ok(());
    }
    match umount2(&target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) => {}
        Err(e) => return Err(errno("unmount", name)(e)),
    }
    std::fs::remove_file(&target).map_err(io_err("remove", name))
}

/// Makes /run/netns a shared mount, as `ip netns add` does, so namespaces created here are seen
/// from other mount namespaces (and the other way round).
fn prepare_run_dir() -> io::Result<()> {
    std::fs::create_dir_all(NETNS_RUN_DIR)?;
    let shared = || {
        mount(None::<&str>, NETNS_RUN_DIR, Some("none"), MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>)
    };
    match shared() {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) => {
            mount(
                Some(NETNS_RUN_DIR),
                NETNS_RUN_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )?;
            Ok(shared()?)
        }
        Err(e) => Err(e.into()),
    }
}
