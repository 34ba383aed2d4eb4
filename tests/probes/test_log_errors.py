"""log_errors on real files: appends, partial lines, rotation, truncation, missing files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from rollbackd.probes.log_errors import LogErrorsProbe, LogErrorsSettings
from rollbackd.probes.observation import Status, Symptom

INFO = "2024-05-01 03:00:00 INFO sampleapp: GET /health 200\n"


def append(path: Path, *lines: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(lines))


def error(n: int, text: str = "boom") -> str:
    return f"2024-05-01 03:00:{n:02d} ERROR sampleapp: {text} #{n}\n"


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "app.log"
    path.write_text(INFO + error(0, "old news") + INFO)
    return path


def probe_for(path: Path, **kw: Any) -> LogErrorsProbe:
    return LogErrorsProbe("log", LogErrorsSettings(path=path, **kw))


async def test_first_check_starts_at_the_end(log: Path) -> None:
    probe = probe_for(log)
    obs = await probe.check()
    assert obs.status is Status.OK and obs.symptom is None
    size = log.stat().st_size
    assert obs.detail == f"0 error lines in 0 new bytes of app.log (limit 0); started following " \
                         f"at byte {size}."
    assert obs.metrics == {"error_lines": 0.0, "bytes_read": 0.0}


async def test_from_start_counts_what_is_already_there(log: Path) -> None:
    obs = await probe_for(log, from_start=True).check()
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.LOG_ERRORS)
    assert obs.metrics["error_lines"] == 1
    assert obs.detail.endswith("ERROR sampleapp: old news #0")


async def test_appended_errors_fail_once_then_ok(log: Path) -> None:
    probe = probe_for(log)
    assert (await probe.check()).ok
    append(log, INFO, error(1), "Traceback (most recent call last):\n", INFO, error(2, "last one"))
    obs = await probe.check()
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.LOG_ERRORS)
    assert obs.metrics["error_lines"] == 3
    assert obs.detail.startswith("3 error lines in ")
    assert obs.detail.endswith("(limit 0); last: 2024-05-01 03:00:02 ERROR sampleapp: last one #2")
    # Only lines since the last check count: nothing new is healthy again.
    obs = await probe.check()
    assert obs.ok and obs.metrics["error_lines"] == 0
    append(log, INFO, INFO)
    obs = await probe.check()
    assert obs.ok and obs.metrics["bytes_read"] == 2 * len(INFO)


async def test_max_errors_and_custom_pattern(log: Path) -> None:
    probe = probe_for(log, max_errors=2, pattern=r"\b(ERROR|FATAL)\b")
    await probe.check()
    append(log, error(1), "x FATAL y\n", "Traceback is not matched by this pattern\n")
    obs = await probe.check()
    assert obs.ok and obs.metrics["error_lines"] == 2
    assert "2 error lines" in obs.detail and "limit 2" in obs.detail
    append(log, error(2), error(3), error(4))
    assert (await probe.check()).symptom is Symptom.LOG_ERRORS


async def test_a_line_being_written_counts_when_finished(log: Path) -> None:
    probe = probe_for(log)
    await probe.check()
    append(log, "2024-05-01 ERROR half a li")
    obs = await probe.check()
    assert obs.ok and obs.metrics["bytes_read"] == 0
    append(log, "ne\n")
    obs = await probe.check()
    assert obs.metrics["error_lines"] == 1 and obs.detail.endswith("ERROR half a line")


async def test_rotation_reads_the_new_file_from_its_start(log: Path) -> None:
    probe = probe_for(log)
    await probe.check()
    log.rename(log.with_suffix(".log.1"))  # logrotate: rename, then the app opens a new file
    log.write_text(INFO + error(1, "after rotation"))
    obs = await probe.check()
    assert obs.symptom is Symptom.LOG_ERRORS and obs.metrics["error_lines"] == 1
    assert "rotated" in obs.detail and obs.detail.endswith("after rotation #1")
    append(log, INFO)
    assert (await probe.check()).ok


async def test_truncation_reads_from_the_start(log: Path) -> None:
    probe = probe_for(log)
    await probe.check()
    inode = log.stat().st_ino
    with open(log, "r+") as f:  # copytruncate: same file, cut to zero
        f.truncate(0)
    append(log, error(1, "after truncation"))
    assert log.stat().st_ino == inode
    obs = await probe.check()
    assert obs.symptom is Symptom.LOG_ERRORS and obs.metrics["error_lines"] == 1
    assert "truncated to" in obs.detail
    assert (await probe.check()).ok


async def test_long_lines_are_cut_to_200_characters(log: Path) -> None:
    probe = probe_for(log)
    await probe.check()
    append(log, "ERROR " + "y" * 5000 + "\n")
    obs = await probe.check()
    last = obs.detail.split("; last: ", 1)[1]
    assert len(last) == 200 and last.endswith("...")


async def test_undecodable_bytes_do_not_stop_the_count(log: Path) -> None:
    probe = probe_for(log)
    await probe.check()
    with open(log, "ab") as f:
        f.write(b"\xff\xfe ERROR in latin-1: \xe9t\xe9\n")
    obs = await probe.check()
    assert obs.metrics["error_lines"] == 1 and "\ufffd" in obs.detail


async def test_missing_log_is_ok_by_default(tmp_path: Path) -> None:
    path = tmp_path / "later.log"
    probe = probe_for(path)
    obs = await probe.check()
    assert obs.ok and obs.detail == f"log file missing: {path}."
    # A file that appears after the probe started is new: all of it counts.
    path.write_text(error(1))
    obs = await probe.check()
    assert obs.symptom is Symptom.LOG_ERRORS and "the file appeared" in obs.detail


async def test_missing_log_fails_when_asked(log: Path) -> None:
    probe = probe_for(log, missing_is_failure=True)
    assert (await probe.check()).ok
    os.unlink(log)
    obs = await probe.check()
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.LOG_ERRORS)
    assert obs.detail == f"log file missing: {log}."
    log.write_text(INFO)
    assert (await probe.check()).ok


async def test_unreadable_path_is_a_probe_error(tmp_path: Path) -> None:
    obs = await probe_for(tmp_path).check()
    assert (obs.status, obs.symptom) == (Status.ERROR, Symptom.PROBE_ERROR)
    assert "IsADirectoryError" in obs.detail


@pytest.mark.parametrize(("kw", "words"), [
    pytest.param({"path": "app.log"}, "must be an absolute path", id="relative"),
    pytest.param({"path": "/a.log", "pattern": "ERROR("}, "not a valid regular expression",
                 id="bad-regex"),
    pytest.param({"path": "/a.log", "max_errors": -1}, "greater than or equal to 0",
                 id="negative-max"),
])
def test_bad_settings(kw: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        LogErrorsSettings(**kw)
