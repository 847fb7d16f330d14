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


class Tap:
    """Counts checks. A check is a description and a result: True/False, or a
    (bool, why) pair whose `why` is printed as diagnostics when the check fails."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

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


class Matrix:
    """A results table: rows (a client or next hop) by columns (a way of connecting).
    Each cell is "ok", "FAIL" or "n/a" (the combination does not exist for that peer),
    with "skip" for a peer that is not installed here."""

    def __init__(self, title, columns):
        self.title = title
        self.columns = list(columns)
        self.rows = {}  # row -> {column: cell}

    def add_row(self, row):
        self.rows.setdefault(row, {})

    def set(self, row, column, cell):
        assert column in self.columns, column
        self.rows.setdefault(row, {})[column] = cell

    def result(self, row, column, results):
        """The cell from a list of check results: ok if there is one and none failed."""
        self.set(row, column, "ok" if results and all(results) else "FAIL")

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
