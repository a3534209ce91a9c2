"""Reports: model summary, training history files, plots."""
