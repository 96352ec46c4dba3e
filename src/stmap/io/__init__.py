"""The only code in stmap that opens files: rasters, vectors, tiles and writers."""
