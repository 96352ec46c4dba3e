"""A stranger's VRT carrying Python runs none of it, even where the environment allows it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.runtime.infer_data import make_varied_bundle

VRT = """<VRTDataset rasterXSize="64" rasterYSize="64">
  <SRS>EPSG:32637</SRS>
  <GeoTransform>500000, 0.5, 0, 4200000, 0, -0.5</GeoTransform>
  {bands}
</VRTDataset>"""
BAND = """<VRTRasterBand dataType="Byte" band="{n}" subClass="VRTDerivedRasterBand">
    <PixelFunctionType>payload</PixelFunctionType>
    <PixelFunctionLanguage>Python</PixelFunctionLanguage>
    <PixelFunctionCode><![CDATA[
def payload(in_ar, out_ar, *args, **kwargs):
    open({marker!r}, "w").write("ran")
    out_ar[:] = 1
]]></PixelFunctionCode>
  </VRTRasterBand>"""
STMAP = "from stmap.cli import main; main()"


@pytest.mark.parametrize("command", ["info", "infer"])
def test_a_vrt_python_pixel_function_never_runs(tmp_path: Path, command: str) -> None:
    marker = tmp_path / "payload-ran"
    vrt = tmp_path / "city.vrt"
    bands = "\n".join(BAND.format(n=n, marker=str(marker)) for n in (1, 2, 3))
    vrt.write_text(VRT.format(bands=bands))
    args = [str(vrt)]
    if command == "infer":
        bundle = make_varied_bundle(tmp_path / "bundle")
        args += ["-o", str(tmp_path / "out"), "--model", str(bundle)]
    env = {**os.environ, "GDAL_VRT_ENABLE_PYTHON": "YES"}  # what a careless profile sets
    done = subprocess.run(
        [sys.executable, "-c", STMAP, command, *args], env=env, capture_output=True, text=True
    )
    assert not marker.exists(), "the VRT's Python ran"
    assert done.returncode in (0, 2), done.stderr


def test_a_vrt_that_reads_itself_is_refused_without_output(tmp_path: Path) -> None:
    source = '<SimpleSource><SourceFilename relativeToVRT="1">loop.vrt</SourceFilename>'
    band = f'<VRTRasterBand dataType="Byte" band="{{n}}">{source}</SimpleSource></VRTRasterBand>'
    vrt = tmp_path / "loop.vrt"
    vrt.write_text(VRT.format(bands="\n".join(band.format(n=n) for n in (1, 2, 3))))
    out = tmp_path / "out"
    bundle = make_varied_bundle(tmp_path / "bundle")
    done = subprocess.run(
        [sys.executable, "-c", STMAP, "infer", str(vrt), "-o", str(out), "--model", str(bundle)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "Recursion detected" in done.stderr
    assert not out.exists()
