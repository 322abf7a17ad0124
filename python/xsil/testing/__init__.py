"""Independent NumPy references for checking xsil's native code (no xsil._core imports)."""
