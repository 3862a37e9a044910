"""Summarization: Read-Highlight-Summarize on ACLSum (issue 31). Data and metrics live in
:mod:`.data`, :mod:`.metrics`; the untrained rows and the one evaluation in :mod:`.baselines`."""
