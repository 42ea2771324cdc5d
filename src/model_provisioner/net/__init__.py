"""HTTP as we speak it: the guarded client, retries, redirects, ranges, the registry and S3 clients."""
