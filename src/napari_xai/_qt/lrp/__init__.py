"""The LRP designer dock widget, one module per tab (composed by :mod:`.designer`)."""
