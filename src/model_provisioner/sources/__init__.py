"""Each scheme turns a ref into a ``FetchPlan`` (what to fetch, from where, what it must be)."""
