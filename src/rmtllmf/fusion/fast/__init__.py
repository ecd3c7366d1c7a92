"""The fast path of linear merges: the compiled kernel and the fused streaming driver."""
