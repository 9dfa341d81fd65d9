"""The phases of `bisect-lite run`, each a small module over one `RunContext`.

reference -> confirm -> search -> isolate -> minimise -> bundle; `bisect_lite.bisector.run_bisect` drives them.
"""
