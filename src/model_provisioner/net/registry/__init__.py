"""OCI distribution: manifests, the registry client with its auth, Docker credentials."""
