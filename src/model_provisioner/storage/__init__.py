"""The cache directory: blobs, views, locks, unpacking and the catalog (docs/cache-and-lifecycle.md)."""
