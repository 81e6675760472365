"""Fast paths for CPU training and decoding: oneDNN-packed frozen linears, a preallocated KV cache."""
