"""longctx benchmarks: each compares longctx with a named baseline in the same run (`make bench`)."""
