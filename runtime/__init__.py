"""stmap.runtime: the streaming pipeline that maps whole rasters."""
