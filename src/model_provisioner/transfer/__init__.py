"""The transfer engine: bytes from a source into the blob store, verified, resumable."""
