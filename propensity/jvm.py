"""The JVM libraries Spark needs beyond pyspark's own: the table format and its catalog and S3 clients.

They come from Maven Central, pinned by version and sha256 in `jvm.lock` beside this module, as
Python packages are by `requirements.lock`:

* `python -m propensity.jvm fetch` (run by `make setup`, and by the first Spark session when a jar
  is missing) downloads every pinned jar into the jar cache and verifies its checksum. A download
  whose checksum differs is deleted and named in a one-line error; a cached jar that differs is
  named too and never used.
* `python -m propensity.jvm lock` (run by `make lock`) resolves `ROOTS` with Apache Ivy (the resolver
  Spark itself uses for `--packages`, shipped with pyspark) from Maven Central and writes the lock:
  every jar of the transitive closure but `EXCLUDED`, with its sha256 and size.

The cache is `PROPENSITY_JARS` or `~/.cache/propensity/jars` (the image carries the jars in its own);
`PROPENSITY_MAVEN_REPOSITORY` names a mirror of Maven Central to download from.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from propensity.errors import PropensityError

LOCK = Path(__file__).with_name("jvm.lock")
MAVEN_CENTRAL = "https://repo1.maven.org/maven2"

# What the project asks for (group, artifact, version), and why. `make lock` pins their closure.
ROOTS = [
    # Apache Iceberg's Spark runtime for pyspark's Spark line (one shaded jar; docs/decisions.md).
    ("org.apache.iceberg", "iceberg-spark-runtime-4.1_2.13", "1.12.0"),
    # The Iceberg catalog: a JDBC catalog, on SQLite in the embedded mode, on PostgreSQL on a cluster.
    ("org.xerial", "sqlite-jdbc", "3.54.1.0"),
    ("org.postgresql", "postgresql", "42.7.14"),
    # Iceberg's S3FileIO: the AWS SDK's S3 client alone (not the 69 MB iceberg-aws-bundle), with the
    # JDK's HTTP client (url-connection-client) instead of Apache's or Netty's.
    ("software.amazon.awssdk", "s3", "2.59.1"),
    ("software.amazon.awssdk", "url-connection-client", "2.59.1"),
    # Iceberg's AWS properties name KMS and STS types (encryption, assumed roles) when S3FileIO starts.
    ("software.amazon.awssdk", "kms", "2.59.1"),
    ("software.amazon.awssdk", "sts", "2.59.1"),
]
# Left out of the closure: what pyspark already has on its class path, and the SDK's asynchronous
# (Netty) and Apache HTTP clients (4 and 5), which S3FileIO does not use when told to use url-connection.
EXCLUDED = [
    ("io.netty", "*"),
    ("software.amazon.awssdk", "netty-nio-client"),
    ("software.amazon.awssdk", "apache-client"),
    ("software.amazon.awssdk", "apache5-client"),
    ("org.apache.httpcomponents", "*"),
    ("org.apache.httpcomponents.client5", "*"),
    ("org.apache.httpcomponents.core5", "*"),
    ("org.slf4j", "*"),
    ("org.checkerframework", "*"),
]


@dataclass(frozen=True)
class Jar:
    group: str
    artifact: str
    version: str
    sha256: str
    size: int

    @property
    def filename(self) -> str:
        return f"{self.artifact}-{self.version}.jar"

    def url(self, repository: str) -> str:
        return f"{repository.rstrip('/')}/{self.group.replace('.', '/')}/{self.artifact}/{self.version}/{self.filename}"

    @property
    def coordinate(self) -> str:
        return f"{self.group}:{self.artifact}:{self.version}"

    def line(self) -> str:
        return f"{self.coordinate} sha256={self.sha256} size={self.size}"


def read_lock(path: Path | None = None) -> list[Jar]:
    path = path or LOCK
    jars = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            coordinate, sha, size = line.split()
            group, artifact, version = coordinate.split(":")
            jars.append(Jar(group, artifact, version, sha.removeprefix("sha256="), int(size.removeprefix("size="))))
        except ValueError:
            raise PropensityError(f"{path}:{number}: expected 'group:artifact:version sha256=... size=...'") from None
    return jars


def jar_cache() -> Path:
    configured = os.environ.get("PROPENSITY_JARS")
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "propensity" / "jars"


def repository() -> str:
    """Maven Central, or the mirror named by `PROPENSITY_MAVEN_REPOSITORY` (a proxy such as Artifactory or
    Nexus): the checksums are the lock's either way."""
    return os.environ.get("PROPENSITY_MAVEN_REPOSITORY") or MAVEN_CENTRAL


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(jar: Jar, directory: Path) -> Path:
    """One jar into `directory`, verified before it takes its name; nothing is left on a mismatch."""
    url = jar.url(repository())
    target = directory / jar.filename
    directory.mkdir(parents=True, exist_ok=True)
    handle, partial_name = tempfile.mkstemp(prefix=f".{jar.filename}.", suffix=".partial", dir=directory)
    partial = Path(partial_name)
    digest = hashlib.sha256()
    try:
        # Security lint (B310): the URL is the lock's repository (https by default), not user input.
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:  # nosec B310
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != jar.sha256:
            raise PropensityError(
                f"checksum mismatch for {jar.filename} from {url}: expected sha256 {jar.sha256}, got "
                f"{digest.hexdigest()}; nothing was kept"
            )
        partial.replace(target)
    except (urllib.error.URLError, OSError) as error:
        raise PropensityError(f"cannot download {url}: {error}") from None
    finally:
        partial.unlink(missing_ok=True)
    return target


def fetch(jars: Iterable[Jar] | None = None, directory: Path | None = None, verify_cached: bool = True) -> list[Path]:
    """Every pinned jar in the cache, downloading what is missing; all checksums verified."""
    directory = directory or jar_cache()
    paths = []
    for jar in read_lock() if jars is None else jars:
        path = directory / jar.filename
        if path.exists():
            if verify_cached and (path.stat().st_size != jar.size or sha256_of(path) != jar.sha256):
                raise PropensityError(
                    f"checksum mismatch for the cached {path}: it is not the pinned {jar.coordinate}; delete it "
                    "and run `make setup` again"
                )
        else:
            print(f"downloading {jar.coordinate} ({jar.size / 1e6:.1f} MB)", file=sys.stderr)
            download(jar, directory)
        paths.append(path)
    return paths


def class_path() -> list[Path]:
    """The jars for a Spark session: fetched if missing, and checked by size (`fetch` checked the
    checksums when it wrote them; hashing 60 MB at every session start costs more than it tells)."""
    directory = jar_cache()
    jars = read_lock()
    if any(not (directory / jar.filename).exists() for jar in jars):
        fetch(jars, directory)
    for jar in jars:
        if (directory / jar.filename).stat().st_size != jar.size:
            raise PropensityError(
                f"{directory / jar.filename} is not the pinned {jar.coordinate} (its size differs): delete it and "
                "run `make setup` again"
            )
    return [directory / jar.filename for jar in jars]


def _attr(value: str) -> str:
    return f'"{html.escape(value, quote=True)}"'


def ivy_module(roots: Iterable[tuple[str, str, str]], excluded: Iterable[tuple[str, str]]) -> str:
    dependencies = "\n".join(
        f"    <dependency org={_attr(g)} name={_attr(a)} rev={_attr(v)} conf='default->default'/>" for g, a, v in roots
    )
    excludes = "\n".join(f"    <exclude org={_attr(g)} module={_attr(a)}/>" for g, a in excluded)
    return (
        "<ivy-module version='2.0'>\n  <info organisation='propensity' module='jvm'/>\n  <dependencies>\n"
        f"{dependencies}\n{excludes}\n  </dependencies>\n</ivy-module>\n"
    )


def resolve(roots: Iterable[tuple[str, str, str]] = ROOTS, excluded: Iterable[tuple[str, str]] = EXCLUDED) -> list[Jar]:
    """The transitive closure of `roots` from Maven Central, by Ivy, with checksums of what it fetched."""
    import pyspark

    ivy_jars = sorted((Path(pyspark.__file__).parent / "jars").glob("ivy-*.jar"))
    if not ivy_jars:
        raise PropensityError("pyspark ships no Ivy jar to resolve the JVM libraries with")
    with tempfile.TemporaryDirectory(prefix="propensity-ivy-") as work:
        module = Path(work) / "ivy.xml"
        module.write_text(ivy_module(roots, excluded))
        retrieved = Path(work) / "jars"
        pattern = f"{retrieved}/[organisation]+[module]+[revision].[ext]"
        command = ["java", "-jar", str(ivy_jars[-1]), "-ivy", str(module), "-cache", f"{work}/cache"]
        command += ["-confs", "default", "-types", "jar", "bundle", "-retrieve", pattern, "-m2compatible"]
        result = subprocess.run(command, capture_output=True, text=True, check=False)  # nosec B603
        if result.returncode != 0:
            raise PropensityError(f"Ivy could not resolve the JVM libraries: {result.stdout[-2000:]}{result.stderr}")
        jars = []
        for path in sorted(retrieved.glob("*.jar")):
            group, artifact, version = path.stem.split("+")
            jars.append(Jar(group, artifact, version, sha256_of(path), path.stat().st_size))
        return jars


def write_lock(jars: list[Jar], path: Path | None = None) -> None:
    path = path or LOCK
    total = sum(jar.size for jar in jars)
    header = [
        "# JVM libraries for Spark, pinned by version and sha256: written by `make lock`",
        "# (python -m propensity.jvm lock) from ROOTS in propensity/jvm.py; verified by `make setup`.",
        f"# {len(jars)} jars, {total / 1e6:.1f} MB.",
    ]
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text("\n".join([*header, *(jar.line() for jar in jars)]) + "\n")
    partial.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m propensity.jvm", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["fetch", "lock", "path"])
    args = parser.parse_args(argv)
    try:
        if args.command == "lock":
            jars = resolve()
            write_lock(jars)
            print(f"{LOCK}: {len(jars)} jars, {sum(j.size for j in jars) / 1e6:.1f} MB")
        elif args.command == "fetch":
            paths = fetch()
            print(f"{len(paths)} JVM libraries verified in {jar_cache()}")
        else:
            print(":".join(str(p) for p in class_path()))
    except PropensityError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
