"""Hostile programs against ml.sandbox: each one is refused and the host is unchanged afterwards.

The table of issue 26, rerun: overwrite and delete files outside the sandbox (also in the repository and in
$ASTFORGE_HOME), read /etc/shadow and the caller's secrets, a raw socket, a fork bomb, a huge allocation, ctypes
calls to unshare/mount, signals to the caller, and a program that fills its working directory.
"""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

import pytest

from ml.sandbox import PROCESS_LIMIT, WORKDIR_SIZE_LIMIT, run_python, sandbox_layers

LAYERS = sandbox_layers()
REPO = Path(__file__).resolve().parent.parent
# A folder outside /tmp too: the sandbox's private /tmp alone would hide a victim under /tmp.
VICTIMS = REPO / "tests" / "artifacts" / "sandbox-victims"

pytestmark = pytest.mark.skipif(not LAYERS["readonly_filesystem"], reason="no read-only filesystem layer here")


@pytest.fixture
def victims(tmp_path):
    """Files the programs attack, in /tmp and in the repository; their content is checked afterwards."""
    VICTIMS.mkdir(parents=True, exist_ok=True)
    files = []
    for folder in (tmp_path, VICTIMS):
        for name in ("victim.txt", "victim2.txt"):
            path = folder / name
            path.write_text(f"original {name}\n")
            files.append(path)
    yield files
    for path in files:
        path.unlink(missing_ok=True)


def _unchanged(files: list[Path]) -> bool:
    return all(path.exists() and path.read_text() == f"original {path.name}\n" for path in files)


def test_layers_as_documented():
    assert LAYERS["readonly_filesystem"] and LAYERS["private_tmp"] and LAYERS["no_nested_user_namespaces"]
    assert LAYERS["unprivileged_uid"]  # as root, the program runs as uid 65534
    assert not LAYERS["host_writes_allowed_by_user"]


def test_overwriting_a_file_outside_the_sandbox_is_refused(victims):
    program = "".join(f"open({str(p)!r}, 'w').write('pwned')\n" for p in victims if p.name == "victim.txt")
    result = run_python(program, timeout_s=10)
    assert not result.ok and result.error_type in {"PermissionError", "OSError", "FileNotFoundError"}
    assert _unchanged(victims)


def test_deleting_a_file_outside_the_sandbox_is_refused(victims):
    for path in victims:
        result = run_python(f"import os\nos.remove({str(path)!r})\n", timeout_s=10)
        assert not result.ok, path
    assert _unchanged(victims)


def test_shutil_rmtree_of_the_repository_is_refused(victims):
    result = run_python(f"import shutil\nshutil.rmtree({str(VICTIMS)!r})\nprint('gone')\n", timeout_s=10)
    assert not result.ok and "gone" not in result.stdout
    assert _unchanged(victims)


def test_writing_into_the_repository_and_astforge_home_is_refused(tmp_path, monkeypatch):
    home = tmp_path / "astforge-home"
    (home / "artifacts").mkdir(parents=True)
    monkeypatch.setenv("ASTFORGE_HOME", str(home))
    targets = [REPO / "ml" / "__sandbox_probe__.py", REPO / "README.md.probe", home / "catalog.duckdb",
               home / "artifacts" / "planted"]
    for target in targets:
        result = run_python(f"open({str(target)!r}, 'w').write('x')\n", timeout_s=10)
        assert not result.ok, target
        assert not target.exists(), target


def test_secrets_are_not_readable(monkeypatch):
    monkeypatch.setenv("ASTFORGE_TEST_SECRET", "hunter2-secret-token")
    program = textwrap.dedent(f"""
        import os
        found = []
        try:
            found.append(open('/etc/shadow').read())
        except OSError as exc:
            print('shadow', type(exc).__name__)
        for pid in (1, {os.getpid()}, {os.getppid()}):
            try:
                found.append(open(f'/proc/{{pid}}/environ').read())
            except OSError as exc:
                print('environ', pid, type(exc).__name__)
        found.append(repr(dict(os.environ)))
        print('LEAK' if any('hunter2-secret-token' in text or 'root:' in text for text in found) else 'clean')
    """)
    result = run_python(program, timeout_s=10)
    assert result.ok, result.stderr
    assert "shadow PermissionError" in result.stdout
    assert result.stdout.strip().endswith("clean")
    assert "hunter2" not in result.stdout + result.stderr


def test_home_folders_of_root_are_hidden():
    if os.geteuid() != 0:
        pytest.skip("the mask applies to folders that hide the interpreter from uid 65534 (a root caller)")
    result = run_python("import os\nprint(os.getuid(), os.path.exists('/root/.bashrc'))\n", timeout_s=10)
    assert result.ok, result.stderr
    assert result.stdout.split() == ["65534", "False"]


def test_raw_socket_cannot_connect():
    program = "import _socket\ns = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)\ns.connect(('127.0.0.1', 22))\n"
    result = run_python(program, timeout_s=10)
    assert not result.ok and result.error_type in {"OSError", "PermissionError", "ConnectionRefusedError"}
    assert "Network is unreachable" in result.stderr or "network is disabled" in result.stderr


def test_a_fork_bomb_stops_at_the_process_limit():
    program = textwrap.dedent("""
        import os, time
        started = 0
        while started < 300:
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            started += 1
            print(started, flush=True)
    """)
    result = run_python(program, timeout_s=10)
    assert result.status == "process_limit", (result.status, result.stderr[-300:])
    assert int(result.stdout.split()[-1]) < PROCESS_LIMIT


def test_allocating_six_gigabytes_is_refused():
    result = run_python("blob = bytearray(6 * 1024 ** 3)\n", timeout_s=10)
    assert result.status == "memory"


def test_ctypes_unshare_and_mount_cannot_make_the_host_writable(victims):
    target = next(p for p in victims if p.parent == VICTIMS and p.name == "victim.txt")
    program = textwrap.dedent(f"""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        CLONE_NEWUSER, CLONE_NEWNS, MS_REMOUNT, MS_BIND = 0x10000000, 0x00020000, 0x20, 0x1000
        print('unshare', libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), os.strerror(ctypes.get_errno()))
        print('remount', libc.mount(None, b'/', None, MS_REMOUNT | MS_BIND, None), os.strerror(ctypes.get_errno()))
        print('umount', libc.umount2(b'/tmp', 2), os.strerror(ctypes.get_errno()))
        open({str(target)!r}, 'w').write('pwned')
    """)
    result = run_python(program, timeout_s=10)
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert all(value.startswith("-1 ") for value in lines.values()), lines
    assert not result.ok
    assert _unchanged(victims)


def test_signals_to_the_caller_do_not_arrive():
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: received.append(True))
    try:
        result = run_python(f"import os, signal\nos.kill({os.getpid()}, signal.SIGUSR1)\n", timeout_s=10)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert not result.ok and result.error_type in {"ProcessLookupError", "PermissionError"}
    assert received == []


def test_filling_the_working_directory_stops_at_its_size():
    program = textwrap.dedent("""
        chunk = b'0' * (16 << 20)
        written = 0
        for i in range(1000):
            with open(f'fill{i}.bin', 'wb') as fh:
                fh.write(chunk)
            written += len(chunk)
            print(written, flush=True)
    """)
    result = run_python(program, timeout_s=20, memory_mb=512)
    assert result.status == "output_limit" and "No space left" in result.stderr
    assert int(result.stdout.split()[-1]) <= WORKDIR_SIZE_LIMIT


def test_the_working_directory_and_private_tmp_are_writable():
    program = textwrap.dedent("""
        import os, tempfile
        open('here.txt', 'w').write('a')
        with tempfile.NamedTemporaryFile(dir='/tmp') as fh:
            fh.write(b'b')
        print(sorted(os.listdir('.')), len(os.listdir('/tmp')))
    """)
    result = run_python(program, timeout_s=10)
    assert result.ok, result.stderr
    assert result.stdout.split()[0].startswith("['here.txt'")


def test_an_interpreter_under_tmp_stays_reachable(tmp_path, monkeypatch):
    """A checkout (and its venv) under /tmp, as a CI clone may be: the private /tmp must not hide the interpreter."""
    import sys

    from ml import sandbox, sandbox_launcher

    venv_bin = tmp_path / "checkout" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(sys.executable)
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    result = sandbox_launcher._run("import sys\nprint(sys.executable)\nopen('/tmp/x', 'w').write('ok')\n",
                                   timeout_s=10, memory_mb=512, cpu_s=None, files=None, max_output=4096,
                                   isolation=sandbox._isolation())
    assert result.ok, result.stderr
    assert result.stdout.strip() == str(venv_bin / "python")
    assert not Path("/tmp/x").exists() or Path("/tmp/x").read_text() != "ok"
