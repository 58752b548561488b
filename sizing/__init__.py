"""What a PatchTST configuration costs before it exists: parameters, FLOPs, budgets, memory, the pre-flight.

Pure torch: nothing in this package imports Lightning (it reads the network's `PatchTSTConfig`, which is
pure torch too).
"""
