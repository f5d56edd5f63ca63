"""From tables to verdicts: evidence (effects, intervals, tests), claims, figures, the report (details, summary.md)."""
