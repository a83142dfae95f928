#!/usr/bin/env python3
"""Fetch the book's browser assets (MathJax, the Jupyter widget manager, RequireJS, Vega) from npm.

The built book must typeset its math and show its widgets with no internet access, and from any
web host. So instead of the public CDNs that Sphinx and myst-nb use by default, the book serves
pinned copies of these packages from its own ``_static`` folder (``_config.yml`` points
``mathjax_path`` and ``nb_ipywidgets_js`` at them with relative paths).

This script downloads the exact tarballs below with ``npm pack`` (the npm registry, through npm's
own cache), checks each against its pinned SHA-512 integrity, and unpacks the files the book needs
into ``_static_book/offline/``, which Sphinx copies to ``_build/html/_static/offline/``.
It is idempotent: run it again after changing a pin. Only the standard library is used.

Usage: python scripts/fetch_assets.py [--dest _static_book/offline]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (version, npm integrity of the tarball, [(glob in the package, target folder)])
PINS = {
    "mathjax": (
        "3.2.2",
        "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==",
        # tex-mml-chtml.js loads, lazily and from paths relative to itself, its fonts
        # (output/chtml/fonts), any TeX extension a page asks for (input/tex/extensions) and what
        # the right-click menu offers (ui, a11y, sre); the SVG and "full" bundles are not needed.
        [
            ("es5/tex-mml-chtml.js", "mathjax"),
            ("es5/input/**/*", "mathjax/input"),
            ("es5/output/chtml/**/*", "mathjax/output/chtml"),
            ("es5/ui/**/*", "mathjax/ui"),
            ("es5/a11y/**/*", "mathjax/a11y"),
            ("es5/sre/**/*", "mathjax/sre"),
            ("LICENSE", "mathjax"),
        ],
    ),
    "@jupyter-widgets/html-manager": (
        "1.0.6",  # the release that matches ipywidgets 8.1 (widget protocol 2)
        "sha512-+Mn+Ra8wyIHrYaUpfmf9A3dsLkt/NuwzPQN8sthdxBD35VV5cOJbpmgMhNR27n/rmP3mKyEe0PWCJrtZrXTXDQ==",
        # embed-amd.js defines the manager, @jupyter-widgets/base and /controls for RequireJS;
        # the font files are Font Awesome, used by widget icons
        [
            ("dist/embed-amd.js", "html-manager"),
            ("dist/*.woff2", "html-manager"),
            ("dist/*.woff", "html-manager"),
            ("dist/*.ttf", "html-manager"),
            ("dist/*.eot", "html-manager"),
            ("dist/*.svg", "html-manager"),
            ("LICENSE", "html-manager"),
        ],
    ),
    "requirejs": (
        "2.3.8",
        "sha512-7/cTSLOdYkNBNJcDMWf+luFvMriVm7eYxp4BcFCsAX0wF421Vyce5SXP17c+Jd5otXKGNehIonFlyQXSowL6Mw==",
        [("require.js", "requirejs"), ("README.md", "requirejs")],  # the README holds its licence
    ),
    # The explorers (minimind_ref.lab.explorer) are Altair charts, i.e. Vega-Lite specifications that
    # these three libraries render in the page. The majors must be those Altair's HTML asks for
    # (altair.VEGA_VERSION, VEGALITE_VERSION, VEGAEMBED_VERSION; _ext/book_pages.py checks them).
    "vega": (
        "6.3.0",
        "sha512-L/ykPslBI5QiElzs7jD01c/0EP2yzJ0SdQ3WLZkgBsmykNkhfilWLAa24RzDx67rilNLdeBCJVCmogi40xJ6yA==",
        [("build/vega.min.js", "vega"), ("LICENSE", "vega/vega")],
    ),
    "vega-lite": (
        "6.4.1",
        "sha512-KO3ybHNouRK4A0al/+2fN9UqgTEfxrd/ntGLY933Hg5UOYotDVQdshR3zn7OfXwQ7uj0W96Vfa5R+QxO8am3IQ==",
        [("build/vega-lite.min.js", "vega"), ("LICENSE", "vega/vega-lite")],
    ),
    "vega-embed": (
        "7.3.0",
        "sha512-wQ8s5GaSzqoKgmRfbRolgBrjE2CP7ZKHXqH7NijxMqPjpdWxSs4Dn8tvp9g0giQvh2cK+3p56sxjWWM0wNngGw==",
        [("build/vega-embed.min.js", "vega"), ("LICENSE", "vega/vega-embed")],
    ),
}


def fail(message: str) -> None:
    print(f"fetch_assets: {message}", file=sys.stderr)
    sys.exit(1)


def npm_pack(spec: str, into: Path) -> dict:
    npm = shutil.which("npm")
    if npm is None:
        fail(
            "`npm` was not found. The book serves MathJax and the Jupyter widget manager itself, so that it works "
            "offline; they are fetched from the npm registry at set-up.\n"
            "  Install Node.js and npm (Debian/Ubuntu: `sudo apt-get install npm`; macOS: `brew install node`), "
            "then run `make assets` (or `make book`) again."
        )
    cmd = [
        npm,
        "pack",
        spec,
        "--json",
        "--pack-destination",
        str(into),
        "--prefer-offline",
        "--loglevel=error",
        "--no-fund",
        "--no-audit",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        fail(f"`{' '.join(cmd)}` failed (is the npm registry reachable?):\n{proc.stderr.strip()}")
    return json.loads(proc.stdout)[0]


def safe_members(tar: tarfile.TarFile):
    for member in tar.getmembers():
        path = Path(member.name)
        if path.is_absolute() or ".." in path.parts or not (member.isfile() or member.isdir()):
            fail(f"refusing to unpack suspicious member {member.name!r}")
        yield member


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=ROOT / "_static_book" / "offline")
    args = parser.parse_args()
    dest: Path = args.dest

    staging = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    versions = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, (version, integrity, copies) in PINS.items():
            info = npm_pack(f"{name}@{version}", tmp)
            if info.get("integrity") != integrity:
                fail(f"{name}@{version}: integrity {info.get('integrity')} does not match the pinned {integrity}")
            unpacked = tmp / name.replace("/", "__")
            with tarfile.open(tmp / info["filename"]) as tar:
                tar.extractall(unpacked, members=safe_members(tar))
            package = unpacked / "package"
            for pattern, target in copies:
                base = package / pattern.split("*")[0].rstrip("/") if "**" in pattern else None
                matches = [p for p in package.glob(pattern) if p.is_file() and p.suffix != ".map"]
                if not matches:
                    fail(f"{name}@{version}: nothing matches {pattern!r}")
                for src in matches:
                    # keep the tree below a '**' pattern's base; flat copy for a simple name or '*.ext'
                    dst = staging / target / (src.relative_to(base) if base else src.name)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)
            versions[name] = {"version": version, "integrity": integrity}
            print(f"fetch_assets: {name}@{version} ok")
    (staging / "VERSIONS.json").write_text(json.dumps(versions, indent=2) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"fetch_assets: {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
