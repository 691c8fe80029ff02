print("twctl")
