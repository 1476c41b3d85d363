"""Scores: the metrics, their bootstrap intervals and paired comparisons, and reports for people."""
