"""Readers'-emotion detection (REDAffectiveLM) on SemEval-2007; see docs/text.md."""
