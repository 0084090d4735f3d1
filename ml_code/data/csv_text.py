"""CSV text exactly as pandas' ``to_csv`` writes it, from columns already turned into strings.

Why: every rerun writes the whole manifest and the three split indexes (10,000 rows for
HAM10000) though only a hundred rows are new, and ``DataFrame.to_csv`` spends most of its time
per cell in Python. Joining the cells directly gives the same bytes when no cell needs quoting,
which is the case for every column DermaOps writes from data it has validated (ids, hex digests,
diagnosis codes, numbers); a cell that does need quoting (a comma, quote or line break, say in a
free-text site) goes through the ``csv`` module, which is what pandas calls too.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

_QUOTED = (",", '"', "\r", "\n")
"""Characters that may make the csv writer quote a cell (QUOTE_MINIMAL, pandas' default: the
delimiter, the quote character, line breaks); text holding any of them goes through the csv
module, which decides. Tested with ``in`` per character rather than a regular expression: a
tenth of the time over 10,000 rows."""


def csv_text(header: Sequence[str], columns: Sequence[Sequence[str]]) -> str:
    """The CSV text of ``columns`` (each a sequence of ``str`` cells, all the same length) under
    ``header``, '\\n' line endings: the text ``pd.DataFrame(...).to_csv(index=False,
    lineterminator="\\n")`` writes for a frame of those strings (``tests/ml_code/test_csv_text.py``
    holds them equal). ValueError when the header and the columns differ in number or the
    columns in length."""
    if len(header) != len(columns):
        raise ValueError(f"{len(header)} header names but {len(columns)} columns")
    lengths = {len(column) for column in columns}
    if len(lengths) > 1:
        raise ValueError(f"columns differ in length: {sorted(lengths)}")
    cells = "\x1f".join(["\x1f".join(header), *("\x1f".join(column) for column in columns)])
    if len(header) > 1 and not any(special in cells for special in _QUOTED):
        lines = [",".join(header), *map(",".join, zip(*columns))]
        return "\n".join(lines) + "\n"
    # one column (the writer quotes a lone empty cell) or a cell to quote: the csv module decides
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(zip(*columns))
    return buf.getvalue()
