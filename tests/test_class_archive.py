"""The driver JVM's start-up: a class data-sharing archive dumped at setup, used by every session
whose class path it was dumped for, and the driver's own JVM options."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import propensity.spark as spark_module
from propensity.errors import PropensityError
from propensity.settings import get_settings
from propensity.spark import build_class_archive, class_archive, class_archive_options, spark_conf


@pytest.fixture
def jars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """A jar cache of its own with two locked jars (no download)."""
    cache = tmp_path / "jars"
    cache.mkdir()
    locked = [cache / "a.jar", cache / "b.jar"]
    for jar in locked:
        jar.write_bytes(b"jar")
    monkeypatch.setattr(spark_module, "class_path", lambda: locked)
    monkeypatch.setattr(spark_module, "jar_cache", lambda: cache)
    return locked


def test_the_archive_is_used_only_where_setup_dumped_it_for_this_class_path(jars: list[Path]) -> None:
    archive = class_archive()
    assert archive is not None and archive.parent.parent == jars[0].parent
    assert class_archive_options() == []  # none dumped: the JVM's defaults (a missing file would turn CDS off)
    archive.parent.mkdir()
    archive.write_bytes(b"archive")
    assert class_archive_options() == [f"-XX:SharedArchiveFile={archive}", spark_module.ARCHIVE_LOGGING]
    options = spark_conf(get_settings())["spark.driver.extraJavaOptions"]
    assert options.endswith(f"-XX:SharedArchiveFile={archive} {spark_module.ARCHIVE_LOGGING}")
    os.utime(jars[1], ns=(0, 0))  # a changed jar: the JVM would refuse the archive, so it is not named
    assert class_archive() != archive and class_archive_options() == []


def test_the_drivers_java_options_are_a_setting(jars: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    options = spark_conf(get_settings())["spark.driver.extraJavaOptions"]
    assert options.startswith("-Dlog4j2") and options.endswith(spark_module.AWS_SDK_OPTIONS) and "  " not in options
    monkeypatch.setenv("PROPENSITY_SPARK_DRIVER_JAVA_OPTIONS", "-XX:TieredStopAtLevel=1")
    options = spark_conf(get_settings())["spark.driver.extraJavaOptions"]
    assert options.endswith(f"{spark_module.AWS_SDK_OPTIONS} -XX:TieredStopAtLevel=1")


def test_a_build_that_fails_is_one_line_and_leaves_no_archive(
    jars: list[Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    java = tmp_path / "jdk" / "bin" / "java"  # a JVM that does not start
    java.parent.mkdir(parents=True)
    java.write_text("#!/bin/sh\nexit 1\n")
    java.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(java.parent.parent))
    with pytest.raises(PropensityError, match="could not be built"):
        build_class_archive()
    archive = class_archive()
    assert archive is not None and sorted(p.name for p in archive.parent.iterdir()) == []


def test_a_build_removes_the_archives_of_environments_that_are_gone(
    jars: list[Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    archive = class_archive()
    assert archive is not None
    archive.parent.mkdir()
    gone, kept = archive.with_name("spark-gone.jsa"), archive.with_name("spark-kept.jsa")
    for path, interpreter in ((gone, tmp_path / "removed-venv" / "python"), (kept, Path(sys.executable))):
        path.write_bytes(b"archive")
        path.with_suffix(".interpreter").write_text(str(interpreter))
    monkeypatch.setattr(spark_module, "class_archive", lambda: archive)
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: subprocess.CompletedProcess(args, 1, "", "stopped"))
    with pytest.raises(PropensityError, match="stopped"):
        build_class_archive()
    assert sorted(p.name for p in archive.parent.iterdir()) == ["spark-kept.interpreter", "spark-kept.jsa"]


@pytest.mark.slow  # dumps the archive if setup did not, then starts a JVM
def test_a_session_maps_sparks_classes_from_the_archive(tmp_path: Path) -> None:
    archive = build_class_archive()
    assert archive is not None and archive.is_file()
    log = tmp_path / "classes.log"
    code = (
        "from propensity.settings import get_settings\n"
        "from propensity.spark import spark_session\n"
        "spark_session(get_settings(), 'archive-probe').range(3).count()\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PROPENSITY_") or k == "PROPENSITY_JARS"},
        "PROPENSITY_HOME": str(tmp_path / "home"),
        "PROPENSITY_SPARK_DRIVER_JAVA_OPTIONS": f"-Xlog:class+load=info:file={log}",
    }
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, timeout=300)
    spark = [line for line in log.read_text().splitlines() if " org.apache.spark." in line]
    shared = sum("source: shared objects file (top)" in line for line in spark)
    from_jars = sum("source: file:" in line or "source: jar:" in line for line in spark)
    # Nearly every Spark class the session needs comes ready from the archive, not parsed from its jar
    # (the others Spark or the JVM generate as it runs: lambdas, code of queries).
    assert shared > 0.9 * (shared + from_jars), (shared, from_jars)
