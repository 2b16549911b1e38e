"""Instance kinds behind one contract (``base.Instance``)."""
