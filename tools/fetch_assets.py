"""Put the JavaScript the built book needs into book/assets/vendor/, so pages make no off-site requests.

    python tools/fetch_assets.py

* plotly.min.js is copied from the installed ``plotly`` package (same version that wrote the figures).
* require.js, the ipywidgets embed manager and MathJax come from pinned npm tarballs, downloaded
  straight from the npm registry with urllib (a CI machine may have no node/npm), checked
  against the sha512 ``integrity`` pinned below, and cached in .cache/npm/. A second run uses
  the cache only: instant and offline.

book/assets/vendor/ and .cache/ are gitignored. The book's _config.yml points at these files.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import io
import pathlib
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parent.parent
VENDOR = ROOT / "book" / "assets" / "vendor"
CACHE = ROOT / ".cache" / "npm"
REGISTRY = "https://registry.npmjs.org"


@dataclass(frozen=True)
class NpmPackage:
    """One npm tarball and which of its members to copy (tar path prefix -> path under vendor/)."""

    name: str
    version: str
    integrity: str  # the registry's dist.integrity ("sha512-<base64>")
    members: dict[str, str]

    @property
    def url(self) -> str:
        basename = self.name.split("/")[-1]
        return f"{REGISTRY}/{self.name}/-/{basename}-{self.version}.tgz"

    @property
    def cache_path(self) -> pathlib.Path:
        return CACHE / f"{self.name.replace('/', '__')}-{self.version}.tgz"


# The versions myst-nb 1.4 would load from CDNs, and the MathJax 3 that sphinx 7.4 would load.
PACKAGES = [
    NpmPackage(
        "requirejs", "2.3.4",
        "sha512-qPD5gRrj6kGQ0ZySAJgqbArkaDqPMbQIT0zSZDkIv1mfA17w/tR2Faq5l2qqRf2CdQx6FWln9nUrgd2UDzb19A==",
        {"package/require.js": "require.js"},
    ),
    NpmPackage(
        # Kept in npm's layout: embed-amd.js finds its fonts at require.js baseUrl + its module id
        # (book/assets/widgets-setup.js sets baseUrl to vendor/npm/).
        "@jupyter-widgets/html-manager", "1.0.6",
        "sha512-+Mn+Ra8wyIHrYaUpfmf9A3dsLkt/NuwzPQN8sthdxBD35VV5cOJbpmgMhNR27n/rmP3mKyEe0PWCJrtZrXTXDQ==",
        {"package/dist/embed-amd.js": "npm/@jupyter-widgets/html-manager/dist/embed-amd.js",
         "package/dist/*.woff2": "npm/@jupyter-widgets/html-manager/dist/",
         "package/dist/*.woff": "npm/@jupyter-widgets/html-manager/dist/"},
    ),
    NpmPackage(
        # The combined TeX+MathML/CHTML bundle sphinx uses by default, its web fonts, and what it
        # loads on demand: TeX extensions (autoload, \require), the menu's accessibility
        # components and English speech rules.
        "mathjax", "3.2.2",
        "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==",
        {"package/es5/tex-mml-chtml.js": "mathjax/tex-mml-chtml.js",
         "package/es5/output/chtml/fonts/woff-v2/": "mathjax/output/chtml/fonts/woff-v2/",
         "package/es5/input/tex/extensions/": "mathjax/input/tex/extensions/",
         "package/es5/input/mml/": "mathjax/input/mml/",
         "package/es5/a11y/": "mathjax/a11y/",
         "package/es5/ui/": "mathjax/ui/",
         "package/es5/sre/mathmaps/base.json": "mathjax/sre/mathmaps/base.json",
         "package/es5/sre/mathmaps/en.json": "mathjax/sre/mathmaps/en.json"},
    ),
]


def check_integrity(data: bytes, integrity: str, what: str) -> None:
    algo, _, expected = integrity.partition("-")
    actual = base64.b64encode(hashlib.new(algo, data).digest()).decode()
    if actual != expected:
        raise SystemExit(f"fetch_assets: {what}: {algo} mismatch (expected {expected}, got {actual})")


def tarball(pkg: NpmPackage) -> bytes:
    """The verified tarball, from the cache or else from the registry (then cached)."""
    if pkg.cache_path.exists():
        data = pkg.cache_path.read_bytes()
        check_integrity(data, pkg.integrity, str(pkg.cache_path))
        return data
    print(f"fetch_assets: downloading {pkg.url}", flush=True)
    try:
        with urllib.request.urlopen(pkg.url, timeout=120) as response:
            data = response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise SystemExit(
            f"fetch_assets: could not download {pkg.name}@{pkg.version} from {pkg.url}: {err}\n"
            "The book needs it to render offline; check access to the npm registry and re-run."
        ) from err
    check_integrity(data, pkg.integrity, pkg.url)
    pkg.cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pkg.cache_path.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(pkg.cache_path)  # atomic: an interrupted download never poisons the cache
    return data


def destination(member: str, pattern: str, target: str) -> str | None:
    """Where a tar member goes under vendor/, or None if ``pattern`` does not select it.

    Patterns: an exact file, a folder ending in "/" (everything below it, structure kept), or
    "folder/*.ext" (files directly in folder with that extension, flattened into ``target``).
    """
    if "*" in pattern:
        folder, suffix = pattern.split("*")
        rest = member[len(folder):]
        if member.startswith(folder) and "/" not in rest and rest.endswith(suffix):
            return target + rest
        return None
    if pattern.endswith("/"):
        return target + member[len(pattern):] if member.startswith(pattern) else None
    return target if member == pattern else None


def install(pkg: NpmPackage) -> int:
    """Extract the selected members of one package into vendor/; returns the number of files."""
    count = 0
    with tarfile.open(fileobj=io.BytesIO(tarball(pkg)), mode="r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            for pattern, target in pkg.members.items():
                rel = destination(member.name, pattern, target)
                if rel is None:
                    continue
                out = VENDOR / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(member).read())
                count += 1
                break
        names = tar.getnames()
    for pattern in pkg.members:  # every pinned selection must match something
        if not any(destination(name, pattern, "") is not None for name in names):
            raise SystemExit(f"fetch_assets: {pkg.name}@{pkg.version} has no member {pattern!r}")
    return count


def copy_plotly() -> str:
    """plotly.min.js from the installed plotly package: the figures were written by the same version."""
    spec = importlib.util.find_spec("plotly")  # locate without importing (importing takes ~0.5 s)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("fetch_assets: plotly is not installed in this environment")
    source = pathlib.Path(spec.submodule_search_locations[0]) / "package_data" / "plotly.min.js"
    if not source.exists():
        raise SystemExit(f"fetch_assets: {source} not found (broken plotly install?)")
    VENDOR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, VENDOR / "plotly.min.js")
    return importlib.metadata.version("plotly")


def main() -> int:
    shutil.rmtree(VENDOR, ignore_errors=True)  # no stale files from an earlier pin
    print(f"fetch_assets: plotly.min.js from plotly {copy_plotly()}")
    for pkg in PACKAGES:
        print(f"fetch_assets: {pkg.name}@{pkg.version}: {install(pkg)} files")
    print(f"fetch_assets: done -> {VENDOR.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
