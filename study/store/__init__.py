"""Where a study's files live: a local folder or a storage URI (atomic local files, pyarrow stores), and a loopback S3 store."""
