//! Named network namespaces, compatible with `ip netns`: a namespace `NAME` is kept alive by a
//! bind mount of its nsfs inode on `/run/netns/NAME`.

use std::{
    fs::File,
    io,
    os::fd::{AsFd, OwnedFd},
    path::PathBuf,
};

use nix::{
    errno::Errno,
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
};

/// Where `ip netns` (and podnet) keep named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {name:?} does not exist ({}); {hint}", path(name).display())]
    Missing { name: String, hint: &'static str },
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

/// Whether the namespace `name` (or path) is the calling thread's own: a container "namespace"
/// that is really the node's must not be configured as a pod.
pub fn is_current(name: &str) -> Result<bool, NetnsError> {
    use std::os::unix::fs::MetadataExt as _;
    let target = File::from(open(name)?).metadata().map_err(io_err("inspect", name))?;
    let own = std::fs::metadata("/proc/thread-self/ns/net").map_err(io_err("inspect the caller's", name))?;
    Ok((target.dev(), target.ino()) == (own.dev(), own.ino()))
}

/// Opens the named namespace (for `setns` or `IFLA_NET_NS_FD`).
pub fn open(name: &str) -> Result<OwnedFd, NetnsError> {
    match File::open(path(name)) {
        Ok(f) => Ok(f.into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let hint = if name.starts_with('/') {
                "the container (or its sandbox) is gone"
            } else {
                "create it first, e.g. `ip netns add NAME`"
            };
            Err(NetnsError::Missing { name: name.to_owned(), hint })
        }
        Err(e) => Err(io_err("open", name)(e)),
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
