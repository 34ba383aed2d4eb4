"""A daemon loads a probe kind's libraries only when a configured probe uses it: a real
`rollbackd run` watching one http target, its sys.modules read once a probe has run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.probes.servers import HttpServer, free_port

# Runs the daemon in its own process; a thread writes sys.modules once the test says a probe
# has run (the trigger file), then stops the daemon as systemd would (SIGTERM).
DAEMON = textwrap.dedent("""
    import os, signal, sys, threading, time
    from pathlib import Path

    from rollbackd.daemon.cli import main

    trigger, out = Path(sys.argv[1]), Path(sys.argv[2])

    def dump():
        while not trigger.exists():
            time.sleep(0.05)
        out.write_text("\\n".join(sorted(sys.modules)))
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=dump, daemon=True).start()
    sys.exit(main(["run", "--config", sys.argv[3]]))
""")

HEAVY = ("psycopg", "redis", "docker", "kubernetes", "cryptography")


def test_an_idle_daemon_with_one_http_target_loads_no_other_kinds_libraries(
        tmp_path: Path) -> None:
    config, trigger, out = tmp_path / "rollbackd.toml", tmp_path / "go", tmp_path / "modules"
    with HttpServer() as app:
        config.write_text(textwrap.dedent(f"""
            [daemon]
            state_dir = "{tmp_path / 'state'}"
            socket = "{tmp_path / 'ctl.sock'}"
            metrics_address = "127.0.0.1:{free_port()}"

            [targets.web.probes.health]
            kind = "http_health"
            url = "{app.url}/health"
            interval = "200ms"
            timeout = "2s"
        """))
        daemon = subprocess.Popen([sys.executable, "-c", DAEMON, str(trigger), str(out),
                                   str(config)], cwd=Path(__file__).resolve().parents[2],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while not app.requests and daemon.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert app.requests, "the daemon ran no probe"
            trigger.touch()
            output, _ = daemon.communicate(timeout=60)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
    assert daemon.returncode == 0, output.decode(errors="replace")[-2000:]
    modules = out.read_text().split()
    assert "rollbackd.probes.http_health" in modules
    loaded = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert loaded == []
    # The other kinds' probe modules are not even imported (only their settings' modules).
    assert "rollbackd.probes.http_transport" in modules and "h11" in modules
