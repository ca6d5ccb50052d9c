"""Text a student chose, made inert for the grader's terminal, logs and spreadsheets.

Trusted code. A student id is the name of an exchange folder, and a file name is whatever a
student called a file: either can hold newlines (to forge a line of `make autograde`'s summary),
terminal escape sequences (to set the grader's window title, or worse), or a spreadsheet formula.
HTML pages escape with `html.escape` where they are written; this module covers the rest:

    one_line(text)   for a terminal or a log: control characters written as \\n, \\x1b, \\u202e, ...
    csv_cell(value)  for a CSV cell: a text a spreadsheet would read as a formula gets a leading '
"""
import unicodedata

# What makes a spreadsheet (Excel, LibreOffice, Google Sheets) read a cell as a formula: OWASP's list.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")


def _escaped(char):
    code = ord(char)
    if char == "\\":
        return "\\\\"
    if char in "\n\r\t":
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}[char]
    # Cc: control characters (C0, DEL, C1: escape sequences). Cf: format characters (bidi overrides,
    # zero-width joiners) that make a line read differently from what it holds. Zl/Zp: line breaks.
    # Cs: a lone surrogate (a file name that is not UTF-8), which no terminal or file can take as it is.
    if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
    return char


def one_line(text, limit=300):
    """`text` as one line a terminal shows as it is: every control character written out (a newline as
    the two characters \\n, ESC as \\x1b), backslashes doubled, cut to `limit` characters."""
    text = str(text)
    out = "".join(_escaped(char) for char in text[:limit])
    return out + (" ..." if len(text) > limit else "")


def csv_cell(value):
    """A CSV cell a spreadsheet shows as text: a string that starts like a formula gets a leading
    apostrophe, as OWASP recommends (numbers and empty cells are left as they are)."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
