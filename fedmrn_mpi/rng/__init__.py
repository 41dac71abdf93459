"""Randomness: named seeds from the root seed (`seeds`), the counter-based noise generator that is
bit-identical on the CPU and every GPU (`noise`), and mask bit packing (`bits`)."""
