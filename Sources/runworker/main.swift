print("runworker")
