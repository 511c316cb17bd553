from .cli import forget_handled_interrupt, main

code = main()
forget_handled_interrupt()  # a Ctrl-C main() handled is not one to end the process with (see there)
raise SystemExit(code)
