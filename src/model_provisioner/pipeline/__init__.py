"""The order of steps of one ensure, and the ledger that owns Pending -> Active | Failed."""
