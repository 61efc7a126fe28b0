"""NumPy execution: the reference interpreter (`reference.interpret`) and what each IR
operator computes (`ops`)."""
