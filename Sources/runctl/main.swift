print("runctl")
