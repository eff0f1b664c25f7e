// Placeholder: the benchmark is written on its own branch.
print("runbench")
