"""ml.sandbox: real programs in real subprocesses; each limit is hit for real, with small timeouts."""

from __future__ import annotations

import socket
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from ml.sandbox import ALLOW_HOST_WRITES_ENV, PROCESS_LIMIT, run_many, run_python, sandbox_layers

LAYERS = sandbox_layers()


def test_passing_program():
    result = run_python("import sys\nprint('hello', sys.argv[0], __name__)\n", timeout_s=5)
    assert result.ok and result.status == "passed" and result.returncode == 0
    assert result.stdout == "hello main.py __main__\n"
    assert result.stderr == "" and not result.truncated
    assert result.seconds < 5


def test_failing_assert():
    result = run_python("def f(x):\n    return x + 1\n\nassert f(1) == 3, 'wrong'\n", timeout_s=5)
    assert not result.ok
    assert result.status == "failed" and result.returncode == 1
    assert result.error_type == "AssertionError"
    assert "AssertionError: wrong" in result.stderr


def test_syntax_error_is_a_failure_with_its_type():
    result = run_python("def f(:\n", timeout_s=5)
    assert result.status == "failed" and result.error_type == "SyntaxError"


def test_infinite_loop_stopped_by_wall_clock():
    start = time.monotonic()
    result = run_python("while True:\n    pass\n", timeout_s=1.0)
    assert result.status == "timeout" and not result.ok
    assert result.error_type == "WallClockTimeout"
    assert 1.0 <= result.seconds < 3.0
    assert time.monotonic() - start < 4.0


def test_sleeping_program_stopped_by_wall_clock():
    # Sleeping uses no CPU: only the wall-clock timeout can stop it.
    result = run_python("import time\ntime.sleep(60)\n", timeout_s=1.0)
    assert result.status == "timeout" and result.seconds < 3.0


def test_cpu_limit_stops_a_busy_loop_before_the_wall_clock():
    result = run_python("while True:\n    pass\n", timeout_s=20.0, cpu_s=1)
    assert result.status == "timeout" and result.error_type == "SIGXCPU"
    assert result.seconds < 10.0


def test_allocating_gigabytes_is_stopped():
    result = run_python("blob = bytearray(4 * 1024 ** 3)\nprint('allocated')\n", timeout_s=10, memory_mb=256)
    assert result.status == "memory" and result.error_type == "MemoryError"
    assert "allocated" not in result.stdout


def test_memory_limit_leaves_room_for_ordinary_programs():
    result = run_python("blob = bytearray(64 * 1024 ** 2)\nprint(len(blob))\n", timeout_s=10, memory_mb=256)
    assert result.ok and result.stdout.strip() == str(64 * 1024**2)


@pytest.fixture
def listener():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.3)
    yield server
    server.close()


def _accepted(server: socket.socket) -> bool:
    try:
        conn, _ = server.accept()
    except TimeoutError:
        return False
    conn.close()
    return True


def test_network_refused_inside_but_works_outside(listener):
    port = listener.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    assert _accepted(listener), "the same connect must work outside the sandbox"

    program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')\n"
    result = run_python(program, timeout_s=10)
    assert result.status == "failed" and result.error_type == "PermissionError"
    assert "network is disabled in the sandbox" in result.stderr
    assert "connected" not in result.stdout
    assert not _accepted(listener)

    resolve = run_python("import socket\nsocket.getaddrinfo('localhost', 80)\n", timeout_s=10)
    assert resolve.error_type == "PermissionError"


@pytest.mark.skipif(not LAYERS["network_namespace"], reason="no network namespace on this machine")
def test_raw_socket_bypassing_the_prelude_still_cannot_connect(listener):
    port = listener.getsockname()[1]
    program = textwrap.dedent(f"""
        import _socket
        s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        s.settimeout(2)
        s.connect(('127.0.0.1', {port}))
        print('connected')
    """)
    result = run_python(program, timeout_s=10)
    assert result.status == "failed" and result.error_type == "OSError"
    assert "connected" not in result.stdout
    assert not _accepted(listener)


def test_unix_socketpair_still_works():
    # asyncio needs socketpair for its self-pipe: only inet sockets are blocked.
    result = run_python("import asyncio\nasync def f():\n    return 7\nprint(asyncio.run(f()))\n", timeout_s=10)
    assert result.ok and result.stdout.strip() == "7"


def test_files_live_in_a_temporary_directory_that_is_removed():
    program = textwrap.dedent("""
        import os
        import helper
        with open('out.txt', 'w') as fh:
            fh.write('written')
        os.makedirs('sub/deeper')
        with open('sub/deeper/x.txt', 'w') as fh:
            fh.write('x')
        os.chmod('sub', 0o500)  # the cleanup must cope with a read-only folder
        print(os.getcwd())
        print(helper.VALUE, open('data/input.txt').read())
        print(os.environ['HOME'] == os.getcwd() == os.environ['TMPDIR'])
    """)
    files = {"helper.py": "VALUE = 42\n", "data/input.txt": "given"}
    result = run_python(program, timeout_s=10, files=files)
    assert result.ok, result.stderr
    workdir, values, same = result.stdout.splitlines()
    assert values == "42 given" and same == "True"
    assert Path(workdir).name.startswith("astforge-sandbox-")
    assert Path(workdir) != Path.cwd()
    assert not Path(workdir).exists()


def test_file_names_must_stay_inside_the_working_directory():
    for name in ("../escape.py", "/etc/passwd", "main.py"):
        with pytest.raises(ValueError):
            run_python("pass\n", files={name: "x"})


def test_environment_is_built_from_scratch(monkeypatch):
    monkeypatch.setenv("ASTFORGE_TEST_SECRET", "hunter2")
    program = "import os\nprint(sorted(os.environ))\nprint('ASTFORGE_TEST_SECRET' in os.environ)\nprint(hash('abc'))\n"
    first = run_python(program, timeout_s=10)
    second = run_python(program, timeout_s=10)
    assert first.ok and "hunter2" not in first.stdout
    assert first.stdout.splitlines()[1] == "False"
    assert "PYTHONHASHSEED" in first.stdout.splitlines()[0]
    assert first.stdout == second.stdout  # fixed hash seed: the same hash in every run


@pytest.mark.skipif(not LAYERS["pid_namespace"], reason="no PID namespace on this machine")
def test_pid_namespace_hides_host_processes():
    program = "import os\nprint(os.getpid(), sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
    result = run_python(program, timeout_s=10)
    assert result.ok, result.stderr
    pid, visible = result.stdout.split(" ", 1)
    assert pid == "2" and visible.strip() == "[1, 2]"


def test_signals_classified_as_killed():
    result = run_python("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n", timeout_s=10)
    assert result.status == "killed" and result.error_type == "SIGTERM"


def _processes_with(token: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if token.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_loop_of_subprocesses_is_contained():
    """Children (some in their own session, out of the process group) do not outlive the sandbox."""
    token = f"astforge-sandbox-test-{uuid.uuid4().hex}"
    escape = LAYERS["pid_namespace"]  # without a PID namespace, setsid children escape the group kill
    program = textwrap.dedent(f"""
        import subprocess, sys, time
        children = []
        for i in range(12):
            children.append(subprocess.Popen(
                [sys.executable, '-c', 'import time; time.sleep(60)', {token!r}],
                start_new_session={escape} and i % 2 == 0))
        print('spawned', len(children), flush=True)
        time.sleep(60)
    """)
    result = run_python(program, timeout_s=3.0)
    assert result.status == "timeout"
    assert "spawned 12" in result.stdout
    deadline = time.monotonic() + 2.0
    while _processes_with(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(token) == []


@pytest.mark.skipif(
    not LAYERS["rlimit_nproc_enforced"],
    reason="RLIMIT_NPROC binds neither root (the kernel exempts uid 0) nor a sandbox without a user namespace",
)
def test_fork_loop_hits_the_process_limit():
    program = textwrap.dedent("""
        import os, time
        n = 0
        try:
            for _ in range(500):
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                n += 1
        except OSError as exc:
            print('refused after', n, type(exc).__name__, flush=True)
            raise
    """)
    result = run_python(program, timeout_s=10)
    assert result.status == "process_limit" and result.error_type == "BlockingIOError"
    refused_after = int(result.stdout.split()[2])
    assert 0 < refused_after < PROCESS_LIMIT  # the launcher's processes count too


def test_output_is_truncated_keeping_head_and_tail():
    program = "print('START' + 'x' * 200000 + 'END')\n"
    result = run_python(program, timeout_s=10, max_output=2000)
    assert result.ok and result.truncated
    assert len(result.stdout) < 2200
    assert result.stdout.startswith("START") and result.stdout.rstrip().endswith("END")
    assert "cut by the sandbox" in result.stdout


def test_endless_output_hits_the_file_size_limit():
    result = run_python("import sys\nwhile True:\n    sys.stdout.write('y' * 65536)\n", timeout_s=20)
    assert result.status == "output_limit" and result.truncated
    assert len(result.stdout) < 5000


def test_run_many_keeps_order_and_isolates_failures():
    sources = [f"print({i})\n" for i in range(5)] + ["raise SystemExit(3)\n", "while True:\n    pass\n"]
    start = time.monotonic()
    results = run_many(sources, workers=2, timeout_s=1.5)
    assert [r.stdout.strip() for r in results[:5]] == [str(i) for i in range(5)]
    assert all(r.ok for r in results[:5])
    assert results[5].status == "failed" and results[5].returncode == 3
    assert results[6].status == "timeout"
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("level", ["user_and_network_namespaces", "no_namespaces"])
def test_weaker_isolation_levels_still_work(monkeypatch, listener, level):
    """The fallbacks used where namespaces are unavailable (e.g. containers without user namespaces)."""
    from ml import sandbox

    weaker = {
        "user_and_network_namespaces": sandbox._Isolation(sandbox._CLONE_NEWUSER | sandbox._CLONE_NEWNET, False),
        "no_namespaces": sandbox._Isolation(0, False),
    }[level]
    monkeypatch.setattr(sandbox, "_isolation", lambda: weaker)
    with pytest.raises(sandbox.SandboxUnavailable, match=ALLOW_HOST_WRITES_ENV):
        sandbox.run_python("print(6 * 7)\n", timeout_s=10)
    with pytest.raises(sandbox.SandboxUnavailable):
        sandbox.run_many(["print(1)\n", "print(2)\n"], timeout_s=10)
    monkeypatch.setenv(ALLOW_HOST_WRITES_ENV, "1")  # the user accepts the risk
    assert sandbox.sandbox_layers()["host_writes_allowed_by_user"]
    assert sandbox.run_python("print(6 * 7)\n", timeout_s=10).stdout == "42\n"
    assert sandbox.run_python("assert False\n", timeout_s=10).status == "failed"
    assert sandbox.run_python("while True:\n    pass\n", timeout_s=1.0).status == "timeout"
    assert sandbox.run_python("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n").error_type == "SIGTERM"
    port = listener.getsockname()[1]
    blocked = sandbox.run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}))\n", timeout_s=10)
    assert blocked.error_type == "PermissionError"
    assert not _accepted(listener)


def test_a_parent_that_ignores_or_blocks_sigterm_does_not_shield_the_program():
    """Signal dispositions and the blocked mask survive exec: the launcher resets them (a test runner or a server
    thread once left SIGTERM ignored in the parent, and a program that killed itself 'passed')."""
    import signal

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        result = run_python("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n", timeout_s=10)
        assert result.status == "killed" and result.error_type == "SIGTERM"
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
        result = run_python("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n", timeout_s=10)
        assert result.status == "killed" and result.error_type == "SIGTERM"
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
        signal.signal(signal.SIGTERM, previous)


def test_a_venv_reached_through_a_symlink_keeps_its_packages(tmp_path):
    """A venv linked into a checkout (``.venv -> /elsewhere/.venv``) must still see its site-packages inside the
    sandbox: the interpreter finds its pyvenv.cfg through the link's path, so that path is exposed too."""
    import subprocess
    import sys

    linked = tmp_path / "linked-venv"
    linked.symlink_to(sys.prefix, target_is_directory=True)
    python = linked / "bin" / Path(sys.executable).name
    program = "import duckdb\nprint('found', duckdb.__name__)\n"  # a site-packages module, not the stdlib
    probe = (f"from ml.sandbox import run_python\nr = run_python({program!r}, timeout_s=20)\n"
             "print(r.status, r.stdout.strip(), r.stderr.strip()[-200:])\n")
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("passed found duckdb"), done.stdout
