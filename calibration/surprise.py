HELP="x"
def configure(p): pass
def run(a): return 0
