"""WeakSTIL-style weakly supervised sTIL% regression from whole-slide images."""
