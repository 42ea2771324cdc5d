"""The shared vocabulary every layer uses: errors and exit codes, refs, digests, hashing, redaction, units,
hosts, paths, failpoints. Imports nothing else of ours (docs/architecture.md)."""
