"""``python -m course_utils ...``: the command line (see ``course_utils.cli``)."""

from course_utils.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
