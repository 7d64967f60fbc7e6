"""The contract between the control plane and the inference plane.

Both planes import this package; it imports neither of them (nor Django).
"""
