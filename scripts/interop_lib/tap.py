"""TAP-style reporting: one "ok - ..." / "not ok - ..." line per check, diagnostics as
"#   ..." lines, a tally, and the results matrix printed at the end."""

import sys


def diag(text):
    """Print TEXT (str, bytes or lines) as TAP diagnostics."""
    if text is None:
        return
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str):
        text = "\n".join(str(t) for t in text)
    for line in text.rstrip("\n").splitlines():
        print("#   " + line)
    sys.stdout.flush()


def note(text):
    print("# " + text)
    sys.stdout.flush()


class Tap:
    """Counts checks. A check is a description and a result: True/False, or a
    (bool, why) pair whose `why` is printed as diagnostics when the check fails."""

    def __init__(self):
        self.passed = 0
        self.failed = 0
        self._marks = []  # open Tap.track() blocks: failure counts at their start

    def ok(self, desc):
        self.passed += 1
        print("ok - " + desc)
        sys.stdout.flush()
        return True

    def not_ok(self, desc, why=None):
        self.failed += 1
        print("not ok - " + desc)
        diag(why)
        return False

    def skip(self, why):
        """A check that cannot run here (a tool is missing): counted as passed, as TAP does."""
        return self.ok("# skip " + why)

    def check(self, desc, result, why=None):
        """Report RESULT (bool, or (bool, why)) under DESC; return the bool."""
        if isinstance(result, tuple):
            result, why = result
        return self.ok(desc) if result else self.not_ok(desc, why)

    def track(self):
        """`with tap.track() as t:` ... `t.ok` is True if no check failed in the block."""
        return _Track(self)


class _Track:
    def __init__(self, tap):
        self.tap = tap
        self.ok = None
        self.ran = False

    def __enter__(self):
        self._failed = self.tap.failed
        self._passed = self.tap.passed
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.tap.not_ok("no exception in the checks (%s: %s)" % (exc_type.__name__, exc))
        self.ran = self.tap.passed + self.tap.failed > self._passed + self._failed
        self.ok = self.ran and self.tap.failed == self._failed
        return exc_type is not None and issubclass(exc_type, Exception)


class Matrix:
    """A results table: rows (a client or next hop) by columns (a way of connecting).
    Each cell is "ok", "FAIL" or "n/a" (the combination does not exist for that peer),
    with "skip" for a peer that is not installed here."""

    def __init__(self, title, columns):
        self.title = title
        self.columns = list(columns)
        self.rows = {}  # row -> {column: cell}
        self.notes = {}

    def set(self, row, column, cell):
        assert column in self.columns, column
        self.rows.setdefault(row, {})[column] = cell

    def record(self, row, column, track):
        self.set(row, column, "ok" if track.ok else "FAIL")

    def row_note(self, row, text):
        self.notes[row] = text

    def failed(self):
        return [(r, c) for r, cells in self.rows.items() for c, v in cells.items() if v == "FAIL"]

    def render(self):
        """The table as Markdown (readable as it is on a terminal)."""
        head = [self.title] + self.columns
        body = [[r] + [self.rows[r].get(c, "n/a") for c in self.columns] for r in self.rows]
        widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]

        def line(cells):
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

        out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        out += [line(r) for r in body]
        return "\n".join(out)
