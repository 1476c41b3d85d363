"""Plots you can look at with no network: `dvc plots show/diff` pages with the Vega libraries inlined,
static SVG and PNG files of every plot, and a headless-browser screenshot to check a page by eye.

    python -m emotion_pipeline.dev.plots show                      # dvc_plots/index.html + dvc_plots/static/*.svg|png
    python -m emotion_pipeline.dev.plots diff main <experiment>    # the same for `dvc plots diff` (any revisions)
    python -m emotion_pipeline.dev.plots screenshot dvc_plots/index.html page.png   # Chromium, network off

`dvc plots show` alone writes a page that loads Vega from a CDN: blank on an air-gapped machine.
Here the page template carries the Vega, Vega-Lite and Vega-Embed code itself, taken from the
PyPI package vl-convert-python (never fetched at run time), and the same package renders each
plot's Vega-Lite spec (from `dvc plots show --json`) to SVG and PNG for reports.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import vl_convert

OUT_DIR = Path("dvc_plots")
# Derived from an installed package, so kept out of git: rebuilt whenever it is missing.
TEMPLATE = Path(".dvc/tmp/offline_plots_template.html")
PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>emotion-pipeline plots</title>
    <script type="text/javascript">
INLINE_VEGA
    </script>
    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def offline_template(path: Path = TEMPLATE) -> Path:
    """An HTML template for `dvc plots --html-template` with Vega inlined (no {scripts}: DVC's CDN tags are dropped)."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        # DVC fills the template with str.replace on '{name}' placeholders: keep the code free of them.
        bundle = vl_convert.javascript_bundle().replace("{plot_divs}", "{ plot_divs }")
        path.write_text(PAGE.replace("INLINE_VEGA", bundle), encoding="utf-8")
    return path


def dvc_plots(command: str, revisions: list[str], out_dir: Path = OUT_DIR) -> Path:
    """Run `dvc plots show|diff` with the offline template; write static images beside the page; return the page."""
    dvc = [sys.executable, "-m", "dvc", "plots", command, *revisions]
    subprocess.run([*dvc, "--html-template", str(offline_template()), "-o", str(out_dir)], check=True)
    specs = json.loads(subprocess.run([*dvc, "--json"], check=True, capture_output=True, text=True).stdout)
    write_static(specs, out_dir / "static")
    return out_dir / "index.html"


def write_static(plots_json: dict, folder: Path) -> list[Path]:
    """Each Vega-Lite plot of `dvc plots show --json` as <name>.svg and <name>.png in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for plot_id, renderings in plots_json.get("data", {}).items():
        for number, rendering in enumerate(renderings):
            if rendering.get("type") != "vega":
                continue
            spec = rendering["content"]
            name = re.sub(r"[^A-Za-z0-9]+", "_", Path(plot_id).with_suffix("").as_posix()).strip("_")
            name += f"_{number}" if len(renderings) > 1 else ""
            (folder / f"{name}.svg").write_text(vl_convert.vegalite_to_svg(spec), encoding="utf-8")
            (folder / f"{name}.png").write_bytes(vl_convert.vegalite_to_png(spec, scale=2))
            written += [folder / f"{name}.svg", folder / f"{name}.png"]
    return written


def screenshot(page: Path, png: Path, width: int = 1400, height: int = 2400) -> Path:
    """Open ``page`` in headless Chromium with networking unavailable and save a PNG of what it shows.

    Chromium comes from Debian's package (`apt-get install chromium`). Networking is cut with a
    fresh network namespace (`unshare -n`) where that is allowed, and with a dead proxy besides.
    """
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("error: no Chromium found; install it with `apt-get install chromium`.")
    with tempfile.TemporaryDirectory() as profile:
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   "--proxy-server=127.0.0.1:9", f"--user-data-dir={profile}", f"--window-size={width},{height}",
                   "--virtual-time-budget=10000", f"--screenshot={png.resolve()}", page.resolve().as_uri()]
        if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
            command = ["unshare", "-n", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)
    return png


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("show", "diff"):
        command = sub.add_parser(name, help=f"`dvc plots {name}` with Vega inlined, plus static SVG/PNG files")
        command.add_argument("revisions", nargs="*", help="git revisions or experiment names (diff)")
        command.add_argument("-o", "--out", type=Path, default=OUT_DIR)
    shot = sub.add_parser("screenshot", help="a PNG of a page in headless Chromium, with no network")
    shot.add_argument("page", type=Path)
    shot.add_argument("png", type=Path)
    args = parser.parse_args(argv)
    if args.command == "screenshot":
        print(screenshot(args.page, args.png))
    else:
        print(dvc_plots(args.command, args.revisions, args.out))


if __name__ == "__main__":
    main()
