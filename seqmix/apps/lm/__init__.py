"""``lm``: language modelling with any causal mixer on Shakespeare's plays or ACL papers (docs/lm.md)."""
