"""Operations over the whole cache: leases, usage, gc and the size budget, adopting caches, push."""
