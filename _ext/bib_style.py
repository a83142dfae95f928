"""Author-year labels in the bibliography, to match the author-year citations in the text.

sphinxcontrib-bibtex formats citations with ``bibtex_reference_style: author_year`` but labels the
entries of a ``{bibliography}`` with the pybtex style's labels (``[ALTdJ+23]`` for "alpha"). This
registers a pybtex formatting style, ``authoryear``, whose labels read "Zhang & Sennrich 2019",
"Ba et al. 2016", and which sorts by author, then year.
"""

from __future__ import annotations

from collections import Counter

from pybtex.plugin import register_plugin
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle


def _surname(person) -> str:
    return " ".join(person.prelast_names + person.last_names) or " ".join(person.first_names)


class AuthorYearLabelStyle(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        labels = list(self._plain_labels(sorted_entries))
        total, seen = Counter(labels), Counter()
        for label in labels:  # "Touvron et al. 2023a", "... 2023b" when two works share a label
            if total[label] > 1:
                yield f"{label}{'abcdefghij'[seen[label]]}"
                seen[label] += 1
            else:
                yield label

    def _plain_labels(self, sorted_entries):
        for entry in sorted_entries:
            people = entry.persons.get("author") or entry.persons.get("editor") or []
            names = [_surname(p) for p in people]
            if not names:
                who = entry.fields.get("organization", entry.key)
            elif len(names) == 1:
                who = names[0]
            elif len(names) == 2:
                who = f"{names[0]} & {names[1]}"
            else:
                who = f"{names[0]} et al."
            yield f"{who} {entry.fields.get('year', 'n.d.')}"


class AuthorYearStyle(UnsrtStyle):
    default_label_style = "authoryear"
    default_sorting_style = "author_year_title"


def setup(app):
    register_plugin("pybtex.style.labels", "authoryear", AuthorYearLabelStyle)
    register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
