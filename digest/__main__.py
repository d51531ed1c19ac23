"""`python -m digest`: the same command line as `digest`."""

from digest.cli import main

# Guarded: processes started with "spawn" (the freeze and rendering processes of a large
# personal send) import the parent's __main__ module again, and must not run the command.
if __name__ == "__main__":
    main()
