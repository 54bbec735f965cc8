"""Known-vulnerability audit of the lock file with pip-audit: a report, and a failure on any
vulnerability that has a fixed release (pip-audit's report carries no severity, so this is stricter
than failing on fixable critical ones only).

    python .ci/audit.py [--lock requirements.lock] [--service pypi|osv] [--osv-url URL] [--allow-unaudited]

Exit 0: audited, nothing fixable. 1: a fixable vulnerability (upgrade the pin named). 3: some
packages could not be audited (the vulnerability service was unreachable); with --allow-unaudited
the run still ends with a NOT AUDITED verdict, never OK, and exit 0, for machines whose network
reaches no vulnerability service (PyPI's per-release JSON API and OSV): there the check proves nothing
about the packages it could not audit, and says so.
"""

from __future__ import annotations

import argparse
import json
import subprocess  # nosec B404
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def audit(lock: Path, service: str, osv_url: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "audit.json"
        command = [sys.executable, "-m", "pip_audit", "-r", str(lock), "--require-hashes", "--disable-pip"]
        command += ["--progress-spinner", "off", "-s", service, "-f", "json", "-o", str(report)]
        if osv_url:
            command += ["--osv-url", osv_url]
        # Security lint (B603): this interpreter's pip-audit, argv list, no shell.
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)  # nosec B603
        if not report.exists():
            sys.exit(f"pip-audit failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
        return json.loads(report.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements.lock")
    parser.add_argument("-s", "--service", choices=["pypi", "osv"], default="pypi")
    parser.add_argument("--osv-url")
    parser.add_argument("--allow-unaudited", action="store_true")
    args = parser.parse_args()
    report = audit(args.lock, args.service, args.osv_url)
    lines, code = verdict(report, args.service, args.allow_unaudited)
    print("\n".join(lines))
    return code


def verdict(report: dict, service: str, allow_unaudited: bool) -> tuple[list[str], int]:
    """What pip-audit's JSON report means: its lines and the exit code. The last line is the verdict:
    FAIL, NOT AUDITED (some packages could not be checked: never OK) or OK."""
    dependencies = report["dependencies"]
    unaudited = [d for d in dependencies if "skip_reason" in d]
    found = [(d, v) for d in dependencies for v in d.get("vulns", [])]
    fixable = [(d, v) for d, v in found if v.get("fix_versions")]
    audited = len(dependencies) - len(unaudited)
    lines = [f"pip-audit ({service}): {audited} of {len(dependencies)} pinned packages audited"]
    for d, v in found:
        fix = ", ".join(v.get("fix_versions") or []) or "no fixed release"
        lines.append(f"  {d['name']}=={d['version']}: {v['id']} ({', '.join(v.get('aliases') or [])}) fixed in: {fix}")
    if unaudited:
        lines.append(f"  not audited: {len(unaudited)} packages, e.g. {unaudited[0]['skip_reason']}")
    if fixable:
        lines.append(
            f"FAIL: {len(fixable)} known vulnerabilities have a fixed release; raise those pins and `make lock`"
        )
        return lines, 1
    if unaudited:
        what = "no package was audited" if not audited else f"{len(unaudited)} of {len(dependencies)} packages"
        lines.append(
            f"NOT AUDITED: {what}: the vulnerability service could not be reached; this run proves nothing about them"
        )
        return lines, 0 if allow_unaudited else 3
    lines.append("OK: every pinned package audited, no known vulnerability with a fixed release")
    return lines, 0


if __name__ == "__main__":
    sys.exit(main())
