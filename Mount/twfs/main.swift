print("twfs")
