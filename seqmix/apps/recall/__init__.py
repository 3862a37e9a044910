"""``recall``: Zoology's multi-query associative recall (MQAR) with any mixer."""
