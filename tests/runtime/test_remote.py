"""Remote COGs: read over HTTP in few range requests, with no listing or sidecar probes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from stmap.cli import main
from tests.runtime.infer_data import make_varied_bundle
from tests.runtime.mosaic_data import cut_tile, make_city

# A range-capable HTTP server (http.server has no Range support), logging each request.
SERVER = textwrap.dedent(
    """
    import os, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    root, log = sys.argv[1], open(sys.argv[2], "a", buffering=1)

    class Ranges(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.serve(body=False)

        def do_GET(self):
            self.serve(body=True)

        def serve(self, body):
            log.write(f"{self.command} {self.path} {self.headers.get('Range', '-')}\\n")
            path = os.path.join(root, self.path.lstrip("/"))
            if not os.path.isfile(path):
                self.send_error(404)
                return
            data = open(path, "rb").read()
            status, start, stop = 200, 0, len(data)
            spec = self.headers.get("Range")
            if spec:
                first, last = spec.split("=")[1].split("-")
                start, stop, status = int(first), min(int(last) + 1, len(data)), 206
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(stop - start))
            self.end_headers()
            if body:
                self.wfile.write(data[start:stop])

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ranges)
    print(server.server_address[1], flush=True)
    server.serve_forever()
    """
)


@pytest.fixture
def served(tmp_path: Path):
    """(base URL, request log, served folder) of a server on 127.0.0.1."""
    folder, log = tmp_path / "www", tmp_path / "requests.log"
    folder.mkdir()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(folder), str(log)], stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(server.stdout.readline())
        yield f"http://127.0.0.1:{port}", log, folder
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_remote_cog_maps_like_a_local_one_in_few_range_requests(served, tmp_path: Path) -> None:
    base, log, folder = served
    city = make_city(tmp_path / "city", size=768)
    cog = cut_tile(city, folder / "scene.tif", (0, 0, 768, 768))  # 36 internal 128-px tiles
    bundle = make_varied_bundle(tmp_path / "bundle")
    args = ["--model", str(bundle), "--json", "--quiet", "--block-size", "512"]
    local = CliRunner().invoke(main, ["infer", str(cog), "-o", str(tmp_path / "local"), *args])
    assert local.exit_code == 0, local.output
    log.write_text("")
    remote = CliRunner().invoke(
        main, ["infer", f"{base}/scene.tif", "-o", str(tmp_path / "remote"), *args]
    )
    assert remote.exit_code == 0, remote.output
    assert json.loads(remote.output)["inputs"][0]["path"] == f"/vsicurl/{base}/scene.tif"

    requests = log.read_text().splitlines()
    paths = {line.split()[1] for line in requests}
    assert paths == {"/scene.tif"}  # no directory listing, no .aux.xml/.ovr/.msk probes
    with rasterio.open(cog) as ds:
        levels = [1, *ds.overviews(1)]
    tiles = sum(math.ceil(768 / level / 128) ** 2 for level in levels)  # full res + overviews
    # Merged range requests: fewer requests than tiles.
    assert len(requests) < tiles, f"{len(requests)} requests for {tiles} tiles: {requests}"
    for name in ("scene_damage_prob.tif", "scene_damage.tif"):
        with (
            rasterio.open(tmp_path / "local" / name) as a,
            rasterio.open(tmp_path / "remote" / name) as b,
        ):
            np.testing.assert_array_equal(a.read(), b.read())


def test_opening_a_local_file_keeps_the_streaming_settings_of_remote_reads(tmp_path):
    """Opening a local file lists its folder (for its sidecars) without lifting, for the
    whole process, the setting that keeps remote opens from listing theirs (a run that
    read a local file on the main thread then listed the remote folder: one request
    more, test above flaky)."""
    from rasterio.env import get_gdal_config

    from stmap.io.blocks import streaming_env
    from stmap.io.raster import open_raster
    from tests.conftest import write_rgb_raster

    local = write_rgb_raster(tmp_path / "local.tif")
    with streaming_env():
        with rasterio.Env(GDAL_CACHEMAX=64 << 20):  # a parent Env, as a run has
            with open_raster(local):
                pass
            assert get_gdal_config("GDAL_DISABLE_READDIR_ON_OPEN") == "EMPTY_DIR"
        assert get_gdal_config("GDAL_DISABLE_READDIR_ON_OPEN") == "EMPTY_DIR"
