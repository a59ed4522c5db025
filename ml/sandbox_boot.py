"""The sandbox's trusted launcher: a script, never imported. `ml.sandbox_launcher` runs it as
`python -I -S sandbox_boot.py CONFIG_JSON PROGRAM_ARGV...` (standard library only, nothing from site-packages), with
the program's working directory as its cwd. It sets the resource limits, creates the namespaces, makes the host
read-only, drops to the unprivileged uid and execs the program; the layers are listed in :mod:`ml.sandbox`.

Process tree with every layer (a root caller):

    launcher (host uid 0)          writes the child's uid/gid maps (only a privileged parent may map uid 65534),
    └── child (new user, mount,    then relays how the program ended as its own exit status
        │      net, PID namespaces)
        └── init (PID 1)           mounts: private /proc, everything read-only, tmpfs /tmp, /dev/shm, workdir;
            │                      drops to uid 65534, reaps orphans, reports the program's wait status
            └── program (PID 2)    execs the interpreter with the program
"""

import ctypes
import json
import os
import resource
import signal
import sys

LAUNCHER_FAILED = 125
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x1000, 0x4000, 0x40000
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 0x1  # 442 on every architecture
PR_SET_PDEATHSIG = 1

libc = ctypes.CDLL(None, use_errno=True)


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def fail(msg):
    os.write(2, ("astforge-sandbox: " + msg + "\n").encode())
    os._exit(LAUNCHER_FAILED)


def check(result, what):
    if result != 0:
        fail(what + ": " + os.strerror(ctypes.get_errno()))


def write(path, text):
    with open(path, "w") as fh:
        fh.write(text)


def limit(name, soft, hard):
    kind = getattr(resource, name)
    _, cur_hard = resource.getrlimit(kind)
    if cur_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, cur_hard), min(hard, cur_hard)
    try:
        resource.setrlimit(kind, (soft, hard))
    except (OSError, ValueError) as exc:
        fail(f"setrlimit {name}: {exc}")


def reset_signals():
    # Signal state survives exec: a parent that ignores or blocks SIGTERM (a test runner, a server thread) would
    # hand that to the program, which then could not be stopped by it. Start from the defaults, nothing blocked.
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGPIPE, signal.SIGUSR1,
                signal.SIGUSR2, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)


def exit_like(status):
    """End this process the way a child with wait status `status` ended (same signal or exit code)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status))


def snapshot(top):
    """The working directory's files, read before any uid change (the folder may be root's, mode 0700): the
    program gets copies in a fresh tmpfs mounted over that folder."""
    found = {}
    for folder, _, names in os.walk(top):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as fh:
                found[os.path.relpath(path, top)] = (fh.read(), os.stat(path).st_mode & 0o777)
    return found


def mount(source, target, fstype, flags, data=None):
    check(libc.mount(source, target.encode(), fstype, flags, data), f"mount {fstype or source} on {target}")


def read_only(path, recursive=True):
    attr = MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    check(libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), flags, ctypes.byref(attr), ctypes.sizeof(attr)),
          f"mount_setattr {path} read-only")


def hidden_ancestor(path, uid):
    """The topmost folder above `path` that `uid` may not enter (e.g. /root, mode 0700), or None."""
    current = ""
    for part in path.strip("/").split("/")[:-1]:
        current += "/" + part
        info = os.stat(current)
        allowed = 0o100 if info.st_uid == uid else 0o001
        if not info.st_mode & allowed:
            return current
    return None


def hidden_paths(paths, uid):
    """{folder that hides some of `paths` from `uid` (e.g. /root, mode 0700): [paths under it]}. Decided before
    the user namespace exists: inside it, a folder of an unmapped owner (root) shows the overflow uid 65534."""
    masks = {}
    for path in sorted(set(paths)):
        ancestor = hidden_ancestor(path, uid)
        if ancestor is not None and not any(path.startswith(p + "/") for p in masks.get(ancestor, [])):
            masks.setdefault(ancestor, []).append(path)
    return masks


def open_hidden(masks):
    """The same, with an O_PATH handle per path, opened while this process may still enter the folders."""
    return {ancestor: [(p, os.open(p, os.O_PATH | os.O_CLOEXEC)) for p in paths] for ancestor, paths in masks.items()}


def expose(masks):
    """Mask each hiding folder with an empty read-only tmpfs and bind only the interpreter paths back into it: the
    interpreter stays runnable, the rest of e.g. /root (keys, histories) is gone."""
    for ancestor, inside in masks.items():
        mount(b"tmpfs", ancestor, b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m,mode=0755")
        for path, fd in inside:
            os.makedirs(path, exist_ok=True)
            mount(f"/proc/self/fd/{fd}".encode(), path, None, MS_BIND | MS_REC)
            os.close(fd)
        read_only(ancestor)


def isolate_filesystem(cfg):
    """Every mount read-only; fresh size-capped tmpfs on /tmp, /dev/shm and the working directory (so a program
    that fills it fills memory it was given, not the host's disk); interpreter paths re-exposed under a mask."""
    # No nested user namespace: inside one the program would hold capabilities again (the mounts stay locked
    # read-only there, but the less it can do the better). The limit is per user namespace, ours included.
    write("/proc/sys/user/max_user_namespaces", "0")
    read_only("/")
    workdir, uid = cfg["workdir"], cfg["drop_uid"]
    # interpreter paths under a folder about to get a fresh tmpfs: handles now, while this process may enter them
    under_tmpfs = [(p, os.open(p, os.O_PATH | os.O_CLOEXEC)) for p in _outermost(cfg["expose"])
                   if p.startswith(("/tmp/", "/dev/shm/"))]
    masks = {}
    if uid is not None:
        masks = open_hidden(cfg["hidden"])
        # Files and folders can only be created under a uid mapped in this namespace, and host uid 0 is not:
        # create them as the program's uid. setfsuid keeps CAP_SYS_ADMIN, so the mounts below still work.
        for setter in (libc.setfsgid, libc.setfsuid):  # each returns the previous id: the second call checks
            setter(uid)
            if setter(uid) != uid:
                fail(f"setfsuid/setfsgid {uid}")
    for target, size, mode in (("/tmp", cfg["tmp_size"], "1777"), ("/dev/shm", cfg["tmp_size"], "1777"),
                               (workdir, cfg["workdir_size"], "0700")):
        if target != workdir and not os.path.isdir(target):
            continue
        # An interpreter or venv under /tmp (a checkout there) must stay reachable under the fresh tmpfs: handles
        # now, bound back (read-only, as the host) once the tmpfs is there.
        inside = [] if target == workdir else [(p, fd) for p, fd in under_tmpfs if p.startswith(target + "/")]
        os.makedirs(target, exist_ok=True)  # the working directory, inside the new /tmp
        mount(b"tmpfs", target, b"tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode={mode}".encode())
        for path, fd in inside:
            os.makedirs(path, exist_ok=True)
            mount(f"/proc/self/fd/{fd}".encode(), path, None, MS_BIND | MS_REC)
            os.close(fd)
            read_only(path)
    expose(masks)


def _outermost(paths):
    """``paths`` without those inside another of them."""
    paths = sorted(set(paths))
    return [p for p in paths if not any(p != q and p.startswith(q + "/") for q in paths)]


def populate(workdir, files):
    for rel, (data, mode) in files.items():
        path = os.path.join(workdir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
        os.chmod(path, mode)
    os.chdir(workdir)  # the old cwd is the host folder under the new mount


def run_init(cfg, argv, files, report_fd):
    """PID 1 of the new PID namespace: set the filesystem up, start the program as PID 2 (so its signals behave as
    usual: PID 1 ignores signals it has no handler for), reap orphans, report the program's wait status."""
    check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")  # die with the launcher
    if cfg["mount_proc"]:
        check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
        check(libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mount proc")
    if cfg["readonly_root"]:
        isolate_filesystem(cfg)
    if cfg["drop_uid"] is not None:  # uid 65534 is mapped to itself: the program's kernel uid is 65534
        os.setgroups([])
        os.setresgid(cfg["drop_uid"], cfg["drop_uid"], cfg["drop_uid"])
        os.setresuid(cfg["drop_uid"], cfg["drop_uid"], cfg["drop_uid"])
        check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")  # a uid change clears it
    if cfg["readonly_root"]:
        populate(cfg["workdir"], files)  # after the drop: the files belong to the program's uid
    # Set inside the user namespace: since Linux 5.14 the count is per user namespace (this sandbox's processes,
    # init included); outside it would count every process of the uid on the machine.
    limit("RLIMIT_NPROC", cfg["nproc"], cfg["nproc"])
    program = os.fork()
    if program == 0:
        os.close(report_fd)
        run_program(argv)
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == program:
            os.write(report_fd, str(status).encode())
            os._exit(0)  # the kernel now kills whatever the program left running


def run_program(argv):
    try:
        os.execve(argv[0], argv, os.environ)
    except OSError as exc:
        fail(f"exec {argv[0]}: {exc}")


def run_namespaced(cfg, argv, files):
    """In the new namespaces: start init and exit the way the program did."""
    rfd, wfd = os.pipe()
    init = os.fork()
    if init == 0:
        os.close(rfd)
        run_init(cfg, argv, files, wfd)
    os.close(wfd)
    _, init_status = os.waitpid(init, 0)
    report = b""
    while chunk := os.read(rfd, 64):
        report += chunk
    if not report:
        fail(f"the namespace init ended without a report (wait status {init_status})")
    exit_like(int(report))


def main():
    cfg = json.loads(sys.argv[1])
    argv = sys.argv[2:]
    reset_signals()
    for name, soft, hard in cfg["rlimits"]:
        limit(name, soft, hard)
    flags = cfg["unshare"]
    if not flags:
        run_program(argv)
    files = snapshot(cfg["workdir"]) if cfg["readonly_root"] else {}
    cfg["hidden"] = hidden_paths(cfg["expose"], cfg["drop_uid"]) if cfg["drop_uid"] is not None else {}
    if cfg["drop_uid"] is None:  # map our own uid (root as 65534: no capability survives the program's exec)
        uid, gid = os.geteuid(), os.getegid()
        check(libc.unshare(flags), "unshare")
        try:
            write("/proc/self/setgroups", "deny")
        except FileNotFoundError:
            pass
        write("/proc/self/uid_map", f"{uid or 65534} {uid} 1")
        write("/proc/self/gid_map", f"{gid or 65534} {gid} 1")
        run_namespaced(cfg, argv, files)
    # Root is exempt from RLIMIT_NPROC and file permissions also as uid 0 mapped to another uid inside a user
    # namespace: the program's kernel uid must change. Only a parent with CAP_SETUID may map another uid, so the
    # child unshares and waits, this process writes its maps, and the child's init later drops to the uid.
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(ready_r)
        os.close(go_w)
        check(libc.unshare(flags), "unshare")
        os.write(ready_w, b"1")
        if os.read(go_r, 1) != b"1":
            fail("the launcher could not map the sandbox's uid")
        run_namespaced(cfg, argv, files)
    os.close(ready_w)
    os.close(go_r)
    if os.read(ready_r, 1) == b"1":
        uid = cfg["drop_uid"]
        write(f"/proc/{child}/uid_map", f"{uid} {uid} 1")
        write(f"/proc/{child}/gid_map", f"{uid} {uid} 1")
        os.write(go_w, b"1")
    os.close(go_w)
    _, status = os.waitpid(child, 0)
    exit_like(status)


main()
