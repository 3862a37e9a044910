"""Behaviour-sequence fraud clustering: sequence embeddings, pHDBSCAN, rules for risky clusters."""
