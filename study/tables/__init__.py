"""A study's tables: their vocabulary, the files on disk, their copy in the storage, choosing from them, pooling, Study."""
