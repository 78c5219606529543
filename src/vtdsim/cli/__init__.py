"""The vtdsim command line."""
