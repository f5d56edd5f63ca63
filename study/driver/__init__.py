"""Running a study: checks before Ray, Ray itself, the Tuner and its trainable, progress, the end of a run, the lock."""
