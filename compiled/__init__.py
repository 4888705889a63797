"""compiled: the lean device runtime (numpy + pyopencl only; never imports the compiler)."""
