"""The layout of the output rasters, which every stage that writes or reads them shares.

TILE: the GeoTIFF tile size of the outputs (partial rasters and COGs). The pipeline's
blocks are whole multiples of it so that every write fills whole tiles, and the
bookkeeping that follows the blocks (coverage maps, the memory budget) counts in it.
NODATA: the value of an output pixel that no input pixel covers (uint8 layers; a
probability is scaled to 0..254).
"""

from __future__ import annotations

TILE = 512
NODATA = 255
