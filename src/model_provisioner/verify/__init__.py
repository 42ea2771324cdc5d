"""One comparison of bytes with what was expected, re-verification, signatures and the result types."""
